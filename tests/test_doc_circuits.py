"""Circuit changes in `doc history` and `doc diff` (--circuits), end to end through the CLI on
two checkpoints of a tiny model: the later one has head L1H0's output weights tripled (it must
gain importance) and head L2H1's zeroed (it must lose all of it). The numbers are checked
against an independent per-prompt computation; stored aggregate results are reused (and shown
to be, by a planted value), stale ones are not; bad input is one error line."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from lmscope.commands import doc, explain
from lmscope.document.diff import history
from lmscope.document.verifier import index_facts, verify_sentence
from lmscope.explain import TraceView, compute_flow, record
from lmscope.explain.heads import head_importance
from lmscope.model.transformer import Transformer
from lmscope.zoo.checkpoint import save_checkpoint
from test_explain_support import tiny_model

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "ran",
    "to",
    "park",
    "when",
    "John",
    "and",
    "Mary",
    "went",
    "store",
    "gave",
    "drink",
]
PROMPTS = [
    "the cat sat on the mat",
    "when John and Mary went to the store John gave a drink to",
    "the dog ran to the park",
    "Mary gave the cat a drink",
]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="[UNK]")


def _edited(model: Transformer) -> Transformer:
    tuned = copy.deepcopy(model)
    hd = model.cfg.head_dim
    with torch.no_grad():
        tuned.blocks[1].attn.out.weight[:, :hd] *= 3.0  # L1H0 gains
        tuned.blocks[2].attn.out.weight[:, hd : 2 * hd] = 0.0  # L2H1 is silenced
    return tuned


@pytest.fixture()
def run(tmp_path: Path) -> dict[str, Any]:
    tok = _tokenizer()
    base = tiny_model("gpt2")
    tuned = _edited(base)
    root = tmp_path / "run"
    save_checkpoint(base, root / "step-00000010", tok)
    save_checkpoint(tuned, root / "step-00000020", tok)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n\n" + "\n".join(PROMPTS[2:]) + "\n")
    return {"root": root, "prompts": prompts, "models": (base, tuned), "tok": tok}


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """lmscope (test)"""

    doc.register(app)
    app.add_typer(explain.explain_app, name="explain")
    return app


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(_cli(), [str(a) for a in args])


def _mean_heads(model: Transformer, tok: Any) -> torch.Tensor:
    """Mean ALTI head importance at the last token, one prompt at a time (no aggregate)."""
    rows = []
    for text in PROMPTS:
        ids = list(tok.encode(text))
        rows.append(head_importance(compute_flow(model, TraceView(model, record(model, ids))), -1))
    return torch.stack(rows).double().mean(0)


def _circuits(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["steps"][0]["circuits"]  # type: ignore[no-any-return]


def test_history_lists_the_heads_that_gained_and_lost(run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "history.json"
    result = _invoke("doc", "history", run["root"], "--circuits", run["prompts"], "-o", out)
    assert result.exit_code == 0, result.output
    text = result.stdout
    gained = re.findall(r"^    gained (L\d+[HN]\d+): ", text, re.M)
    lost = re.findall(r"^    lost (L\d+[HN]\d+): ", text, re.M)
    assert gained[0] == "L1H0" and "L2H1" in lost
    assert re.search(r"lost L2H1: [\d.]+ -> 0 \(-[\d.]+\), on the route for \d+% -> 0%", text)
    assert "circuit changes over the 4 prompt(s)" in text
    facts = _circuits(out)
    expected = _mean_heads(run["models"][1], run["tok"]) - _mean_heads(run["models"][0], run["tok"])
    torch.testing.assert_close(
        torch.tensor(facts["head_delta"]).double(), expected, atol=1e-5, rtol=0
    )
    by_name = {r["component"]: r for r in facts["gained"] + facts["lost"]}
    assert by_name["L1H0"]["delta"] == pytest.approx(float(expected[1, 0]), abs=1e-5)
    assert by_name["L2H1"]["other"] == 0.0 and by_name["L2H1"]["on_route_new"] == 0.0
    assert float(expected[1, 0]) == pytest.approx(float(expected.max()), abs=1e-9)
    # every circuit line states only what the facts hold (the document verifier's rule)
    index = index_facts(facts)
    lines = [ln.strip() for ln in text.splitlines() if ln.startswith("    gained", 0)
             or ln.startswith("    lost")]  # fmt: skip
    assert 6 <= len(lines) <= 12  # at most 3 heads and 3 neurons each way
    for line in lines:
        verdict = verify_sentence(line, index)
        assert verdict.supported, (line, verdict.unsupported)


def test_results_are_cached_whole_and_reused(run: dict[str, Any]) -> None:
    first = _invoke("doc", "history", run["root"], "--circuits", run["prompts"])
    assert first.exit_code == 0 and first.stdout.count("computed, cached in aggregate-") == 2
    late = run["root"] / "step-00000020"
    cached = sorted(late.glob("aggregate-*.json"))
    assert len(cached) == 1 and not [p for p in late.iterdir() if p.name.startswith(".")]
    second = _invoke("doc", "history", run["root"], "--circuits", run["prompts"])
    assert second.stdout.count(f"reused {cached[0].name}") == 2
    strip = re.compile(r" \(circuits: .*\)")
    assert strip.sub("", second.stdout) == strip.sub("", first.stdout)
    # a planted value proves the stored result is read, not recomputed
    data = json.loads(cached[0].read_text())
    data["head_mean"][1][0] = 0.9
    cached[0].write_text(json.dumps(data))
    planted = _invoke("doc", "history", run["root"], "--circuits", run["prompts"])
    assert re.search(r"gained L1H0: [\d.]+ -> 0\.9 ", planted.stdout), planted.stdout
    data["meta"]["lmscope_version"] = "0.0.0-another"  # computed by another lmscope: not reused
    cached[0].write_text(json.dumps(data))
    other = _invoke("doc", "history", run["root"], "--circuits", run["prompts"])
    assert "-> 0.9 " not in other.stdout and "computed, cached in" in other.stdout
    data["meta"].pop("lmscope_version")  # (a result that names no version is judged as is)
    cached[0].write_text(json.dumps(data))
    # newer weights make the stored result stale: computed again
    os.utime(cached[0], ((late / "model.safetensors").stat().st_mtime - 10,) * 2)
    fresh = _invoke("doc", "history", run["root"], "--circuits", run["prompts"])
    assert "-> 0.9 " not in fresh.stdout and strip.sub("", fresh.stdout) == strip.sub(
        "", first.stdout
    )
    heard: list[str] = []
    history(run["root"], circuits=run["prompts"], progress=heard.append)
    assert heard == []  # both stored now
    early = run["root"] / "step-00000010"
    os.utime(next(early.glob("aggregate-*.json")), (0, 0))  # older than the weights
    history(run["root"], circuits=run["prompts"], progress=heard.append)
    assert heard == [f"aggregating 4 prompt(s) on {early}"]


def test_reuses_explain_aggregate_output(run: dict[str, Any], tmp_path: Path) -> None:
    early = run["root"] / "step-00000010"
    made = _invoke("explain", "aggregate", run["prompts"], early, "-o", early / "agg.json")
    assert made.exit_code == 0, made.output
    reference = _invoke("doc", "history", run["root"], "--circuits", run["prompts"])
    assert "reused agg.json" in reference.stdout.splitlines()[1]
    for path in run["root"].rglob("aggregate-*.json"):
        path.unlink()
    (early / "agg.json").unlink()
    assert "heads only, no neuron tables stored for " in reference.stdout
    recomputed = _invoke("doc", "history", run["root"], "--circuits", run["prompts"])
    assert "heads only" not in recomputed.stdout
    heads = re.compile(r"^    (?:gained|lost) L\d+H\d+: .*$", re.M)  # stored with 7 decimals
    assert heads.findall(reference.stdout) == heads.findall(recomputed.stdout)
    assert len(heads.findall(reference.stdout)) >= 3
    # another prompt set of another size does not reuse it
    other = tmp_path / "other.txt"
    other.write_text("the cat\n")
    again = _invoke("explain", "aggregate", run["prompts"], early, "-o", early / "agg.json")
    assert again.exit_code == 0
    result = _invoke("doc", "history", run["root"], "--circuits", other)
    assert result.exit_code == 0 and "reused agg.json" not in result.stdout
    # nor does another prompt set of the same size: `explain aggregate` records its prompts' hash
    lines = [line for line in Path(run["prompts"]).read_text().splitlines() if line.strip()]
    stored = json.loads((early / "agg.json").read_text())["meta"]
    assert stored["prompts_sha256"] == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    same_size = tmp_path / "same_size.txt"
    same_size.write_text("".join(f"{line} again\n" for line in lines))
    result = _invoke("doc", "history", run["root"], "--circuits", same_size)
    assert result.exit_code == 0 and "reused agg.json" not in result.stdout


def test_diff_with_circuits(run: dict[str, Any], tmp_path: Path) -> None:
    a, b = run["root"] / "step-00000010", run["root"] / "step-00000020"
    out = tmp_path / "diff.json"
    result = _invoke("doc", "diff", a, b, "--no-probe", "--circuits", run["prompts"],
                     "--circuit-top", "1", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    facts = json.loads(out.read_text())["circuits"]
    assert [r["component"] for r in facts["gained"]] == ["L1H0", facts["gained"][1]["component"]]
    assert (
        facts["gained"][1]["component"].startswith("L") and "N" in facts["gained"][1]["component"]
    )
    assert "gained L1H0:" in result.stdout and facts["n_prompts"] == 4
    page = tmp_path / "history.html"
    result = _invoke("doc", "history", run["root"], "--circuits", run["prompts"], "-o", page)
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert html.count("<rect") == 3 * 4 and "<title>L1H0: +0.4" in html
    assert "gained L1H0:" in html and "<script" not in html


def _error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return str(lines[0])


def test_bad_input_is_one_line(run: dict[str, Any], tmp_path: Path) -> None:
    root, prompts = run["root"], run["prompts"]
    assert "does not exist" in _error(
        _invoke("doc", "history", root, "--circuits", tmp_path / "nope.txt")
    )
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert "holds no prompts" in _error(
        _invoke("doc", "history", root, "--circuits", tmp_path / "blank.txt")
    )
    assert "at least 1" in _error(
        _invoke("doc", "history", root, "--circuits", prompts, "--circuit-top", "0")
    )
    wide = tiny_model("gpt2", n_layers=2)
    save_checkpoint(wide, tmp_path / "wide", run["tok"])
    early = root / "step-00000010"
    line = _error(
        _invoke("doc", "diff", early, tmp_path / "wide", "--no-probe", "--circuits", prompts)
    )
    assert "3 layers x 4 heads" in line and "heads cannot be compared" in line
    save_checkpoint(wide, root / "step-00000030", run["tok"])  # the history goes on past it
    grown = _invoke("doc", "history", root, "--circuits", prompts)
    assert grown.exit_code == 0, grown.output
    assert "- circuits: not compared (" in grown.stdout and "cannot be compared" in grown.stdout
    save_checkpoint(run["models"][0], tmp_path / "bare")  # no tokenizer
    bare = _invoke("doc", "diff", tmp_path / "bare", early, "--no-probe", "--circuits", prompts)
    assert "no tokenizer" in _error(bare)
    facts = tmp_path / "facts.json"
    assert _invoke("doc", "facts", early, "--no-probe", "-o", facts).exit_code == 0
    from_facts = _invoke("doc", "diff", facts, early, "--no-probe", "--circuits", prompts)
    assert "is a facts file; --circuits needs a model lmscope can run" in _error(from_facts)
    (tmp_path / "long.txt").write_text(" ".join(["the cat"] * 40) + "\n")
    assert "long" in _error(_invoke("doc", "history", root, "--circuits", tmp_path / "long.txt"))
