"""The HTML report in a real headless Chromium (file://, offline): its routes against
`build_routes`, retargeting every section from a token click, and the graph's scroll and fit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from browser_support import (
    ARTIFACTS,
    assert_inside_card,
    check_scroll_and_fit,
    click_graph,
    drawn_links,
    launch,
    playwright_or_skip,
)
from lmscope.explain import explain
from lmscope.explain.heads import top_heads
from lmscope.explain.lens import lens_table, update_logits
from lmscope.explain.neurons import top_neurons
from lmscope.explain.report import explorable
from lmscope.explain.routes import build_routes
from test_explain_support import CharTokenizer, FakeLoaded, tiny_model

playwright_api = playwright_or_skip()
PROMPT = "the cat sat on the mat"


def show(text: str) -> str:
    """showToken in util.js."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍") or "∅"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch(playwright_api)


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    # gpt2-style: biases, so renormalisation has bias shares to count
    return explain(FakeLoaded("tiny-gpt2", tiny_model("gpt2"), CharTokenizer()), PROMPT, tau=0.03)


def open_report(browser: Any, path: Path, width: int = 1500) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": width, "height": 950})
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(path.as_uri())
    page.wait_for_selector("#graph path.edge", state="attached")
    return page, errors


@pytest.fixture(scope="module")
def report(result, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    return result.save(tmp_path_factory.mktemp("report") / "report.html")


def set_controls(page: Any, tau: float, renormalise: bool) -> None:
    page.eval_on_selector(
        "#tau", f"el => {{ el.value = '{tau}'; el.dispatchEvent(new Event('input')); }}"
    )
    page.set_checked("#renormalise", renormalise)


def check_routes(page: Any, ex: Any, targets: tuple[int, ...], taus: tuple[float, ...]) -> None:
    """For each target, threshold and weighting, the edges the report draws are build_routes'
    edges with its weights."""
    for target in targets:
        page.click(f"#tokens .tok[data-position='{target}']")
        page.wait_for_selector(f"#tokens .tok.target[data-position='{target}']")
        for tau in taus:
            for renormalise in (False, True):
                set_controls(page, tau, renormalise)
                drawn = dict(drawn_links(page))
                routes = build_routes(ex.flow, target, tau, renormalise=renormalise)
                expected = {f"{e.source}>{e.target}>{e.kind}": e.weight for e in routes.edges}
                assert sorted(drawn) == sorted(expected), (target, tau, renormalise)
                for key, weight in drawn.items():
                    assert weight == pytest.approx(expected[key], abs=2e-5), key
                nodes = int(page.get_attribute("#graph", "data-nodes") or 0)
                assert nodes == len(routes.nodes)


def test_report_routes_match_build_routes(browser: Any, report: Path, result) -> None:  # type: ignore[no-untyped-def]
    page, errors = open_report(browser, report)
    check_routes(page, result, (len(PROMPT) - 1, 9, 7), (0.01, 0.03, 0.12))
    assert not errors, errors


def test_report_routes_of_a_parallel_block_model(browser: Any, tmp_path: Path) -> None:
    """Attention and MLP side by side: mlp_in edges leave resid_pre, not resid_mid."""
    ex = explain(FakeLoaded("tiny-neox", tiny_model("neox_parallel"), CharTokenizer()), PROMPT)
    page, errors = open_report(browser, ex.save(tmp_path / "parallel.html"))
    check_routes(page, ex, (len(PROMPT) - 1, 12), (0.01, 0.05))
    assert not errors, errors


def test_clicking_a_token_retargets_every_section(browser: Any, report: Path, result) -> None:  # type: ignore[no-untyped-def]
    page, errors = open_report(browser, report)
    view, flow, model = result.view, result.flow, result.model_ref
    sections = ["prediction", "heads", "neurons", "lens", "saliency"]
    outside = min(set(range(len(PROMPT))) - set(explorable(len(PROMPT), result.target)))
    page.click(f"#tokens .tok[data-position='{outside}']")  # not embedded: nothing changes
    assert page.get_attribute("#prediction", "data-target") == str(result.target)
    for target in (10, 13):
        page.click(f"#tokens .tok[data-position='{target}']")
        page.wait_for_selector(f"#tokens .tok.target[data-position='{target}']")
        for name in sections:
            assert page.get_attribute(f"#{name}", "data-target") == str(target), name
        assert page.get_attribute("#graph .col-label.target", "data-position") == str(target)
        # Each section shows the independent Python computation at the new target.
        logits = view.trace.logits[0, target]
        predicted = result.decode(int(logits.argmax()))
        first = page.locator("#prediction .bar-row .bar-label").first.inner_text()
        assert first == show(predicted)
        heads = [h for h, _ in top_heads(flow, target, 5)]
        assert page.locator("#heads .bar-row .bar-label").all_inner_texts() == heads
        expected_neurons = [
            row["label"]
            for layer in reversed(range(result.n_layers))
            for row in top_neurons(view, layer, target, 3, result.norm).to_dict()["neurons"]
        ]
        labels = page.eval_on_selector_all(
            "#report-neurons tbody tr", "rows => rows.map((r) => r.dataset.label)"
        )
        assert labels == expected_neurons
        lens = lens_table(model, view, target, 5, decode=result.decode)
        top = page.locator("#report-lens tbody tr").first.locator(".lens-tok .mono").first
        assert top.inner_text() == show(lens[-1].top[0].text)
        chips = page.locator("#saliency .saliency[data-method=attention_rollout] .tok")
        assert chips.count() == target + 1
        assert page.locator("#saliency .sal-legend").count() >= 1
    assert not errors, errors


def test_neurons_show_what_they_promote_in_context(browser: Any, tmp_path: Path) -> None:
    """Each neuron's first promoted token is the top of its part a * W_out[k] projected through
    the unembedding: with a negative activation, its output row's most suppressed token."""
    # gated MLPs: activations of both signs among the top neurons
    ex = explain(FakeLoaded("tiny-llama", tiny_model("llama_gqa"), CharTokenizer()), PROMPT)
    page, errors = open_report(browser, ex.save(tmp_path / "gated.html"))
    signs = set()
    for target in (len(PROMPT) - 1, 10, 7):
        page.click(f"#tokens .tok[data-position='{target}']")
        page.wait_for_selector(f"#tokens .tok.target[data-position='{target}']")
        rows = page.evaluate(
            """() => [...document.querySelectorAll('#report-neurons tbody tr')].map((r) => [
                r.dataset.label, r.querySelector('.chip.pos')?.title ?? null])"""
        )
        for label, title in rows:
            layer, neuron = (int(s) for s in label[1:].split("N"))
            activation = float(ex.view.mlp_hidden(layer)[target, neuron])
            part = ex.view.mlp_weight(layer)[neuron] * activation
            logits = update_logits(ex.model_ref, part)
            token = int(title.split()[1])  # "id 12 · 0.345"
            assert float(logits[token]) == pytest.approx(float(logits.max()), abs=1e-5)
            signs.add(activation > 0)
    assert signs == {True, False}  # both cases were seen
    assert not errors, errors


def test_graph_clicks_open_the_panels(browser: Any, report: Path) -> None:
    page, errors = open_report(browser, report)
    click_graph(page, "edge", "attention")
    page.wait_for_selector("#panel #head-bars .bar-row")
    page.wait_for_selector("#panel .head-view")
    click_graph(page, "node", "mlp")
    page.wait_for_selector("#panel #neuron-table")
    assert_inside_card(page, "#panel")
    click_graph(page, "node", "resid_mid")
    page.wait_for_selector("#panel #lens-table")
    values = page.locator("#panel #lens-table .prob-cell .bar-value").all_inner_texts()
    assert values and all(v.endswith("%") for v in values)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-short.png"), full_page=True)
    assert not errors, errors


def test_long_report_opens_at_the_target_and_fits(browser: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaded = FakeLoaded("tiny-gpt2", tiny_model("gpt2", n_ctx=64), CharTokenizer())
    prompt = "the quick brown fox jumps over the lazy dog and then the cat sat down."
    ex = explain(loaded, prompt[:64], tau=0.02, saliency=False)
    page, errors = open_report(browser, ex.save(tmp_path / "long.html"), width=1400)
    check_scroll_and_fit(page, "report-long")
    assert not errors, errors
