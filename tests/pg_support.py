"""A private PostgreSQL server for tests: Debian's `postgresql` package (installed with apt-get
when missing and we are root), a cluster made by initdb in a temporary directory, listening on a
free loopback port, stopped and deleted at the end.

initdb refuses to run as root, so as root the server runs as the `postgres` user (made by the
package) through runuser.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """Why no server could be started (the tests skip with this reason)."""


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


def _install() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            raise PostgresUnavailable(f"apt-get install postgresql failed: {tail}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root without runuser: cannot start initdb")
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL of a fresh PostgreSQL database; raise PostgresUnavailable if impossible."""
    bins = _bin_dir()
    if bins is None:
        _install()
        bins = _bin_dir()
        if bins is None:
            raise PostgresUnavailable("apt-get installed postgresql but pg_ctl is not found")
    root = Path(tempfile.mkdtemp(prefix="lmscope-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    run = lambda cmd: subprocess.run(  # noqa: E731
        _as_server_user(cmd), capture_output=True, text=True, timeout=120
    )
    try:
        made = run(
            [str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]
        )
        if made.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {made.stderr.strip()[-300:]}")
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        )
        started = run(
            [str(bins / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
             "start"]
        )  # fmt: skip
        if started.returncode != 0:
            log = (root / "log").read_text()[-300:] if (root / "log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {started.stderr.strip()} {log}")
        deadline = time.monotonic() + 30
        while run([str(bins / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]).returncode:
            if time.monotonic() > deadline:
                raise PostgresUnavailable("the server did not accept connections in 30 s")
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            run([str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)
