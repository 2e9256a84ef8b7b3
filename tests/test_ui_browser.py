"""The web explorer in a real headless Chromium, against a real server with the tiny model.

Screenshots go to test-artifacts/ui/ (see browser_support for what the browser tests need).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser_support import (
    ARTIFACTS,
    assert_inside_card,
    check_scroll_and_fit,
    click_graph,
    explorer_page,
    launch,
    playwright_or_skip,
)
from serve_support import tiny_server

playwright_api = playwright_or_skip()


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with tiny_server(tiny_checkpoint, max_seq_len=128) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch(playwright_api)


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    yield from explorer_page(browser, server, height=1000, timeout_ms=20_000)


def set_tau(page: Any, value: float) -> None:
    page.eval_on_selector(
        "#tau", f"el => {{ el.value = '{value}'; el.dispatchEvent(new Event('input')); }}"
    )


def explain_prompt(page: Any, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#explain-btn")
    page.wait_for_selector("#graph path.edge", state="attached")
    page.wait_for_selector("#busy", state="hidden")


def drawn_edges(page: Any) -> int:
    return int(page.get_attribute("#graph", "data-edges") or 0)


def test_explore_a_prompt(page: Any) -> None:
    assert page.title() == "lmscope explorer"
    assert page.locator("#model-select option").all_inner_texts() == ["tiny"]
    set_tau(page, 0.01)
    explain_prompt(page, "The capital of France is")
    n_tokens = page.locator("#tokens .tok").count()
    assert n_tokens > 3
    assert page.locator("#tokens .tok.target").get_attribute("data-position") == str(n_tokens - 1)
    assert page.locator("#graph path.edge[data-kind=attention]").count() > 0
    assert int(page.get_attribute("#graph", "data-nodes") or 0) > 0
    assert "predicts" in page.inner_text("#graph-summary")
    assert page.locator("#panel-overview .bar-row").count() >= 10  # predictions + heads
    page.screenshot(path=str(ARTIFACTS / "01-graph.png"))

    # An attention edge: per-head bars, then the top head's maps and promoted tokens.
    click_graph(page, "edge", "attention")
    page.wait_for_selector("#head-view")
    assert page.locator("#head-bars .bar-row").count() == 4
    assert page.locator("#head-view canvas").count() == 2
    assert page.locator("#head-view .chip.pos").count() == 10
    page.locator("#head-bars .bar-row").nth(3).click()
    page.wait_for_selector("#head-view h3:has-text('Head L')")
    page.screenshot(path=str(ARTIFACTS / "02-attention-edge.png"))

    # A residual node: the logit lens with rank changes.
    click_graph(page, "node", "resid_mid")
    page.wait_for_selector("#lens-table")
    assert page.locator("#lens-table tbody tr").count() == 12
    # every probability bar has its number beside it
    values = page.locator("#lens-table .prob-cell .bar-value").all_inner_texts()
    assert len(values) == 12 and all(v.endswith("%") for v in values)
    assert page.locator("#graph .overlay .selected").count() == 1
    assert "L" in page.inner_text("#panel-details h3")
    page.uncheck("#lens-final-norm")
    page.wait_for_selector("#lens-final-norm:not(:checked)")
    page.screenshot(path=str(ARTIFACTS / "03-logit-lens.png"))

    # An MLP block: top neurons and their vocabulary projections.
    click_graph(page, "node", "mlp")
    page.wait_for_selector("#neuron-table")
    assert page.locator("#neuron-table tbody tr").count() == 10
    assert_inside_card(page, "#panel-details")
    page.screenshot(path=str(ARTIFACTS / "04-neurons.png"))

    # The tau slider re-thresholds the graph; clicking a token moves the target.
    before = drawn_edges(page)
    set_tau(page, 0.2)
    page.wait_for_function(f"Number(document.getElementById('graph').dataset.edges) < {before}")
    page.locator("#tokens .tok").nth(2).click()
    page.wait_for_selector("#tokens .tok.target[data-position='2']")
    assert page.locator("#graph .col-label.target").get_attribute("data-position") == "2"

    # Saliency by another method, from the overview.
    page.click("#tab-overview")
    page.select_option("#saliency-method", "integrated_gradients")
    page.wait_for_selector("#panel-overview .sal-tokens .tok")
    assert page.locator("#panel-overview .sal-tokens .tok").count() == 3
    assert page.locator("#panel-overview .sal-legend").count() == 1
    # the footer shows the time measured in the browser, not a timing the API does not send
    footer = page.inner_text("#graph-footer")
    assert "answered in" in footer and "explained in" not in footer


def test_client_side_threshold_matches_the_server(page: Any, server: str) -> None:
    """The slider's instant re-threshold (graph.js) keeps exactly the server's route edges, with
    the server's weights, renormalised or not."""
    body = {"model": "tiny", "prompt": "To be, or not to be, that is", "target": -1}
    low = httpx.post(server + "/v1/explain/routes", json={**body, "tau": 0.002}).json()
    for tau in (0.01, 0.03, 0.1):
        for renormalise in (False, True):
            high = httpx.post(
                server + "/v1/explain/routes",
                json={**body, "tau": tau, "renormalise": renormalise},
            ).json()
            links, nodes = page.evaluate(
                """async ([routes, tau, renormalise]) => {
                    const graph = await import('/static/graph.js');
                    const out = graph.rethreshold(routes, tau, {renormalise});
                    return [out.links.map((e) => [graph.edgeKey(e), e.weight, e.heads || null]),
                            out.nodes.map((n) => n.id)];
                }""",
                [low["routes"], tau, renormalise],
            )
            expected = {
                f"{e['source']}>{e['target']}>{e['kind']}": e for e in high["routes"]["links"]
            }
            assert sorted(k for k, _, _ in links) == sorted(expected)
            assert sorted(nodes) == sorted(n["id"] for n in high["routes"]["nodes"])
            for key, weight, heads in links:
                assert weight == pytest.approx(expected[key]["weight"], abs=2e-6), key
                if heads is not None:
                    assert heads == pytest.approx(expected[key]["heads"], abs=2e-6), key


