"""The one-call API, its errors, the exports, the HTML report and the `lmscope explain` command."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import typer
from typer.testing import CliRunner

from lmscope.explain import explain
from lmscope.explain.errors import (
    EmptyPromptError,
    ExplainInputError,
    PromptTooLongError,
    TargetOutOfRangeError,
    ThresholdError,
)
from test_explain_support import CharTokenizer, FakeLoaded, tiny_model

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def loaded() -> FakeLoaded:
    return FakeLoaded("tiny-gpt2", tiny_model("gpt2"), CharTokenizer())


@pytest.fixture(scope="module")
def result(loaded: FakeLoaded):  # type: ignore[no-untyped-def]
    return explain(loaded, PROMPT, tau=0.03)


def test_explain_bundles_every_view(result, loaded: FakeLoaded) -> None:  # type: ignore[no-untyped-def]
    n_layers = loaded.model.cfg.n_layers
    assert result.model == "tiny-gpt2"
    assert result.target == len(PROMPT) - 1 and len(result.tokens) == len(PROMPT)
    assert result.routes.targets == [result.target]
    assert len(result.lens) == 2 * n_layers + 1
    assert len(result.neurons) == n_layers
    assert len(result.head_importance) == n_layers
    assert {p.source for p in result.promotions} >= {"L0/attn", "L0/mlp"}
    assert [s.method for s in result.saliency] == ["gradient_x_input", "attention_rollout"]
    assert result.saliency[0].target == result.prediction[0].token
    data = json.loads(result.to_json())
    assert data["routes"]["links"] and data["trajectory"]["ranks"][-1] == 0
    assert set(data["timings"]) >= {"trace", "flow", "routes"}


def test_explain_accepts_a_model_and_token_ids(loaded: FakeLoaded) -> None:
    ex = explain(loaded.model, [1, 2, 3, 4, 5], target=2, saliency=False, renormalise=True)
    assert ex.target == 2 and ex.routes.renormalise
    assert ex.token_strs[0] == "<1>"
    assert [s.method for s in ex.saliency] == ["attention_rollout"]


def test_explain_view_reuses_a_trace_and_flow(result, loaded: FakeLoaded) -> None:  # type: ignore[no-untyped-def]
    from lmscope.explain import compute_flow, explain_view, record
    from lmscope.explain.trace import TraceView

    view = TraceView(loaded.model, record(loaded.model, result.tokens))
    flow = compute_flow(loaded.model, view)
    again = explain_view(
        view, flow, tau=0.03, decode=loaded.tokenizer.decode_one, prompt=PROMPT, name="tiny-gpt2"
    )
    a, b = result.to_dict(), again.to_dict()
    a.pop("timings"), b.pop("timings")
    assert a == b
    with pytest.raises(ValueError, match="norm"):
        explain_view(view, flow, norm="l2")


def test_bad_input_gives_clear_value_errors(loaded: FakeLoaded) -> None:
    cases = [
        (dict(prompt=""), EmptyPromptError, "empty"),
        (dict(prompt=[]), EmptyPromptError, "empty"),
        (dict(prompt=PROMPT, target=len(PROMPT)), TargetOutOfRangeError, "out of range"),
        (dict(prompt=PROMPT, target=-len(PROMPT) - 1), TargetOutOfRangeError, "out of range"),
        (dict(prompt=PROMPT, tau=-0.01), ThresholdError, r"\[0, 1\]"),
        (dict(prompt=PROMPT, tau=1.01), ThresholdError, r"\[0, 1\]"),
        (dict(prompt="x" * 40), PromptTooLongError, "context window is 32"),
    ]
    for kwargs, error, message in cases:
        prompt = kwargs.pop("prompt")
        with pytest.raises(error, match=message) as info:
            explain(loaded, prompt, **kwargs)
        assert isinstance(info.value, ValueError) and isinstance(info.value, ExplainInputError)
    with pytest.raises(ValueError, match="norm"):
        explain(loaded, PROMPT, norm="l3")


def test_save_json_graphml(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    g = nx.node_link_graph(json.loads(result.save(tmp_path / "g.json").read_text()), edges="links")
    assert g.number_of_edges() == len(result.routes.edges)
    gm = nx.read_graphml(result.save(tmp_path / "g.graphml"))
    assert gm.number_of_nodes() == len(result.routes.nodes)
    with pytest.raises(ExplainInputError, match=r"\.json, \.graphml or \.html"):
        result.save(tmp_path / "g.png")


# The HTML report: tests/test_report.py and tests/test_report_browser.py (in Chromium).


# ---- the CLI ---------------------------------------------------------------------------------
@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, loaded: FakeLoaded) -> typer.Typer:
    import lmscope.zoo.registry as registry
    from lmscope.commands import explain as explain_cmd

    monkeypatch.setattr(registry, "load", lambda name, **_: loaded)
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """lmscope (test)"""

    explain_cmd.register(app)
    return app


def test_cli_summary_and_outputs(cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["explain", "tiny", PROMPT, "--top", "3"])
    assert res.exit_code == 0, res.output
    assert "prediction" in res.output and "heads" in res.output and "logit lens" in res.output
    for name in ("graph.json", "graph.graphml", "report.html"):
        out = tmp_path / name
        res = runner.invoke(
            cli, ["explain", "tiny", PROMPT, "--target", "3", "--tau", "0.05", "--out", str(out)]
        )
        assert res.exit_code == 0, res.output
        assert out.is_file() and out.stat().st_size > 0
    data = json.loads((tmp_path / "graph.json").read_text())
    assert data["graph"]["targets"] == [3] and data["graph"]["tau"] == 0.05


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny", ""], "empty"),
        (["tiny", PROMPT, "--target", "99"], "out of range"),
        (["tiny", PROMPT, "--target", "-99"], "out of range"),
        (["tiny", PROMPT, "--tau", "1.5"], "[0, 1]"),
        (["tiny", PROMPT, "--tau", "-0.5"], "[0, 1]"),
        (["tiny", "x" * 40], "context window"),
        (["tiny", PROMPT, "--out", "graph.png"], ".json, .graphml or .html"),
        (["tiny", PROMPT, "--norm", "l7"], "norm"),
    ],
)
def test_cli_bad_input_is_one_clear_line(cli: typer.Typer, args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["explain", *args])
    assert res.exit_code == 2
    text = res.output + (res.stderr if hasattr(res, "stderr") else "")
    assert "error:" in text and message in text
    assert "Traceback" not in text
