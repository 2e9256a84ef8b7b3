"""Evaluation runs on a tiny model: windows against a brute-force per-token computation, batching
against one window per forward, every task kind, compare, the CLI, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import build_tiny_tokenizer
from lmscope.evaluate.compare import compare_reports
from lmscope.evaluate.errors import EvalError
from lmscope.evaluate.loglik import Window, rolling_windows, score_windows
from lmscope.evaluate.runner import run_tasks
from lmscope.evaluate.tasks import TaskSpec, load_tasks
from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo.registry import LoadedModel


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tiny_tokenizer()


def _lm(tokenizer, seed: int) -> LoadedModel:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=len(tokenizer), d_model=32, n_layers=2, n_heads=4, n_ctx=64)
    return LoadedModel(f"tiny{seed}", Transformer(cfg).eval(), tokenizer, "memory")


@pytest.mark.parametrize("stride", [None, 3, 5])
@pytest.mark.parametrize("prefix", [7, None])
def test_windows_score_every_token_once_with_the_right_context(
    tokenizer, stride: int | None, prefix: int | None
) -> None:  # type: ignore[no-untyped-def]
    """Brute force: each token's log-prob from a separate forward over exactly the context the
    window definition gives it (disjoint: back to its window's start; sliding: at least
    window - stride + 1 tokens)."""
    model = _lm(tokenizer, 0).model
    ids = list(range(20, 43))
    window = 6
    windows = rolling_windows(ids, window, prefix, owner=0, stride=stride)
    tokens = ([prefix] if prefix is not None else []) + ids
    scored = [t for w in windows for t in w.targets]
    assert scored == tokens[1:]
    assert all(len(w.inputs) <= window for w in windows)
    got = torch.cat(score_windows(model, windows, token_budget=16))
    expected = []
    position = 1
    for w in windows:
        for k in range(w.n_scored):
            end = position + k  # predicting tokens[end]
            inputs_end = len(w.inputs) - w.n_scored + k + 1
            context = list(w.inputs[:inputs_end])
            assert context == tokens[end - len(context) : end]
            if stride is None:  # back to the window's start
                assert len(context) == k + 1
            else:  # at least window - stride + 1 tokens, or all there are
                assert len(context) >= min(end, window - stride + 1)
            with torch.inference_mode():
                logits = model(torch.tensor([context]))[0, -1].double()
            expected.append(torch.log_softmax(logits, -1)[tokens[end]])
        position += w.n_scored
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)


def test_batched_windows_equal_one_window_per_forward(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _lm(tokenizer, 1).model
    windows = [
        Window(tuple(range(5, 5 + n)), tuple(range(30, 30 + min(n, 3))), owner=i)
        for i, n in enumerate([9, 4, 12, 1, 7])
    ]
    batched = score_windows(model, windows, token_budget=64)
    single = score_windows(model, windows, token_budget=1)
    for a, b in zip(batched, single, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


TASKS = """
tasks:
  - name: ppl
    kind: perplexity
    window: 8
    items:
      - text: "The quick brown fox jumps over the lazy dog."
      - text: "To be, or not to be, that is the question."
      - text: "In the beginning God created the heaven and the earth."
  - name: cls
    kind: classification
    labels: [fox, dog]
    items:
      - {prompt: "The quick brown", label: fox}
      - {prompt: "over the lazy", label: dog}
      - {prompt: "jumps over the", label: dog}
      - {prompt: "brown", label: fox}
  - name: gen
    kind: generation
    max_tokens: 6
    items:
      - {prompt: "The quick", reference: "brown fox jumps"}
      - {prompt: "To be, or", reference: "not to be"}
  - name: qa
    kind: qa
    max_tokens: 4
    items:
      - {prompt: "Who jumps? The", reference: "fox"}
      - {prompt: "Who sleeps? The", reference: "dog"}
