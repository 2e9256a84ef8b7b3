"""schemathesis with all its checks against the server's own OpenAPI document: no input causes
a 5xx, every error is a documented OpenAI error object, invalid input is refused, schema-valid
input is accepted (except the context-window limit, see serve_fuzz_checks.py), and responses,
streams included, match the document."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import running_server

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def fuzz_server(tiny_checkpoint: Path) -> Iterator[str]:
    config = ServeSettings(
        models=[ModelSpec("tiny", str(tiny_checkpoint))], max_seq_len=96, max_batch=4
    )
    with running_server(config) as base:
        yield base


def run_schemathesis(base: str, mark: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    st = Path(sys.executable).parent / "st"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "serve_fuzz_checks",
        "LMSCOPE_FUZZ_MARK": str(mark),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        str(st), "run", f"{base}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "20", "--seed", "1", "--workers", "1", "--request-timeout", "60",
        "--no-color", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def test_openai_routes_pass_every_schemathesis_check(fuzz_server: str, tmp_path: Path) -> None:
    mark = tmp_path / "checked"
    result = run_schemathesis(
        fuzz_server, mark, "--include-path-regex", "^/(v1/(completions|chat|models)|health|metrics)"
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert len(mark.read_text()) > 100  # the acceptance check ran on the responses


def test_explain_routes_pass_every_schemathesis_check(fuzz_server: str, tmp_path: Path) -> None:
    result = run_schemathesis(
        fuzz_server, tmp_path / "checked", "--include-path-regex", "^/v1/explain"
    )
    assert result.returncode == 0, result.stdout[-6000:]


def test_feedback_routes_pass_every_schemathesis_check(fuzz_server: str, tmp_path: Path) -> None:
    result = run_schemathesis(
        fuzz_server, tmp_path / "checked", "--include-path-regex", "^/v1/(feedback|experiments)"
    )
    assert result.returncode == 0, result.stdout[-6000:]
