"""The bad-input catalogue against a real server: every case in `catalogue_cases` (plus raw-socket
transport abuse and concurrency abuse here) must get its acceptable answer, errors in the OpenAI
shape with the right `param`, and no user mistake may leave a traceback in the server's log.

`pytest -s` prints "catalogue: N of M acceptable"; `SUMMARY` holds the same counts.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalogue_cases import ANY, Case, chat, completions
from catalogue_cases_routes import http_cases
from lmscope.serve.app import create_app
from lmscope.serve.errors import STATUS_TYPES
from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import running_app

KEY = "catalogue-key"
H_PATH = "/v1/chat/completions"
AUTH = {"authorization": f"Bearer {KEY}"}
BODY_LIMIT = 256 * 1024
CASES = http_cases()
RESULTS: dict[str, str | None] = {}  # case name -> None when acceptable, else what was wrong
SUMMARY = {"acceptable": 0, "total": 0}


class Tracebacks(logging.Handler):
    """Collects log records that carry a traceback or an error (none may follow a user mistake)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in text:
            self.bad.append(f"{record.name}: {text[:200]}")


LOGGERS = ("lmscope", "uvicorn", "uvicorn.error")


@dataclass
class Served:
    base: str
    log: Tracebacks


def serve(checkpoint: Path, feedback_db: Path, **settings: Any) -> Iterator[Served]:
    config = ServeSettings(
        feedback_db=str(feedback_db),  # every answer is recorded and can be rated
        models=[ModelSpec("tiny", str(checkpoint))],
        api_key=KEY,
        max_seq_len=128,
        max_body_bytes=BODY_LIMIT,
        max_batch=4,
        **settings,
    )
    app = create_app(config)
    handler = Tracebacks()
    with running_app(app) as base:
        for name in LOGGERS:
            logging.getLogger(name).addHandler(handler)
        try:
            yield Served(base, handler)
        finally:
            for name in LOGGERS:
                logging.getLogger(name).removeHandler(handler)


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tiny_checkpoint, tmp_path_factory.mktemp("ab") / "feedback.sqlite3")


@pytest.fixture(scope="module")
def no_queue(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tiny_checkpoint, tmp_path_factory.mktemp("ab") / "fb.sqlite3", max_queue=0)


# ---- judging an answer -------------------------------------------------------------------------
def judge(case: Case, status: int | None, headers: dict[str, str], body: bytes) -> str | None:
    """None when the answer is acceptable for `case`, else what is wrong with it."""
    wanted = case.status if isinstance(case.status, tuple) else (case.status,)
    if status not in wanted:
        return f"status {status}, wanted {wanted}: {body[:300]!r}"
    if b"Traceback" in body or b'File "' in body:
        return "a traceback in the body"
    if status is None or status < 400:
        return None
    if "application/json" not in headers.get("content-type", ""):
        return f"error content type {headers.get('content-type')!r}"
    try:
        payload = json.loads(body)
    except ValueError:
        return f"error body is not JSON: {body[:200]!r}"
    if not isinstance(payload, dict) or set(payload) != {"error"}:
        return f"not an OpenAI error object: {payload}"
    error = payload["error"]
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"error object fields: {error}"
    message = error["message"]
    if not isinstance(message, str) or not message or "\n" in message:
        return f"message is not one line: {message!r}"
    if error["type"] != STATUS_TYPES.get(status, "server_error"):
        return f"type {error['type']!r} for status {status}"
    params = case.param if isinstance(case.param, tuple) else (case.param,)
    if case.param is not ANY and error["param"] not in params:
        return f"param {error['param']!r}, wanted {case.param!r} ({message})"
    if case.code is not ANY and error["code"] != case.code:
        return f"code {error['code']!r}, wanted {case.code!r} ({message})"
    if case.says and case.says.lower() not in message.lower():
        return f"message {message!r} does not say {case.says!r}"
    return None


def record(name: str, problem: str | None) -> None:
    RESULTS[name] = problem
    assert problem is None, f"{name}: {problem}"


def encoded(case: Case) -> bytes:
    if case.raw is not None:
        return case.raw
    return json.dumps(case.body).encode() if case.body is not None else b""


def send(base: str, case: Case) -> httpx.Response:
    headers = {**(AUTH if case.key else {}), "content-type": "application/json", **case.headers}
    headers = {k: v for k, v in headers.items() if v}  # an empty value: leave the header out
    content = encoded(case) if case.method not in ("GET", "HEAD") else None
    return httpx.request(
        case.method, base + case.path, content=content, headers=headers, timeout=60
    )


