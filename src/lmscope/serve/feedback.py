"""The experiment store: which version answered each response, and what users said about it.

SQLite by default (WAL journal, one connection per thread, every write committed before it is
acknowledged, so a server killed with SIGKILL loses no acknowledged feedback); PostgreSQL with a
`postgresql://` URL when several replicas share one store (needs `psycopg`). Two tables:
`responses` (one row per answered request: id, alias, version, user hash, latency, tokens,
error, shadow) and `feedback` (one row per rating of a response), plus `experiments` (the
configured split of each alias, for the sample-ratio check).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS experiments (
        alias TEXT NOT NULL, weights TEXT NOT NULL, started REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY, created REAL NOT NULL, alias TEXT, model TEXT NOT NULL,
        user_hash TEXT, latency_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER,
        error TEXT, shadow_of TEXT)""",
    """CREATE TABLE IF NOT EXISTS feedback (
        id TEXT PRIMARY KEY, response_id TEXT NOT NULL, created REAL NOT NULL,
        kind TEXT NOT NULL, value REAL NOT NULL, satisfaction REAL NOT NULL, comment TEXT)""",
)
RESPONSE_FIELDS = (
    "id", "created", "alias", "model", "user_hash", "latency_s", "prompt_tokens",
    "completion_tokens", "error", "shadow_of",
)  # fmt: skip
FEEDBACK_FIELDS = ("id", "response_id", "created", "kind", "value", "satisfaction", "comment")


class FeedbackStoreError(ValueError):
    """The store cannot be opened (bad URL, unreachable database, missing driver)."""


class UnknownResponseError(LookupError):
    """Feedback names a response id this store never recorded."""


@dataclass(frozen=True)
class ResponseRecord:
    id: str
    alias: str | None
    model: str
    user_hash: str | None = None
    latency_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    shadow_of: str | None = None  # the response id a shadow answer accompanied


class FeedbackStore(Protocol):
    def start_experiment(self, alias: str, weights: dict[str, float]) -> None: ...
    def record_response(self, record: ResponseRecord) -> None: ...
    def complete_response(
        self, response_id: str, latency_s: float, prompt_tokens: int, completion_tokens: int,
        error: str | None,
    ) -> None: ...  # fmt: skip
    def add_feedback(
        self, feedback_id: str, response_id: str, kind: str, value: float, satisfaction: float,
        comment: str | None,
    ) -> None: ...  # fmt: skip
    def rows(self, table: str) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class _SQLStore:
    """The SQL shared by both databases; `placeholder` is the driver's parameter mark."""

    placeholder = "?"

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.placeholder)

    def start_experiment(self, alias: str, weights: dict[str, float]) -> None:
        self._execute(
            self._sql("INSERT INTO experiments (alias, weights, started) VALUES (?, ?, ?)"),
            (alias, json.dumps(weights, sort_keys=True), time.time()),
        )

    def record_response(self, record: ResponseRecord) -> None:
        values = (
            record.id, time.time(), record.alias, record.model, record.user_hash,
            record.latency_s, record.prompt_tokens, record.completion_tokens, record.error,
            record.shadow_of,
        )  # fmt: skip
        marks = ", ".join("?" * len(RESPONSE_FIELDS))
        self._execute(
            self._sql(f"INSERT INTO responses ({', '.join(RESPONSE_FIELDS)}) VALUES ({marks})"),
            values,
        )

    def complete_response(
        self,
        response_id: str,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        error: str | None,
    ) -> None:
        """Fill in how a recorded response went, once it has (its row exists from the start,
        so feedback that arrives before this is still accepted)."""
        self._execute(
            self._sql(
                "UPDATE responses SET latency_s = ?, prompt_tokens = ?, completion_tokens = ?, "
                "error = ? WHERE id = ?"
            ),
            (latency_s, prompt_tokens, completion_tokens, error, response_id),
        )

    def add_feedback(
        self,
        feedback_id: str,
        response_id: str,
        kind: str,
        value: float,
        satisfaction: float,
        comment: str | None,
    ) -> None:
        known = self._execute(self._sql("SELECT 1 FROM responses WHERE id = ?"), (response_id,))
        if not known:
            raise UnknownResponseError(response_id)
        marks = ", ".join("?" * len(FEEDBACK_FIELDS))
        self._execute(
            self._sql(f"INSERT INTO feedback ({', '.join(FEEDBACK_FIELDS)}) VALUES ({marks})"),
            (feedback_id, response_id, time.time(), kind, value, satisfaction, comment),
        )

    def rows(self, table: str) -> list[dict[str, Any]]:
        fields = {
            "responses": RESPONSE_FIELDS,
            "feedback": FEEDBACK_FIELDS,
            "experiments": ("alias", "weights", "started"),
        }[table]
        order = "started" if table == "experiments" else "created"
        result = self._execute(f"SELECT {', '.join(fields)} FROM {table} ORDER BY {order}")
        return [dict(zip(fields, row, strict=True)) for row in result]


class SQLiteStore(_SQLStore):
    """One SQLite file in WAL mode; a connection per thread (sqlite3 connections are not shared
    between threads), each statement committed before the call returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._connect()  # fail now, not on the first request

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")  # durable across process kills
                for statement in SCHEMA:
                    connection.execute(statement)
            except sqlite3.Error as err:
                raise FeedbackStoreError(
                    f"cannot open the feedback store {self.path}: {err}"
                ) from None
            self._local.connection = connection
        return connection

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self._connect().execute(sql, params)
        return list(cursor.fetchall())

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class PostgresStore(_SQLStore):
    """A PostgreSQL database shared by several replicas (autocommit: acknowledged = stored)."""

    placeholder = "%s"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise FeedbackStoreError(
                "a postgresql:// feedback store needs psycopg: pip install 'psycopg[binary]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self._lock = threading.Lock()
        try:
            self._connection = psycopg.connect(url, autocommit=True, connect_timeout=10)
            for statement in SCHEMA:
                self._connection.execute(statement)
        except psycopg.Error as err:
            raise FeedbackStoreError(
                f"cannot open the feedback store {_redact(url)}: {err}"
            ) from None

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cursor = self._connection.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def close(self) -> None:
        self._connection.close()


def _redact(url: str) -> str:
    """A database URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def default_store_url() -> str:
    """Where `lmscope serve --route` records its experiments unless --feedback-db says where."""
    from lmscope.zoo.default import cache_root

    return str(cache_root() / "experiments.sqlite3")


def open_store(url: str, *, must_exist: bool = False) -> FeedbackStore:
    """`sqlite:///path/to/file.db` (or a plain path) or `postgresql://user:pw@host:port/db`.
    `must_exist`: a reader's SQLite file must be there already (a mistyped path is an error, not
    a new empty store left behind)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if "://" in url and not url.startswith("sqlite:///"):
        raise FeedbackStoreError(
            f"unsupported feedback store URL {_redact(url)!r}: use sqlite:///PATH or postgresql://..."
        )
    path = Path(url.removeprefix("sqlite:///"))
    if must_exist and not path.is_file():
        raise FeedbackStoreError(
            f"no feedback store at {path}: give the --feedback-db that `lmscope serve` used "
            f"(sqlite:///relative/path, sqlite:////absolute/path or a plain path)"
        )
    return SQLiteStore(path)
