"""Fuzz the HTTP API from its own OpenAPI schema: no input may cause a 5xx, and every 4xx is
an OpenAI error object."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import running_server


@pytest.fixture(scope="module")
def fuzz_server(tiny_checkpoint: Path) -> Iterator[str]:
    config = ServeSettings(
        models=[ModelSpec("tiny", str(tiny_checkpoint))], max_seq_len=96, max_batch=4
    )
    with running_server(config) as base:
        yield base


def test_api_never_fails_on_generated_input(fuzz_server: str) -> None:
    schema = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/completions" for op in operations)
    checked = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        def call(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal checked
            response = case.call(base_url=fuzz_server, timeout=60)
            checked += 1
            assert response.status_code < 500, (case.path, case.body, response.text[:300])
            if response.status_code >= 400:
                assert "message" in response.json()["error"], response.text[:300]

        call()
    assert checked >= len(operations)