def check_logs(served: Served, before: int) -> str | None:
    new = served.log.bad[before:]
    return f"the server logged: {new}" if new else None


# ---- the catalogue -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_http_case(server: Served, case: Case) -> None:
    before = len(server.log.bad)
    r = send(server.base, case)
    problem = judge(case, r.status_code, dict(r.headers), r.content)
    record(case.name, problem or check_logs(server, before))


# Raw bytes on a socket: what an HTTP client library would never send.
def head(method: str, path: str, *, body: bytes = b"", extra: str = "", version: str = "1.1"):
    lines = f"{method} {path} HTTP/{version}\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n"
    if body:
        lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (lines + extra + "Connection: close\r\n\r\n").encode() + body


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


BODY = json.dumps(completions(max_tokens=1)).encode()
CHUNKED = (
    f"POST /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n"
    "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
).encode()
BIG_CHUNK = b'{"prompt": "' + b"x" * 100_000 + b'"}'
RAW_CASES: list[tuple[Case, list[bytes]]] = [
    (Case("raw garbage", "", status=400), [b"\x00\x01\x02 GARBAGE \xff\r\n\r\n"]),
    (Case("raw HTTP/9.9", "", status=(200, 400, 505)), [head("GET", "/health", version="9.9")]),
    (Case("raw HTTP/1.0 GET", "", status=200), [b"GET /health HTTP/1.0\r\n\r\n"]),
    (
        Case("raw HTTP/1.0 POST", "", status=200),
        [head("POST", "/v1/completions", body=BODY, version="1.0")],
    ),
    (Case("raw absurd method", "", status=405), [head("BREW", "/v1/completions", body=BODY)]),
    (Case("raw 300-char method", "", status=(400, 405)), [head("X" * 300, "/health")]),
    (
        Case("raw 70 KB request line", "", status=(400, 404, 414, 431)),
        [head("GET", "/" + "a" * 70_000)],
    ),
    (
        Case("raw 20 KB header", "", status=431),
        [head("GET", "/health", extra=f"X-Pad: {'a' * 20_000}\r\n")],
    ),
    (
        Case("raw 300 headers", "", status=431),
        [head("GET", "/health", extra="".join(f"X-H{i}: {'b' * 60}\r\n" for i in range(300)))],
    ),
    (
        Case("raw 17 KB header in pieces", "", status=431),
        split(head("GET", "/health", extra=f"X-Pad: {'a' * 17_000}\r\n"), 1000),
    ),
    (
        Case("raw chunked over the limit", "", status=413),
        [CHUNKED, *[b"%x\r\n%s\r\n" % (len(BIG_CHUNK), BIG_CHUNK)] * 3, b"0\r\n\r\n"],
    ),
    (Case("raw bad chunk size", "", status=(400, None)), [CHUNKED, b"zz\r\nabc\r\n0\r\n\r\n"]),
    (
        Case("raw negative content-length", "", status=400),
        [head("POST", "/v1/completions", extra="Content-Length: -5\r\n")],
    ),
    (
        Case("raw non-numeric content-length", "", status=400),
        [head("POST", "/v1/completions", extra="Content-Length: abc\r\n")],
    ),
    (
        Case("raw length and chunked", "", status=(400, 200)),
        [
            CHUNKED.replace(b"Connection", b"Content-Length: 3\r\nConnection"),
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
        ],
    ),
    (
        Case("raw expect-continue over the limit", "", status=413),
        [
            head(
                "POST",
                "/v1/completions",
                extra=f"Expect: 100-continue\r\nContent-Length: "
                f"{BODY_LIMIT * 10}\r\nContent-Type: application/json\r\n",
            )
        ],
    ),
    (
        Case("raw NUL in a header", "", status=400),
        [head("GET", "/health", extra="X-A: a\x00b\r\n")],
    ),
    (
        Case("raw header without colon", "", status=400),
        [head("GET", "/health", extra="Nonsense\r\n")],
    ),
    (Case("raw HTTP/1.1 without Host", "", status=400), [b"GET /health HTTP/1.1\r\n\r\n"]),
    (
        Case("raw bare LF line ends", "", status=(200, 400)),
        [b"GET /health HTTP/1.1\nHost: t\nConnection: close\n\n"],
    ),
    (
        Case("raw pipelined", "", status=200),
        [head("GET", "/health").replace(b"Connection: close\r\n", b"") + head("GET", "/health")],
    ),
]


