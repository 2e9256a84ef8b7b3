"""The HTML report's page: one offline file built from the explorer's own static modules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmscope.explain import explain
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.lens import promoted_by_neuron, promoted_by_neurons
from lmscope.explain.report import explorable, report_data
from lmscope.explain.report_page import MODULES, bundle, static_text
from test_explain_support import CharTokenizer, FakeLoaded, tiny_model

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return explain(FakeLoaded("tiny-gpt2", tiny_model("gpt2"), CharTokenizer()), PROMPT, tau=0.03)


def page_data(html: str) -> dict:  # type: ignore[type-arg]
    found = re.search(
        r'<script type="application/json" id="lmscope-data">(.*?)</script>', html, re.S
    )
    assert found
    return json.loads(found.group(1))


def test_report_is_one_offline_file(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    html = result.save(tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched
    assert "<link" not in html and "@import" not in html
    assert not re.search(r"^\s*(import|export)\b", html, re.M)  # modules joined, none loaded
    data = page_data(html)
    assert data["tokens"] == result.token_strs and data["target"] == result.target
    assert data["targets"] == explorable(len(PROMPT), result.target)
    assert data["graph"]["edges"] and data["head_maps"]
    assert not list(tmp_path.glob(".*"))  # written through a temporary name, nothing left over


def test_the_page_uses_the_explorer_modules(result) -> None:  # type: ignore[no-untyped-def]
    """The report's script is the explorer's files, not a copy: each module's text is in it."""
    script = bundle()
    for name in MODULES:
        body = re.sub(r"^(import .*|export )", "", static_text(name), flags=re.M)
        assert body.splitlines()[-2] in script
    assert "function rethreshold(" in script and script.count("function rethreshold(") == 1


def test_bundle_refuses_a_module_order_it_cannot_satisfy() -> None:
    with pytest.raises(RuntimeError, match=r"graph\.js imports util\.js"):
        bundle(("graph.js", "util.js"))


def test_explorable_positions() -> None:
    assert explorable(5, 4, n=8) == [0, 1, 2, 3, 4]
    assert explorable(100, 99, n=8) == list(range(92, 100))
    assert explorable(100, 3, n=8) == list(range(0, 8))


def test_every_explorable_position_has_every_section(result) -> None:  # type: ignore[no-untyped-def]
    data = report_data(result, targets=[3, 7, -2])
    assert data["targets"] == sorted({3, 7, len(PROMPT) - 2, result.target})
    for t in data["targets"]:
        here = data["per_target"][str(t)]
        assert here["prediction"] and here["trajectory"]["position"] == t
        assert len(here["lens"]) == 2 * result.n_layers + 1
        assert len(here["neurons"]) == result.n_layers
        assert {s["method"] for s in here["saliency"]} >= {"attention_rollout"}
        assert all(len(s["scores"]) == t + 1 for s in here["saliency"])
        for block in here["neurons"]:  # each neuron carries its output row's projection
            assert all("promoted" in row for row in block["neurons"])


def test_neuron_projections_in_one_batch_equal_one_at_a_time(result) -> None:  # type: ignore[no-untyped-def]
    pairs = [(0, 3), (2, 47), (-1, 0)]
    batch = promoted_by_neurons(result.model_ref, result.view, pairs, 4, result.decode)
    for (layer, neuron), got in zip(pairs, batch, strict=True):
        one = promoted_by_neuron(result.model_ref, result.view, layer, neuron, 4, result.decode)
        for a, b in ((got.promoted, one.promoted), (got.suppressed, one.suppressed)):
            assert [t.token for t in a] == [t.token for t in b]
            assert [t.logit for t in a] == pytest.approx([t.logit for t in b], abs=1e-5)
    assert batch[2].source == f"L{result.n_layers - 1}N0"
    with pytest.raises(ExplainInputError, match="neuron 999 is out of range"):
        promoted_by_neurons(result.model_ref, result.view, [(0, 1), (1, 999)])


def test_a_report_target_out_of_range_is_one_clear_error(result) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExplainInputError, match="report target position 99 is out of range"):
        report_data(result, targets=[2, 99])