LONG_PROMPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)  # ~80 tokens


def test_long_prompt_opens_at_the_target_and_fits(page: Any) -> None:
    set_tau(page, 0.002)
    explain_prompt(page, LONG_PROMPT)
    # the token strip scrolled to the target too
    visible = page.evaluate(
        """() => { const bar = document.getElementById('tokens').getBoundingClientRect();
                   const t = document.querySelector('#tokens .tok.target').getBoundingClientRect();
                   return t.top >= bar.top && t.bottom <= bar.bottom; }"""
    )
    assert visible
    check_scroll_and_fit(page, "07-long-prompt")


def test_a_neuron_shows_what_it_promotes_in_context(page: Any) -> None:
    """A negative activation flips the output row's tokens: they are suppressed here."""
    rows = page.evaluate(
        """async () => {
            const panels = await import('/static/panels.js');
            const n = {activation: -2, promoted: [{text: 'a', logit: 3}], suppressed: [{text: 'b', logit: -1}]};
            const p = {activation: 0.5, promoted: [{text: 'a', logit: 3}], suppressed: [{text: 'b', logit: -1}]};
            return [panels.neuronInContext(n), panels.neuronInContext(p)];
        }"""
    )
    flipped, kept = rows
    assert flipped["promoted"] == [{"text": "b", "logit": 2}]
    assert flipped["suppressed"] == [{"text": "a", "logit": -6}]
    assert kept["promoted"] == [{"text": "a", "logit": 1.5}]
    assert kept["suppressed"] == [{"text": "b", "logit": -0.5}]


def test_bad_input_shows_the_error(page: Any) -> None:
    page.fill("#prompt", "")
    page.click("#explain-btn")
    page.wait_for_selector("#error:not([hidden])")
    assert "400" in page.inner_text("#error-title")
    message = page.inner_text("#error-message")
    assert "prompt" in message and "at least 1 character" in message
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
