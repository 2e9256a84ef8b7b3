"""The explorer's Experiments tab in real headless Chromium, against a server running an A/B
test: it shows what GET /v1/experiments reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser_support import ARTIFACTS, launch, playwright_or_skip
from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import running_server

playwright_api = playwright_or_skip()


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("ab") / "ab.db"
    settings = ServeSettings(
        models=[ModelSpec("v1", str(tiny_checkpoint)), ModelSpec("v2", str(tiny_checkpoint))],
        routes=["chat=v1:0.5,v2:0.5"],
        feedback_db=f"sqlite:///{db}",
        max_seq_len=128,
    )
    with running_server(settings) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch(playwright_api)


def test_experiments_tab_shows_the_live_report(server: str, browser: Any) -> None:
    client = httpx.Client(base_url=server, timeout=60)
    for i in range(12):
        answer = client.post(
            "/v1/completions",
            json={"model": "chat", "prompt": "The", "max_tokens": 2, "user": f"u{i}"},
        ).json()
        rating = 5 if answer["model"] == "v2" else 2
        client.post("/v1/feedback", json={"response_id": answer["id"], "rating": rating})
    expected = client.get("/v1/experiments").json()["data"][0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server + "/")
    page.click("#tab-experiments")
    page.wait_for_selector("#panel-experiments .ab-table")
    text = page.inner_text("#panel-experiments")
    page.screenshot(path=str(ARTIFACTS / "experiments.png"))
    page.close()
    assert not errors, errors
    assert "Experiment “chat”" in text
    for version, numbers in expected["versions"].items():
        assert version in text and f"n={numbers['feedback']}" in text
    assert "sample ratio" in text
    assert expected["comparison"]["verdict"] in text
