"""The explain subcommands (bias, attribute, aggregate --diff, rules) on a tiny model, next to
the default `lmscope explain MODEL PROMPT`; bad input is one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from test_explain_support import CharTokenizer, FakeLoaded, tiny_model


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    import lmscope.zoo.registry as registry
    from lmscope.commands import explain as explain_cmd

    loaded = FakeLoaded("tiny-gpt2", tiny_model("gpt2"), CharTokenizer())
    calls: list[str] = []
    devices: list[object] = []

    def load(name: str, **kwargs: object) -> FakeLoaded:
        calls.append(name)
        devices.append(kwargs.get("device"))
        return loaded

    monkeypatch.setattr(registry, "load", load)
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """lmscope (test)"""

    explain_cmd.register(app)
    app.calls = calls  # type: ignore[attr-defined]
    app.devices = devices  # type: ignore[attr-defined]
    return app


def run(cli: typer.Typer, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["explain", *args])


PROBES = """probes:
  - name: toy
    template: "ab {group} c"
    groups: {one: [de, fg], two: [hi, jk]}
    targets: [x, yz]
"""


def test_bias_writes_json_and_html(cli: typer.Typer, tmp_path: Path) -> None:
    probes = tmp_path / "p.yaml"
    probes.write_text(PROBES)
    res = run(cli, "bias", str(probes), "tiny", "--out", str(tmp_path / "r"), "--n-boot", "50")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["probes"][0]["groups"] == {"one": 2, "two": 2}
    assert data["probes"][0]["components"]["two"]["heads"]
    assert "toy" in (tmp_path / "r.html").read_text() and "'x' vs one" in res.output


def test_attribute_aggregate_and_rules(cli: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    res = run(
        cli,
        "attribute",
        "tiny",
        "hello world",
        "--methods",
        "occlusion,kernel_shap",
        "--n-samples",
        "30",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [a["method"] for a in data["attributions"]] == ["occlusion", "kernel_shap"]
    assert "kernel_shap" in data["agreement"]["occlusion"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "\n".join(
            f"the {w} is not good" if i % 2 else f"a {w} was fine"
            for i, w in enumerate(["cat", "dog", "car", "sky", "sea", "hat"])
        )
    )
    res = run(
        cli, "aggregate", str(prompts), "tiny", "--diff", "tiny2", "--out", str(tmp_path / "d.html")
    )
    assert res.exit_code == 0, res.output
    assert "gained" in res.output and "<svg" in (tmp_path / "d.html").read_text()
    assert cli.calls == ["tiny", "tiny", "tiny2"]  # type: ignore[attr-defined]
    res = run(cli, "rules", str(prompts), "tiny", "--labels", "x,y", "--max-depth", "2")
    assert res.exit_code == 0, res.output
    assert "fidelity" in res.output and "the model answers" in res.output


def test_default_run_with_a_route_check(cli: typer.Typer) -> None:
    res = run(cli, "tiny", "hello there", "--route-check", "--no-saliency")
    assert res.exit_code == 0, res.output
    assert "route check: ablating the" in res.output and "score" in res.output


def test_help_lists_the_subcommands(cli: typer.Typer) -> None:
    res = run(cli, "--help")
    assert res.exit_code == 0
    for name in ("run", "bias", "attribute", "aggregate", "rules"):
        assert name in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bias", "missing.yaml", "tiny"], "does not exist"),
        (["bias", "builtin", "tiny", "--n-boot", "0"], "--n-boot must be a positive integer"),
        (["attribute", "tiny", "hi", "--methods", "gradcam"], "unknown method"),
        (["attribute", "tiny", "hi", "--n-samples", "0"], "--n-samples must be a positive"),
        (["aggregate", "missing.txt", "tiny"], "prompt file"),
    ],
)
def test_bad_input_is_one_line(cli: typer.Typer, args: list[str], message: str) -> None:
    res = run(cli, *args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output and "Traceback" not in res.output
    if args[0] == "bias":
        assert cli.calls == []  # type: ignore[attr-defined]  # refused before loading the model


@pytest.mark.parametrize(
    "args", [["run", "tiny", "hi"], ["attribute", "tiny", "hi", "--methods", "occlusion"]]
)
def test_device_reaches_the_loader(cli: typer.Typer, args: list[str]) -> None:
    res = run(cli, *args, "--device", "cuda:3")
    assert res.exit_code == 0, res.output
    assert cli.devices == ["cuda:3"]  # type: ignore[attr-defined]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_device_without_a_gpu_is_one_line() -> None:
    from lmscope.cli import _register, app

    _register()
    for args in (["run", "tiny-gpt2", "hi"], ["aggregate", __file__, "tiny-gpt2"]):
        res = CliRunner().invoke(app, ["explain", *args, "--device", "cuda"])
        assert res.exit_code == 2, res.output
        assert "no CUDA GPU" in res.output and "Traceback" not in res.output
