"""The web explorer in a real headless Chromium, against a real server with the tiny model.

Needs Debian's `chromium` (apt-get install chromium) and the `playwright` Python package; the
browser bundled by `playwright install` is never used. Screenshots go to test-artifacts/ui/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import running_server

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = os.environ.get("LMSCOPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs `pip install playwright`"
)
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (apt-get install "
        "chromium) or set LMSCOPE_CHROMIUM",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    settings = ServeSettings(models=[ModelSpec("tiny", str(tiny_checkpoint))], max_seq_len=128)
    with running_server(settings) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server + "/")
    page.wait_for_selector("#status.status-ok")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def set_tau(page: Any, value: float) -> None:
    page.eval_on_selector(
        "#tau", f"el => {{ el.value = '{value}'; el.dispatchEvent(new Event('input')); }}"
    )


def explain_prompt(page: Any, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#explain-btn")
    page.wait_for_selector("#graph g.edge-g", state="attached")
    page.wait_for_selector("#busy", state="hidden")


def test_explore_a_prompt(page: Any) -> None:
    assert page.title() == "lmscope explorer"
    assert page.locator("#model-select option").all_inner_texts() == ["tiny"]
    set_tau(page, 0.01)
    explain_prompt(page, "The capital of France is")
    n_tokens = page.locator("#tokens .tok").count()
    assert n_tokens > 3
    assert page.locator("#tokens .tok.target").get_attribute("data-position") == str(n_tokens - 1)
    assert page.locator("#graph g.edge-g[data-kind=attention]").count() > 0
    assert page.locator("#graph circle.node").count() > 0
    assert "predicts" in page.inner_text("#graph-summary")
    assert page.locator("#panel-overview .bar-row").count() >= 10  # predictions + heads
    page.screenshot(path=str(ARTIFACTS / "01-graph.png"))

    # An attention edge: per-head bars, then the top head's maps and promoted tokens.
    page.locator("#graph g.edge-g[data-kind=attention] path.hit").first.click(force=True)
    page.wait_for_selector("#head-view")
    assert page.locator("#head-bars .bar-row").count() == 4
    assert page.locator("#head-view canvas").count() == 2
    assert page.locator("#head-view .chip.pos").count() == 10
    page.locator("#head-bars .bar-row").nth(3).click()
    page.wait_for_selector("#head-view h3:has-text('Head L')")
    page.screenshot(path=str(ARTIFACTS / "02-attention-edge.png"))

    # A residual node: the logit lens with rank changes.
    page.locator("#graph circle[data-kind=resid_mid]").first.click(force=True)
    page.wait_for_selector("#lens-table")
    assert page.locator("#lens-table tbody tr").count() == 12
    assert "L" in page.inner_text("#panel-details h3")
    page.uncheck("#lens-final-norm")
    page.wait_for_selector("#lens-final-norm:not(:checked)")
    page.screenshot(path=str(ARTIFACTS / "03-logit-lens.png"))

    # An MLP block: top neurons and their vocabulary projections.
    page.locator("#graph rect[data-kind=mlp]").first.click(force=True)
    page.wait_for_selector("#neuron-table")
    assert page.locator("#neuron-table tbody tr").count() == 10
    page.screenshot(path=str(ARTIFACTS / "04-neurons.png"))

    # The tau slider re-thresholds the graph; clicking a token moves the target.
    before = page.locator("#graph g.edge-g").count()
    set_tau(page, 0.2)
    page.wait_for_function(f"document.querySelectorAll('#graph g.edge-g').length < {before}")
    page.locator("#tokens .tok").nth(2).click()
    page.wait_for_selector("#tokens .tok.target[data-position='2']")
    assert page.locator("#graph .col-label.target").get_attribute("data-position") == "2"

    # Saliency by another method, from the overview.
    page.click("#tab-overview")
    page.select_option("#saliency-method", "integrated_gradients")
    page.wait_for_selector("#panel-overview .sal-tok")
    assert page.locator("#panel-overview .sal-tok").count() == 3


def test_client_side_threshold_matches_the_server(page: Any, server: str) -> None:
    """The slider's instant re-threshold (graph.js) keeps exactly the server's route edges."""
    body = {"model": "tiny", "prompt": "To be, or not to be, that is", "target": -1}
    low = httpx.post(server + "/v1/explain/routes", json={**body, "tau": 0.002}).json()
    for tau in (0.01, 0.03, 0.1):
        high = httpx.post(server + "/v1/explain/routes", json={**body, "tau": tau}).json()
        keys = page.evaluate(
            """async ([routes, tau]) => {
                const graph = await import('/static/graph.js');
                const out = graph.rethreshold(routes, tau);
                return [out.links.map(graph.edgeKey).sort(), out.nodes.map((n) => n.id).sort()];
            }""",
            [low["routes"], tau],
        )
        expected_edges = sorted(
            f"{e['source']}>{e['target']}>{e['kind']}" for e in high["routes"]["links"]
        )
        assert keys[0] == expected_edges
        assert keys[1] == sorted(n["id"] for n in high["routes"]["nodes"])


def test_bad_input_shows_the_error(page: Any) -> None:
    page.fill("#prompt", "")
    page.click("#explain-btn")
    page.wait_for_selector("#error:not([hidden])")
    assert "400" in page.inner_text("#error-title")
    assert "empty" in page.inner_text("#error-message")
    page.screenshot(path=str(ARTIFACTS / "05-error.png"))
    page.click("#error-close")
    page.wait_for_selector("#error", state="hidden")


def test_stream_a_completion_then_explain_a_generated_token(page: Any) -> None:
    set_tau(page, 0.01)
    page.fill("#prompt", "To be, or not")
    page.fill("#max-tokens", "8")
    page.click("#generate-btn")
    page.wait_for_selector("#gen-output .gen-token")
    chips = page.locator("#gen-output .gen-token")
    assert 1 <= chips.count() <= 8
    assert page.locator("#tokens .tok.generated").count() == chips.count()
    n_prompt = page.locator("#tokens .tok:not(.generated)").count()
    # The first generated token is explained by the prediction at the last prompt token.
    assert page.locator("#tokens .tok.target").get_attribute("data-position") == str(n_prompt - 1)
    if chips.count() > 1:
        chips.nth(1).click()
        page.wait_for_selector("#gen-output .gen-token.selected[data-index='1']")
        target = page.locator("#tokens .tok.target").get_attribute("data-position")
        assert target == str(n_prompt)
    assert "actual next" in page.inner_text("#graph-summary")
    page.screenshot(path=str(ARTIFACTS / "06-generation.png"))
