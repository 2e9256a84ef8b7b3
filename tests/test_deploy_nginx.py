"""Two lmscope replicas behind Debian's nginx (the shipped deploy/nginx/nginx.conf with its own
pid/log/temp paths and loopback upstreams): concurrent streaming completions while one replica
is killed with SIGKILL. Every request that had not started streaming must succeed through the
other replica, and the survivor's /metrics must count exactly what it answered. About 20 s on
two cores (not marked slow); nginx is installed with apt-get when missing (root only)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from serve_support import free_port
from test_deploy_manifests import DEPLOY, local_nginx_conf, nginx_binary

LMSCOPE = str(Path(sys.executable).parent / "lmscope")
REQUESTS = 24
CONCURRENCY = 12
HEALTH_TIMEOUT = 180.0


def ensure_nginx() -> str:
    """Debian's nginx, installed with apt-get when missing (root only); else skip."""
    found = nginx_binary()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "nginx"], env=env, capture_output=True)
        found = nginx_binary()
    if found is None:
        pytest.skip("nginx is not installed and could not be installed (apt-get install nginx)")
    return found


def wait_healthy(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before becoming healthy")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become healthy at {url} within {HEALTH_TIMEOUT:g} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextmanager
def started(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        stop(proc)


@dataclass
class Outcome:
    started: bool = False  # a token arrived before anything went wrong
    done: bool = False  # the stream ended with [DONE] after a finish_reason
    upstreams: list[str] = field(default_factory=list)
    error: str | None = None


def stream_one(base: str, i: int, first_token: threading.Event) -> Outcome:
    outcome = Outcome()
    body = {
        "model": "tiny",
        "prompt": f"Request {i}: the quick brown fox",
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }
    finished = False
    try:
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as response:
            outcome.upstreams = [u.strip() for u in response.headers["x-upstream"].split(",")]
            if response.status_code != 200:
                outcome.error = f"status {response.status_code}: {response.read()[:200]!r}"
                return outcome
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    outcome.done = finished
                elif line.startswith("data: "):
                    outcome.started = True
                    first_token.set()
                    finished = finished or '"finish_reason":"' in line.replace(" ", "")
    except httpx.HTTPError as err:
        outcome.error = f"{type(err).__name__}: {err}"
    return outcome


def finished_requests(metrics_text: str) -> int:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("lmscope:request_success_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_a_replica_killed_mid_load_loses_only_requests_it_was_streaming(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    nginx = ensure_nginx()
    ports = [free_port(), free_port()]
    lb_port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    conf = local_nginx_conf((DEPLOY / "nginx" / "nginx.conf").read_text(), tmp_path, lb_port, ports)
    conf_path = tmp_path / "nginx.conf"
    conf_path.write_text(conf)
    serve = [LMSCOPE, "serve", "--model", f"tiny={tiny_checkpoint}", "--host", "127.0.0.1"]
    serve += ["--max-batch", "2", "--threads", "1"]
    lb_cmd = [nginx, "-p", str(tmp_path), "-c", str(conf_path), "-g", "daemon off;"]
    with (
        started([*serve, "--port", str(ports[0])], tmp_path / "replica0.log", env) as victim,
        started([*serve, "--port", str(ports[1])], tmp_path / "replica1.log", env) as survivor,
        started(lb_cmd, tmp_path / "nginx.log", env) as lb,
    ):
        for port, proc in zip(ports, (victim, survivor), strict=True):
            wait_healthy(f"http://127.0.0.1:{port}/health", proc, f"replica on port {port}")
        base = f"http://127.0.0.1:{lb_port}"
        wait_healthy(base + "/lb-health", lb, "nginx")
        assert httpx.get(base + "/health").status_code == 200  # proxied to a replica

        first_token = threading.Event()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = [pool.submit(stream_one, base, i, first_token) for i in range(REQUESTS)]
            assert first_token.wait(60), "no stream started"
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            outcomes = [f.result() for f in futures]

        victim_addr, survivor_addr = (f"127.0.0.1:{p}" for p in ports)
        lost = [o for o in outcomes if not o.done]
        for o in lost:  # only streams the killed replica had started may be cut
            assert o.started and o.upstreams[-1] == victim_addr, o
        assert len(lost) <= 2  # the victim streams at most --max-batch requests at a time
        via_survivor = [o for o in outcomes if o.done and o.upstreams[-1] == survivor_addr]
        retried = [o for o in via_survivor if victim_addr in o.upstreams]
        assert retried, "no request was re-sent from the killed replica to the survivor"
        assert all(o.upstreams[-1] in (victim_addr, survivor_addr) for o in outcomes)
        # The survivor counts exactly the requests it answered; together with what the victim
        # answered or was streaming when it died, that is every request sent.
        survivor_metrics = httpx.get(f"http://127.0.0.1:{ports[1]}/metrics").text
        assert finished_requests(survivor_metrics) == len(via_survivor)
        via_victim = [o for o in outcomes if o.done and o.upstreams[-1] == victim_addr]
        assert len(via_survivor) + len(via_victim) + len(lost) == REQUESTS
        access = (tmp_path / "access_log").read_text()
        assert len(re.findall(r'"POST /v1/completions', access)) == REQUESTS
