"""The `lmscope` entry point as a user runs it: mistakes the argument parser catches and the
commands' own checks are one `error:` line with exit status 2, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LMSCOPE = shutil.which("lmscope", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["generate", "--bogus"], "No such option: --bogus"),
        (["eval"], "Missing argument"),
        (["ab", "report", "--db"], "requires an argument"),
        (["serve", "--port", "99999"], "--port must be 0-65535"),
        (["generate", "smollm2-135m", "hi", "--seed", "-1"], "--seed must be 0 or more"),
        (["info", "no-such-model"], "unknown model 'no-such-model'"),
    ],
)
def test_user_mistakes_are_one_error_line(args: list[str], expected: str) -> None:
    assert LMSCOPE is not None
    result = subprocess.run([LMSCOPE, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]


def test_help_and_no_arguments() -> None:
    assert LMSCOPE is not None
    ok = subprocess.run([LMSCOPE, "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "eval" in ok.stdout and "tune" in ok.stdout and "doc" in ok.stdout
    bare = subprocess.run([LMSCOPE], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr


def test_eval_limit_must_be_positive(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert LMSCOPE is not None
    text = tmp_path / "t.txt"
    text.write_text("words\n")
    result = subprocess.run(
        [LMSCOPE, "eval", str(tiny_checkpoint), str(text), "--limit", "-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "--limit must be at least 1" in result.stderr
