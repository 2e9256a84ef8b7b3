"""`--quantize int8` on generate, eval and serve: the int8 weights are used, and an impossible
request is one `error:` line before anything is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lmscope.engine import generate
from lmscope.model.quantized import (
    dequantized_copy,
    quantize_for_decoding,
    quantized_engine_available,
    served_for_explaining,
)
from lmscope.zoo.checkpoint import load_checkpoint, save_checkpoint
from test_generate_fixtures import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.skipif(not quantized_engine_available(), reason="no quantized kernels")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny")
    save_checkpoint(tiny_model(), directory, tokenizer=tiny_tokenizer())
    return directory


def invoke(*args: str) -> tuple[int, str]:
    from lmscope.cli import _register, app

    _register()
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_generate_streams_what_the_int8_model_generates(checkpoint: Path) -> None:
    args = ["generate", str(checkpoint), "The quick brown", "-n", "8", "--temperature", "0"]
    code, out = invoke(*args, "--quantize", "int8", "--no-stats")
    assert code == 0, out
    model, tok = load_checkpoint(checkpoint)
    expected = generate(quantize_for_decoding(model), tok, "The quick brown", max_new_tokens=8,
                        temperature=0)  # fmt: skip
    assert out == expected.text + "\n"


def test_eval_scores_the_int8_weights_and_says_so(checkpoint: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4)
    reports = []
    for extra in ([], ["--quantize", "int8"]):
        out = tmp_path / f"out{len(extra)}"
        code, output = invoke("eval", str(checkpoint), str(text), "--out", str(out), *extra)
        assert code == 0, output
        reports.append(json.loads((out / "report.json").read_text()))
    assert "weights" not in reports[0]["model"] and reports[1]["model"]["weights"] == "int8"
    fp32, int8 = (r["tasks"][0]["metrics"]["bits_per_byte"]["value"] for r in reports)
    assert fp32 != int8 and abs(int8 / fp32 - 1) < 0.05


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quantize", "int4"], "cannot quantize to 'int4': supported is int8 weights"),
        (["--quantize", "int8", "--dtype", "bfloat16"], "cannot quantize a bfloat16 model"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "serve"])
def test_impossible_quantization_is_one_line(
    checkpoint: Path, command: str, args: list[str], message: str
) -> None:
    where = [str(checkpoint), "hi"] if command == "generate" else ["--model", str(checkpoint)]
    code, out = invoke(command, *where, *args)
    assert code == 2 and out.startswith("error: ") and message in out, out
    assert "Traceback" not in out and out.count("\n") == 1


def test_explain_explains_the_served_int8_weights_and_says_so(checkpoint: Path) -> None:
    from lmscope.explain import explain
    from lmscope.zoo.registry import load

    code, output = invoke(
        "explain", "run", str(checkpoint), "The quick brown fox", "--quantize", "int8",
        "--no-saliency",
    )  # fmt: skip
    assert code == 0, output
    assert "(int8, dequantized)" in output
    loaded = served_for_explaining(load(str(checkpoint)), "int8")
    ex = explain(loaded, "The quick brown fox", saliency=False).to_dict()
    assert ex["model"].endswith("(int8, dequantized)")
    model, tok = load_checkpoint(checkpoint)
    served = quantize_for_decoding(model)
    ids = torch.tensor([tok.encode("The quick brown fox")])
    with torch.inference_mode():
        want = dequantized_copy(served)(ids)[0, -1].softmax(-1)
    top = ex["prediction"][0]
    assert abs(top["prob"] - want.max().item()) < 1e-4 and top["token"] == want.argmax().item()