def exchange(
    base: str, pieces: list[bytes], wait: float = 10.0
) -> tuple[int | None, dict[str, str], bytes]:
    """Send `pieces` on a fresh connection; the first response's status, headers and body
    (status None when the server closed without answering)."""
    host, port = base.removeprefix("http://").split(":")
    data = b""
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.001 if len(pieces) > 50 else 0.01)
        except OSError:
            pass  # the server may answer and close before the rest is sent
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                more = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not more:
                break
            data += more
            if _complete(data):
                break
    if not data:
        return None, {}, b""
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    status = int(lines[0].split()[1])
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


def _complete(data: bytes) -> bool:
    top, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in top.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@pytest.mark.parametrize(("case", "pieces"), RAW_CASES, ids=[c.name for c, _ in RAW_CASES])
def test_raw_case(server: Served, case: Case, pieces: list[bytes]) -> None:
    before = len(server.log.bad)
    status, headers, body = exchange(server.base, pieces)
    problem = judge(case, status, headers, body)
    if problem is None and httpx.get(server.base + "/health", timeout=10).status_code != 200:
        problem = "the server stopped answering"
    record(case.name, problem or check_logs(server, before))


# ---- held connections and clients that leave -----------------------------------------------------
def still_serving(base: str) -> str | None:
    r = httpx.post(
        base + "/v1/completions", json=completions(max_tokens=1), headers=AUTH, timeout=10
    )
    return None if r.status_code == 200 else f"the next request got {r.status_code}"


def slowloris(base: str) -> str | None:
    """32 connections that send half a request line and headers and then wait."""
    host, port = base.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(32):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            socks.append(sock)
        return still_serving(base)
    finally:
        for sock in socks:
            sock.close()


def short_body(base: str) -> str | None:
    """A body shorter than its declared length, then the client leaves."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            head(
                "POST",
                "/v1/completions",
                extra="Content-Type: application/json\r\nContent-Length: 500\r\n",
            )
            + b'{"prompt": '
        )
        time.sleep(0.3)
    return still_serving(base)


def leave_mid_stream(path: str, body: dict[str, Any]) -> Callable[[str], str | None]:
    def run(base: str) -> str | None:
        with httpx.stream("POST", base + path, json=body, headers=AUTH, timeout=30) as response:
            if response.status_code != 200:
                return f"status {response.status_code}"
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break  # one chunk, then hang up
        return still_serving(base)

    return run


def leave_before_answer(base: str) -> str | None:
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps(completions(max_tokens=100, ignore_eos=True)).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head("POST", "/v1/completions", body=body))
    return still_serving(base)


def concurrent_mix(base: str) -> str | None:
    """24 requests at once, good and bad mixed: each still gets its own acceptable answer."""
    picks = [c for c in CASES if c.path in ("/v1/completions", "/v1/chat/completions")][:24]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: (c, send(base, c)), picks))
    for case, r in answers:
        problem = judge(case, r.status_code, dict(r.headers), r.content)
        if problem:
            return f"{case.name}: {problem}"
    return None


def rate_a_real_answer(base: str) -> str | None:
    """The acceptable path next to the refusals: an answer's id, rated 4.0, is stored."""
    answer = httpx.post(base + "/v1/completions", json=completions(), headers=AUTH, timeout=10)
    body = {"response_id": answer.json()["id"], "rating": 4.0}
    r = httpx.post(base + "/v1/feedback", json=body, headers=AUTH, timeout=10)
    if r.status_code != 200 or r.json()["satisfaction"] != 0.75:
        return f"feedback got {r.status_code}: {r.text[:200]}"
    return None


LONG = {"max_tokens": 90, "ignore_eos": True, "stream": True}
HELD: dict[str, Callable[[str], str | None]] = {
    "slowloris partial requests": slowloris,
    "body shorter than declared": short_body,
    "completion stream left": leave_mid_stream("/v1/completions", completions(**LONG)),
    "chat stream n=2 left": leave_mid_stream("/v1/chat/completions", chat(n=2, **LONG)),
    "client left before the answer": leave_before_answer,
    "24 concurrent mixed requests": concurrent_mix,
    "feedback on a real answer": rate_a_real_answer,
}


@pytest.mark.parametrize("name", list(HELD))
def test_held_and_abandoned(server: Served, name: str) -> None:
    before = len(server.log.bad)
    problem = HELD[name](server.base)
    record(name, problem or check_logs(server, before))


