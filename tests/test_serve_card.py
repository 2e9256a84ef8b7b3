"""GET /v1/models/{id}/card on a real server, the explorer's Card tab, and the card `lmscope
train` writes beside a final model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from lmscope.zoo.registry import load
from serve_support import tiny_server


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with tiny_server(tiny_checkpoint) as base:
        yield base


def _parameters(tiny_checkpoint: Path) -> int:
    model = load(tiny_checkpoint).model
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_card_in_every_media_type(server: str, tiny_checkpoint: Path) -> None:
    client = httpx.Client(base_url=server, timeout=120)
    model_id = client.get("/v1/models").json()["data"][0]["id"]
    markdown = client.get(f"/v1/models/{model_id}/card")
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text.startswith("---\n")  # Hugging Face front matter
    facts = client.get(f"/v1/models/{model_id}/card", headers={"Accept": "application/json"})
    total = facts.json()["overview"]["parameters"]["total"]
    assert total == _parameters(tiny_checkpoint)  # tied weights counted once
    assert f"{total:,}" in markdown.text or str(total) in markdown.text
    page = client.get(f"/v1/models/{model_id}/card", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html") and "<script" not in page.text
    linked = client.get(
        f"/v1/models/{model_id}/card", headers={"Accept": "application/ld+json"}
    ).json()
    assert linked["@type"] == "CreativeWork"
    missing = client.get("/v1/models/nope/card")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model_id"


def test_card_tab_in_the_explorer(server: str) -> None:
    from browser_support import ARTIFACTS, launch, playwright_or_skip

    api = playwright_or_skip()
    errors: list[str] = []
    for browser in launch(api):
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server + "/")
        page.wait_for_selector("#status.status-ok")
        page.click("#tab-card")
        frame_element = page.wait_for_selector("#panel-card iframe")
        frame: Any = frame_element.content_frame()
        frame.wait_for_selector("body")
        text = frame.inner_text("body")
        assert "Model Details" in text or "Model details" in text
        assert page.inner_text("#panel-card").count("README.md") == 1
        page.screenshot(path=str(ARTIFACTS / "card.png"))
        page.close()
        assert not errors, errors


def test_train_writes_a_card_beside_the_final_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    from lmscope.commands.train import write_model_card

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model_dir)
    write_model_card(SimpleNamespace(model_dir=model_dir))
    facts = json.loads((model_dir / "card" / "facts.json").read_text())
    assert facts["overview"]["parameters"]["total"] == _parameters(tiny_checkpoint)
    assert (model_dir / "card" / "README.md").read_text().startswith("---\n")
    assert load(model_dir).model is not None  # the card does not disturb the checkpoint
