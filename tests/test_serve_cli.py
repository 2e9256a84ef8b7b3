"""`lmscope serve` mistakes and the CLI's thread settings: one `error:` line and exit code 2 for
user mistakes, tracebacks for bugs, a passive OpenMP wait policy unless the user chose one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from lmscope.commands.common import UsageError, user_errors

LMSCOPE = [str(Path(sys.executable).parent / "lmscope")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LMSCOPE, *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def test_port_in_use_is_one_error_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: ") and str(port) in lines[0]
    assert "Traceback" not in result.stderr


def test_model_that_fails_to_load_exits_2(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli(
        "serve", "-m", str(tmp_path / "missing"), "--port", str(port), "--threads", "1"
    )
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not load the model")
    assert "with 1 CPU thread " in result.stdout  # the start-up line reports the threads


def test_threads_must_be_positive() -> None:
    result = run_cli("serve", "--threads", "0")
    assert result.returncode == 2 and "error: --threads must be at least 1" in result.stderr


def test_duplicate_model_ids_are_one_error_line(tiny_checkpoint: Path) -> None:
    path = str(tiny_checkpoint)
    result = run_cli("serve", "-m", f"a={path}", "-m", f"a={path}")
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.startswith("error: model ids must be unique")
    assert "Traceback" not in result.stderr


def test_omp_wait_policy_is_passive_unless_the_user_set_it() -> None:
    code = (
        "import os, sys; from lmscope import cli; cli.prepare_environment(); "
        "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    env = {k: v for k, v in ENV.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["PASSIVE", "False"]  # set before torch is imported
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["ACTIVE", "False"]


def test_only_typed_user_errors_become_error_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from lmscope.zoo.errors import ZooError

    @user_errors
    def raises(err: Exception) -> None:
        raise err

    for err in (UsageError("bad option"), ZooError("bad checkpoint"), FileNotFoundError("x")):
        with pytest.raises(typer.Exit) as exit_info:
            raises(err)
        assert exit_info.value.exit_code == 2
        assert capsys.readouterr().err.startswith("error: ")
    for bug in (KeyError("missing"), ValueError("a bug"), TypeError("also a bug")):
        with pytest.raises(type(bug)):
            raises(bug)