QUEUE_FULL = [
    ("completions", "/v1/completions", completions()),
    ("completions stream", "/v1/completions", completions(stream=True)),
    ("completions stream echo", "/v1/completions", completions(stream=True, echo=True)),
    ("completions list", "/v1/completions", completions(prompt=["a", "b", "c"])),
    ("completions ids out of vocab", "/v1/completions", completions(prompt=[10**9])),
    ("chat", "/v1/chat/completions", chat()),
    ("chat stream", "/v1/chat/completions", chat(stream=True)),
    ("chat stream n=3", "/v1/chat/completions", chat(stream=True, n=3)),
]


@pytest.mark.parametrize(("name", "path", "body"), QUEUE_FULL, ids=[q[0] for q in QUEUE_FULL])
def test_full_queue_is_a_429(no_queue: Served, name: str, path: str, body: dict[str, Any]) -> None:
    before = len(no_queue.log.bad)
    case = Case(f"queue full: {name}", path, body, status=429, param=None)
    r = send(no_queue.base, case)
    problem = judge(case, r.status_code, dict(r.headers), r.content)
    if problem is None and not r.headers.get("retry-after", "").isdigit():
        problem = "no Retry-After"
    record(case.name, problem or check_logs(no_queue, before))


def test_hostile_paths_add_no_metric_labels(server: Served) -> None:
    """After every case above (unknown, traversal and 8 KB paths, absurd methods), the request
    counter's route labels are still only the app's route templates and `other`."""
    text = httpx.get(server.base + "/metrics", timeout=10).text
    labels = set(re.findall(r'lmscope:http_requests_total\{route="([^"]*)"', text))
    spec = httpx.get(server.base + "/openapi.json", timeout=10).json()
    pages = {"/", "/health", "/metrics", "/docs", "/openapi.json", "/static", "/docs-assets"}
    known = {"other", *pages, *spec["paths"]}
    record("metric labels bounded", None if labels <= known else f"{labels - known}")


def test_a_schema_without_a_finite_instance(server: Served) -> None:
    """A required self-$ref: no finite JSON satisfies it, so the grammar ends at a dead end; the
    answer is a 400 naming response_format, never an invalid JSON answer with 'stop'."""
    schema = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
    body = chat(
        max_tokens=8, response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                                           "schema": schema}}
    )  # fmt: skip
    r = send(server.base, Case("schema without finite instance", H_PATH, body))
    if r.status_code == 400:
        assert r.json()["error"]["param"] == "response_format"
    else:  # a model that ran out of tokens first: cut by length, never a 'stop'
        assert r.status_code == 200
        assert r.json()["choices"][0]["finish_reason"] == "length"


def test_catalogue_summary() -> None:
    """The figure to quote; every case sent so far was acceptable."""
    total = len(CASES) + len(RAW_CASES) + len(HELD) + len(QUEUE_FULL) + 1
    assert total >= 152
    SUMMARY["total"] = len(RESULTS)
    SUMMARY["acceptable"] = sum(problem is None for problem in RESULTS.values())
    print(f"\ncatalogue: {SUMMARY['acceptable']} of {SUMMARY['total']} acceptable")
    for name, problem in RESULTS.items():
        if problem is not None:
            print(f"  {name}: {problem}")
    assert SUMMARY["acceptable"] == SUMMARY["total"]


@pytest.mark.slow
def test_catalogue_on_smollm2(tmp_path: Path) -> None:
    """The HTTP cases once more against the real default model (its tokenizer, chat template and
    shape), with the same acceptable answers."""
    config = ServeSettings(
        api_key=KEY, max_seq_len=128, max_body_bytes=BODY_LIMIT, feedback_db=str(tmp_path / "fb")
    )
    handler = Tracebacks()
    with running_app(create_app(config)) as base:
        for name in LOGGERS:
            logging.getLogger(name).addHandler(handler)
        try:
            problems = {}
            for case in CASES:
                r = send(base, case)
                problem = judge(case, r.status_code, dict(r.headers), r.content)
                if problem:
                    problems[case.name] = problem
        finally:
            for name in LOGGERS:
                logging.getLogger(name).removeHandler(handler)
    print(f"\ncatalogue on smollm2-135m: {len(CASES) - len(problems)} of {len(CASES)} acceptable")
    assert not problems and not handler.bad, (problems, handler.bad)