"""


@pytest.fixture()
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.yaml"
    path.write_text(TASKS)
    return path


def test_every_task_kind_reports_values_intervals_and_counts(tokenizer, task_file) -> None:  # type: ignore[no-untyped-def]
    lm = _lm(tokenizer, 0)
    report = run_tasks(lm, load_tasks(task_file))
    tasks = {t["name"]: t for t in report["tasks"]}
    assert set(tasks) == {"ppl", "cls", "gen", "qa"}
    for task in tasks.values():
        assert task["data_hash"].startswith("sha256:")
        for metric in task["metrics"].values():
            low, high = metric["ci95"]
            assert low <= metric["value"] + 1e-9 and metric["value"] <= high + 1e-9
            assert metric["n"] == task["n_items"]
    ppl = tasks["ppl"]
    ll = sum(r["ll"] for r in ppl["items"])
    n_bytes = sum(r["bytes"] for r in ppl["items"])
    assert ppl["metrics"]["bits_per_byte"]["value"] == pytest.approx(-ll / n_bytes / math.log(2))
    cls = tasks["cls"]
    for record in cls["items"]:  # predicted label = the label with the higher log-likelihood
        best = max(range(2), key=lambda j: record["label_logliks"][j])
        assert record["predicted"] == ["fox", "dog"][best]
    assert sum(map(sum, cls["details"]["confusion"]["counts"])) == 4
    assert "signature" in tasks["gen"]["metrics"]["bleu"]
    json.dumps(report)  # JSON-ready


def test_compare_pairs_items_and_notes_different_tokenizers(tokenizer, task_file) -> None:  # type: ignore[no-untyped-def]
    specs = load_tasks(task_file)
    a = run_tasks(_lm(tokenizer, 0), specs)
    b = run_tasks(_lm(tokenizer, 1), specs)
    comparison = compare_reports(a, b)
    ppl = next(t for t in comparison["tasks"] if t["name"] == "ppl")
    bpb = next(d for d in ppl["differences"] if d["metric"] == "bits_per_byte")
    assert bpb["difference"] == pytest.approx(bpb["b"] - bpb["a"])
    assert ppl["notes"] == []
    other = build_tiny_tokenizer(vocab_size=280)
    c = run_tasks(LoadedModel("other", _lm(other, 2).model, other, "memory"), specs[:1])
    notes = compare_reports(a, c)["tasks"][0]
    assert "different tokenizers" in notes["notes"][0]
    assert {d["metric"] for d in notes["differences"]} == {"bits_per_byte", "byte_perplexity"}
    changed = dict(b)
    changed["tasks"] = [dict(b["tasks"][0], data_hash="sha256:0000")]
    with pytest.raises(EvalError, match="different data"):
        compare_reports(a, changed)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("tasks: [", "not valid YAML"),
        ("name: x\nkind: perplexity\n", "exactly one of `data`"),
        ("name: x\nkind: classification\nlabels: [a]\nitems: [{prompt: p, label: a}]\n", "two"),
        ("name: x\nkind: qa\nitems: [{prompt: p}]\n", "no text in field 'reference'"),
        ("name: x\nkind: perplexity\ndata: missing.txt\n", "does not exist"),
        ("name: x\nkind: qa\nbogus: 1\nitems: []\n", "bogus"),
        ("out_dir: runs/tiny\nmodel: {d_model: 128}\n", "is not a task file"),
    ],
)
def test_bad_task_files_give_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(text)
    with pytest.raises(EvalError, match=message):
        for spec in load_tasks(path):
            spec.load_items()


def test_label_that_tokenizes_to_nothing(tokenizer) -> None:  # type: ignore[no-untyped-def]
    spec = TaskSpec(
        name="c", kind="classification", labels=["", "x"], label_prefix="",
        items=[{"prompt": "a", "label": "x"}],
    )  # fmt: skip
    with pytest.raises(EvalError, match="tokenizes to nothing"):
        run_tasks(_lm(tokenizer, 0), [spec])


def test_text_file_means_its_perplexity(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("some notes\n")
    (spec,) = load_tasks(path)
    assert spec.kind == "perplexity"
    assert spec.load_items() == [{"text": "some notes\n"}]


def test_cli_eval_and_compare(tiny_checkpoint: Path, task_file: Path, tmp_path: Path) -> None:
    from lmscope.cli import _register, app

    _register()
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", str(tiny_checkpoint), str(task_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "bits_per_byte = " in result.output and "95% CI" in result.output
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    result = runner.invoke(
        app,
        ["compare", str(out / "report.json"), str(tiny_checkpoint), str(task_file),
         "--out", str(tmp_path / "cmp")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    comparison = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert all(d["difference"] == 0 for t in comparison["tasks"] for d in t["differences"])
    assert report["tasks"][0]["n_items"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [")
    result = runner.invoke(app, ["eval", str(tiny_checkpoint), str(bad)])
    assert result.exit_code == 2
    assert "not valid YAML" in result.output and "Traceback" not in result.output


def test_endpoint_backend_agrees_with_the_local_model(
    tiny_checkpoint: Path, task_file: Path
) -> None:
    """The same tasks through a real lmscope server (echo + logprobs on token-id prompts)."""
    from lmscope.evaluate.backends import EndpointBackend, endpoint_tokenizer
    from lmscope.zoo.registry import load
    from serve_support import tiny_server

    specs = load_tasks(task_file)
    local = run_tasks(load(tiny_checkpoint), specs)
    with tiny_server(tiny_checkpoint, max_seq_len=256) as base:
        backend = EndpointBackend(base, "tiny", endpoint_tokenizer(str(tiny_checkpoint)), 256, None)
        remote = run_tasks(backend, specs)
    for ours, theirs in zip(local["tasks"], remote["tasks"], strict=True):
        assert ours["data_hash"] == theirs["data_hash"]
        if ours["kind"] == "perplexity":
            for a, b in zip(ours["items"], theirs["items"], strict=True):
                assert a["ll"] == pytest.approx(b["ll"], abs=1e-3) and a["tokens"] == b["tokens"]
        elif ours["kind"] == "classification":
            assert [r["predicted"] for r in ours["items"]] == [
                r["predicted"] for r in theirs["items"]
            ]
        else:
            assert [r["output"] for r in ours["items"]] == [r["output"] for r in theirs["items"]]


def test_torchrun_shards_give_the_single_process_results(
    tiny_checkpoint: Path, task_file: Path, tmp_path: Path
) -> None:
    """`torchrun --nproc-per-node 2 lmscope eval ...` against one process, item by item."""
    import os
    import shutil
    import subprocess
    import sys

    lmscope = shutil.which("lmscope", path=str(Path(sys.executable).parent))
    assert lmscope is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run(
        [lmscope, "eval", str(tiny_checkpoint), str(task_file), "--out", str(one)],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    two = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(_free_port()), lmscope, "eval", str(tiny_checkpoint),
         str(task_file), "--out", str(two)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    a = json.loads((one / "report.json").read_text())
    b = json.loads((two / "report.json").read_text())
    for ta, tb in zip(a["tasks"], b["tasks"], strict=True):
        for ra, rb in zip(ta["items"], tb["items"], strict=True):
            if "ll" in ra:
                assert ra["ll"] == pytest.approx(rb["ll"], abs=1e-5)
            else:
                assert {k: v for k, v in ra.items() if k != "label_logliks"} == {
                    k: v for k, v in rb.items() if k != "label_logliks"
                }
        for name, metric in ta["metrics"].items():
            assert metric["value"] == pytest.approx(tb["metrics"][name]["value"], rel=1e-6)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
