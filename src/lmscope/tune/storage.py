"""Where a study lives: SQLite in the study directory by default, or any database URL Optuna takes
(`postgresql://user@host/db` for workers on several machines).

SQLite with several local workers: the database is switched to WAL (readers do not block the
writer) and every connection waits up to a minute for a lock instead of failing with "database is
locked". Every trial sends heartbeats; a trial whose worker stopped sending them (killed, machine
lost) is marked failed by the next worker that looks, and put back in the queue with the same
parameters (Optuna's RetryFailedTrialCallback).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from lmscope.tune.errors import TuneError

optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Heartbeats and stale-trial retries are "experimental" in Optuna's terms; lmscope relies
    on them on purpose, so the warnings would only be noise in every worker's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


LOCK_WAIT_S = 60
DB_FILE = "study.db"


def default_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / DB_FILE).resolve()}"


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


def _prepare_sqlite(url: str) -> None:
    """Switch an SQLite file to WAL (a setting kept in the file) before the first connection."""
    path = Path(url.removeprefix("sqlite:///"))
    if url.startswith("sqlite:///") and path.name and str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=LOCK_WAIT_S) as db:
            db.execute("PRAGMA journal_mode=WAL")


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": LOCK_WAIT_S}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


def retry_callback(max_retry: int | None) -> Callable[[optuna.Study, Any], None]:
    """Optuna's callback that queues a failed trial again with the same parameters (renamed in
    Optuna 4.9: RetryFailedTrialCallback -> RetryHeartbeatStaleTrialCallback)."""
    new = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with quiet():
        if new is not None:
            return new(max_retry=max_retry)  # type: ignore[no-any-return]
        return optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)


def _retry_kwargs(max_retry: int) -> dict[str, Any]:
    callback = retry_callback(max_retry)
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback": callback}
    return {"failed_trial_callback": callback}


def open_storage(url: str, heartbeat_s: int, grace_s: int, max_retry: int) -> RDBStorage:
    """The storage behind `url`; TuneError (and nothing created) when it cannot be reached."""
    if url.startswith("sqlite:///"):
        try:
            _prepare_sqlite(url)
        except (OSError, sqlite3.Error) as err:
            raise TuneError(f"cannot open the study database {url}: {err}") from None
    try:
        with quiet():
            storage = RDBStorage(
                url,
                engine_kwargs=_engine_kwargs(url),
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                **_retry_kwargs(max_retry),
            )
    except ImportError as err:
        driver = "pip install psycopg2-binary" if url.startswith("postgres") else str(err)
        raise TuneError(f"storage {safe_url(url)} needs a database driver: {driver}") from None
    except Exception as err:  # sqlalchemy's errors: bad URL, refused connection, bad password
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TuneError(
            f"cannot reach storage {safe_url(url)}: {first}; check the URL and that the "
            "database server is running"
        ) from None
    if url.startswith("sqlite"):
        _sync_normal(storage)
    return storage


def _sync_normal(storage: RDBStorage) -> None:
    """WAL with synchronous=NORMAL: a commit no longer waits for the disk (a power cut may lose
    the last commits, never corrupt the file); trials write a handful of small commits each."""
    from sqlalchemy import event

    def on_connect(connection: Any, record: Any) -> None:
        connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections made before the listener reopen with it


def is_remote(url: str) -> bool:
    return not url.startswith("sqlite")


__all__ = ["DB_FILE", "default_url", "is_remote", "open_storage", "retry_callback", "safe_url"]
