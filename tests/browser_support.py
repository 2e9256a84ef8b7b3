"""Shared set-up of the browser tests: Debian's Chromium driven by playwright, and helpers that
click the route graph (drawn as a few paths, so items are found by geometry, not by element).

Needs Debian's `chromium` (apt-get install chromium) and the `playwright` Python package; the
browser bundled by `playwright install` is never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"


def playwright_or_skip() -> Any:
    """The playwright sync API, or skip the calling test module."""
    api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need `pip install playwright`"
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (apt-get install "
            "chromium) or set LMSCOPE_CHROMIUM",
            allow_module_level=True,
        )
    return api


def explorer_page(
    browser: Any, base: str, height: int = 1000, timeout_ms: int = 20_000
) -> Iterator[Any]:
    """The explorer open and connected in a fresh browser context; fails the test if the page
    raised a JavaScript error meanwhile (use as the body of a `page` fixture)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1600, "height": height})
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base + "/")
    page.wait_for_selector("#status.status-ok")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def launch(api: Any) -> Iterator[Any]:
    with api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


# Scroll an edge (or node) of a kind into view and return the page point that picks it.
POINT_OF = """([what, kind]) => {
  const svg = document.getElementById('graph'), g = svg._graph;
  const wrap = document.getElementById('graph-wrap');
  const items = what === 'edge' ? g.links.filter((e) => e.kind === kind)
                                : g.nodes.filter((n) => n.kind === kind);
  for (const item of items) {
    const pt = what === 'edge' ? g.edgePoint(item) : g.nodePoint(item.id);
    const hit = g.pick(pt[0], pt[1]);
    if (!hit || (what === 'edge' ? hit.edge !== item : hit.node !== item)) continue;
    wrap.scrollLeft = pt[0] - wrap.clientWidth / 2;
    wrap.scrollTop = pt[1] - wrap.clientHeight / 2;
    const r = svg.getBoundingClientRect();
    return [r.left + pt[0] * r.width / g.L.width, r.top + pt[1] * r.height / g.L.height];
  }
  return null;
}"""


def click_graph(page: Any, what: str, kind: str) -> None:
    point = page.evaluate(POINT_OF, [what, kind])
    assert point is not None, f"no {kind} {what} that a click would pick"
    page.mouse.click(point[0], point[1])


def drawn_links(page: Any) -> list[list[Any]]:
    """[key, weight] of every edge the graph drew."""
    return page.evaluate(
        """() => document.getElementById('graph')._graph.links.map(
            (e) => [`${e.source}>${e.target}>${e.kind}`, e.weight])"""
    )


def assert_inside_card(page: Any, selector: str) -> None:
    """Nothing in the card sticks out of it sideways."""
    overflow = page.evaluate(
        """(sel) => {
            const card = document.querySelector(sel), box = card.getBoundingClientRect();
            return [...card.querySelectorAll('*')]
              .filter((e) => e.getBoundingClientRect().right > box.right + 1)
              .map((e) => e.tagName + '.' + e.className);
        }""",
        selector,
    )
    assert overflow == [], overflow


GEOMETRY = """() => {
    const wrap = document.getElementById('graph-wrap'), g = document.getElementById('graph')._graph;
    const labels = document.getElementById('graph-layers').getBoundingClientRect();
    const target = Number(document.querySelector('#tokens .tok.target').dataset.position);
    return {scrollLeft: wrap.scrollLeft, clientWidth: wrap.clientWidth, scrollWidth: wrap.scrollWidth,
            clientHeight: wrap.clientHeight, scrollHeight: wrap.scrollHeight,
            wrapLeft: wrap.getBoundingClientRect().left, labelsLeft: labels.left,
            targetX: g.L.x(target), col: g.L.col, left: g.L.left};
}"""


def check_scroll_and_fit(page: Any, shot: str) -> None:
    """The graph opened scrolled to its target; labels stay at the left; fit fits it all."""
    at = page.evaluate(GEOMETRY)
    assert at["scrollWidth"] > at["clientWidth"]  # a long prompt scrolls sideways...
    assert at["scrollLeft"] > 0  # ...and opens scrolled to the target, at the right of the view
    assert at["scrollLeft"] + at["left"] <= at["targetX"] - at["col"] / 2
    assert at["targetX"] + at["col"] / 2 <= at["scrollLeft"] + at["clientWidth"]
    page.eval_on_selector("#graph-wrap", "el => { el.scrollLeft = 200; }")
    at = page.evaluate(GEOMETRY)
    assert abs(at["labelsLeft"] - at["wrapLeft"]) <= 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"))
    page.click("#zoom-fit")
    fits = "(w => w.scrollWidth <= w.clientWidth)(document.getElementById('graph-wrap'))"
    page.wait_for_function(fits)
    at = page.evaluate(GEOMETRY)
    assert at["scrollHeight"] <= at["clientHeight"]
    page.screenshot(path=str(ARTIFACTS / f"{shot}-fit.png"))
    page.click("#zoom-in")  # zooming in from the fitted view makes it scroll again
    page.wait_for_function(f"!{fits}")
