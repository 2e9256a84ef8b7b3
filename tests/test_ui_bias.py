"""The explorer's Bias tab and route check, and the report's route check, in real headless
Chromium on the tiny model: the numbers shown are the explain library's on the same input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser_support import ARTIFACTS, explorer_page, launch, playwright_or_skip
from lmscope.explain import explain, route_faithfulness
from lmscope.explain.bias import run_probes
from lmscope.explain.bias_probes import parse_probe
from lmscope.explain.report import render_report
from lmscope.zoo.registry import load
from serve_support import tiny_server

playwright_api = playwright_or_skip()

PROBE = {
    "name": "toy",
    "template": "The {group} went to the {place} and",
    "groups": {"a": ["cat", "dog", "bird"], "b": ["man", "woman"], "c": ["car"]},
    "slots": {"place": ["park", "shop"]},
    "targets": [" the", " ran away"],
}
PROMPT = "The quick brown fox jumps over"
TAU = 0.01  # a random tiny model spreads its flow thin: a low tau puts heads on the route


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with tiny_server(tiny_checkpoint, max_seq_len=128) as base:
        yield base


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> Any:
    return load(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch(playwright_api)


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    yield from explorer_page(browser, server, height=1100, timeout_ms=60_000)


def formatted(page: Any, values: list[float]) -> list[str]:
    """The explorer's own number format of `values`."""
    return list(
        page.evaluate(
            "async (xs) => { const { fmt } = await import('/static/util.js');"
            " return xs.map((x) => fmt(x, 4)); }",
            values,
        )
    )


def test_bias_tab_shows_the_library_numbers(page: Any, reference: Any) -> None:
    expected = run_probes(
        reference.model, reference.tokenizer.encode, [parse_probe(PROBE)], n_boot=300, seed=0
    ).to_dict()["probes"][0]
    page.click("#tab-bias")
    page.select_option("#bias-set", "custom")
    page.fill("#bias-probes", json.dumps({"probes": [PROBE]}))
    page.fill("#bias-nboot", "300")
    page.click("#bias-run")
    page.wait_for_selector(".bias-probe[data-probe=toy] table.bias-components")
    page.screenshot(path=str(ARTIFACTS / "bias.png"), full_page=True)
    card = page.locator(".bias-probe[data-probe=toy]")

    # The table: mean probability per group, each gap and its CI, exact (title) and as shown.
    exact: list[float] = []
    shown: list[str] = []
    for i, t in enumerate(expected["targets"]):
        row = card.locator("table.bias-probs tbody tr").nth(i)
        assert row.get_attribute("data-target") == t["target"]
        cells = row.locator("td.num")
        means = [t["mean"][g] for g in ("a", "b", "c")]
        gaps = [t["gaps"][g]["gap"] for g in ("b", "c")]
        for j, value in enumerate(means):
            exact.append(float(cells.nth(j).get_attribute("title")))
            shown.append(cells.nth(j).inner_text())
            assert exact[-1] == value
        for j, g in enumerate(("b", "c")):
            gap_cell, ci_cell = cells.nth(3 + 2 * j), cells.nth(4 + 2 * j)
            assert float(gap_cell.get_attribute("title")) == gaps[j]
            lo, hi = map(float, ci_cell.get_attribute("title").split())
            assert [lo, hi] == t["gaps"][g]["ci"]
            assert gap_cell.inner_text() == formatted(page, [gaps[j]])[0]
            assert ci_cell.inner_text() == " … ".join(formatted(page, [lo, hi]))
    assert shown == formatted(page, exact)

    # The bars: one per (target, other group), drawn from the same gap and CI.
    bars = card.locator("svg.bias-chart g.bias-row")
    assert bars.count() == 2 * len(expected["targets"])
    for k in range(bars.count()):
        bar = bars.nth(k)
        t = next(x for x in expected["targets"] if x["target"] == bar.get_attribute("data-target"))
        gap = t["gaps"][bar.get_attribute("data-group")]
        assert float(bar.get_attribute("data-gap")) == gap["gap"]
        assert [float(bar.get_attribute("data-lo")), float(bar.get_attribute("data-hi"))] == gap[
            "ci"
        ]

    # The ranked components of each group against the reference.
    for group, kinds in expected["components"].items():
        rows = card.locator(f"table.bias-components[data-group={group}] tbody tr")
        want = kinds["heads"] + kinds["neurons"]
        assert rows.count() == len(want)
        for k, c in enumerate(want):
            assert rows.nth(k).get_attribute("data-component") == c["component"]
            assert float(rows.nth(k).locator("td.diff").get_attribute("title")) == c["diff"]


def test_bias_tab_names_the_wrong_field(page: Any) -> None:
    page.click("#tab-bias")
    page.select_option("#bias-set", "custom")
    page.fill("#bias-probes", json.dumps([{**PROBE, "template": "The {group} in {town}"}]))
    page.click("#bias-run")
    text = page.locator("#bias-error").inner_text()
    assert text.startswith("probes.[0]:") and "{town}" in text
    page.fill("#bias-probes", "{not json")
    page.click("#bias-run")
    assert "not valid JSON" in page.locator("#bias-out").inner_text()


def test_route_check_in_the_overview(page: Any, reference: Any) -> None:
    page.eval_on_selector(
        "#tau", f"el => {{ el.value = '{TAU}'; el.dispatchEvent(new Event('input')); }}"
    )
    page.fill("#prompt", PROMPT)
    page.click("#explain-btn")
    page.wait_for_selector("#route-check-btn")
    page.wait_for_selector("#busy", state="hidden")
    page.click("#route-check-btn")
    page.wait_for_selector("#route-check .route-check")
    page.locator("#route-check").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "route-check.png"))
    ex = explain(reference, PROMPT, saliency=False, tau=TAU)
    want = route_faithfulness(reference.model, ex.tokens, ex.routes, ex.prediction[0].token)
    assert want.components  # the check has something to ablate
    score = float(page.get_attribute("#route-check .route-check", "data-score") or "nan")
    assert score == pytest.approx(want.score, abs=1e-5)
    text = page.inner_text("#route-check")
    assert f"{len(want.components)} components on the route" in text


def test_report_shows_the_route_check(browser: Any, reference: Any, tmp_path: Path) -> None:
    ex = explain(reference, PROMPT, saliency=False, tau=TAU, route_check=True)
    assert ex.route_check is not None
    path = tmp_path / "report.html"
    path.write_text(render_report(ex))
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(path.as_uri())
    page.wait_for_selector("#prediction .route-check")
    score = float(page.get_attribute("#prediction .route-check", "data-score") or "nan")
    assert score == ex.route_check.score
    page.locator("#prediction").screenshot(path=str(ARTIFACTS / "report-route-check.png"))
    page.close()
    assert not errors, errors
