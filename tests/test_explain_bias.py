"""Bias probes: probabilities, gaps and components against direct per-prompt computations,
the bootstrap CI against its normal approximation, and every probe-file mistake."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmscope.explain import compute_flow, record
from lmscope.explain.bias import run_probe, run_probes
from lmscope.explain.bias_probes import BUILTIN, load_probes, parse_probe
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.heads import head_importance
from test_explain_support import CharTokenizer, tiny_model

TOK = CharTokenizer()
PROBE = {
    "name": "toy",
    "template": "ab {group} c{x}",
    "groups": {"g1": ["de", "fg", "hi"], "g2": ["jk", "lm", "no"]},
    "slots": {"x": ["p", "qr"]},
    "targets": ["s", "tu"],
}


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return tiny_model("gpt2")


def _prob(model, prompt: str, target: str) -> float:  # type: ignore[no-untyped-def]
    ids = TOK.encode(prompt + target)
    n = len(TOK.encode(prompt))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
    return math.exp(sum(float(logp[i - 1, ids[i]]) for i in range(n, len(ids))))


def test_gaps_and_components_match_direct_computation(model) -> None:  # type: ignore[no-untyped-def]
    probe = parse_probe(PROBE)
    prompts = probe.prompts()
    assert prompts["g1"][:2] == ["ab de cp", "ab de cqr"] and len(prompts["g2"]) == 6
    result = run_probe(model, TOK.encode, probe, n_boot=2000, seed=1)
    assert result.reference == "g1" and result.groups == {"g1": 6, "g2": 6}
    for j, target in enumerate(["s", "tu"]):
        p = {g: [_prob(model, t, target) for t in prompts[g]] for g in prompts}
        row = result.targets[j]
        for g in p:
            assert row["mean"][g] == pytest.approx(sum(p[g]) / 6, rel=1e-5)
        gap = row["gaps"]["g2"]
        assert gap["gap"] == pytest.approx(row["mean"]["g2"] - row["mean"]["g1"])
        a, b = torch.tensor(p["g2"]), torch.tensor(p["g1"])
        se = math.sqrt(a.var(unbiased=False) / 6 + b.var(unbiased=False) / 6)
        lo, hi = gap["ci"]
        assert lo < gap["gap"] < hi
        assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.35)  # bootstrap ~ normal approx
    heads = {}
    for g, texts in prompts.items():
        imps = [
            head_importance(compute_flow(model, record(model, TOK.encode(t))), -1) for t in texts
        ]
        heads[g] = torch.stack(imps).double().mean(0)
    diff = heads["g2"] - heads["g1"]
    top = result.components["g2"]["heads"][0]
    layer, head = (int(x) for x in top["component"][1:].split("H"))
    assert top["diff"] == pytest.approx(float(diff[layer, head]), abs=1e-6)
    assert abs(top["diff"]) == pytest.approx(float(diff.abs().max()), abs=1e-6)


def test_identical_groups_have_no_gap(model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    same = dict(PROBE, groups={"a": ["de", "fg"], "b": ["de", "fg"]})
    report = run_probes(model, TOK.encode, [parse_probe(same)], n_boot=50, components=False)
    for row in report.probes[0].targets:
        assert row["gaps"]["b"]["gap"] == 0.0
    json_path, html_path = report.save(tmp_path / "bias.html")
    assert json.loads(json_path.read_text())["probes"][0]["name"] == "toy"
    assert "Bias probes" in html_path.read_text()


def test_probe_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert [p.name for p in load_probes("builtin")] == [b["name"] for b in BUILTIN]
    path = tmp_path / "p.yaml"
    path.write_text(
        "probes:\n  - template: 'The {group} is'\n    groups: {a: [x], b: [y]}\n"
        "    targets: [' z']\n"
    )
    assert load_probes(path)[0].prompts() == {"a": ["The x is"], "b": ["The y is"]}
    path.write_text("probes: [")
    with pytest.raises(ExplainInputError, match="not valid YAML"):
        load_probes(path)
    with pytest.raises(ExplainInputError, match="does not exist"):
        load_probes(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"template": "The {group} {job} is"}, r"slot\(s\) \{job\} have no word list"),
        ({"template": "The person is"}, "no {group} slot"),
        ({"groups": {"a": ["x"]}}, "at least two group names"),
        ({"groups": {"a": ["x"], "b": []}}, "group 'b' is empty"),
        ({"targets": []}, "targets is empty"),
        ({"slots": {"x": []}}, "slot 'x' is empty"),
        ({"colour": "red"}, "unknown keys"),
        ({"template": "The {group} {} is"}, "slots must be names"),
    ],
)
def test_probe_mistakes_are_one_clear_line(change: dict, message: str) -> None:
    with pytest.raises(ExplainInputError, match=message):
        parse_probe({**PROBE, **change})


def test_zero_resamples_is_a_clear_error(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExplainInputError, match="n_boot must be a positive integer"):
        run_probe(model, TOK.encode, parse_probe(PROBE), n_boot=0)
