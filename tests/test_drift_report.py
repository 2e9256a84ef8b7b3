"""`lmscope drift report`: the HTML page draws both distributions over the same bins (bar
heights proportional to the shares), from a saved snapshot or offline from a reference."""

from __future__ import annotations

import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from lmscope.commands.drift import register
from lmscope.engine.observer import RequestRecord
from lmscope.serve.drift import DriftMonitor, DriftSettings
from lmscope.serve.drift_reference import ReferenceProfile
from lmscope.serve.drift_report import HEIGHT, PAD, render_report
from test_drift_server import kjv_split, lines


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep `drift` a subcommand group
    return app


def snapshot() -> dict:  # type: ignore[type-arg]
    rng = random.Random(1)
    profile = ReferenceProfile(
        source="ref.txt",
        prompt_tokens=[float(rng.randint(10, 50)) for _ in range(100)],
        prompt_logprob=[rng.gauss(-3, 0.5) for _ in range(100)],
        rare_token_share=[0.0] * 100,
        token_counts=np.ones(50, dtype=np.int64),
    )
    monitor = DriftMonitor("m<1>", profile, DriftSettings("ref.txt", window=40, min_samples=20))
    for i in range(90):
        ids = list(range(rng.randint(60, 90) if i >= 50 else rng.randint(10, 50)))
        monitor.on_request("m", RequestRecord(ids, rng.gauss(-3, 0.5), 3, "stop"))
    return {
        "object": "drift",
        "drift": True,
        "thresholds": {"psi": 0.25, "ks_alpha": 0.01, "min_samples": 20},
        "models": [monitor.snapshot()],
    }


class Rects(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svgs = 0
        self.bars: list[list[tuple[str, float]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.svgs += 1
            self.bars.append([])
        elif tag == "rect" and a.get("height") and float(a["y"] or 0) > 20:
            self.bars[-1].append((str(a["fill"]), float(a["height"] or 0)))


def test_report_draws_reference_and_current_shares_side_by_side() -> None:
    snap = snapshot()
    page = render_report(snap)
    parser = Rects()
    parser.feed(page)
    signals = snap["models"][0]["signals"]
    assert parser.svgs == sum(1 for s in signals if s.get("histogram"))
    assert "m&lt;1&gt;" in page and "<script" not in page  # escaped, no script, no network
    tokens = next(s for s in signals if s["name"] == "prompt_tokens")
    assert tokens["drift"] and "DRIFT" in page
    bars = parser.bars[0]
    ref = [h for fill, h in bars if fill == "#4a7ab7"]
    cur = [h for fill, h in bars if fill == "#e08a2c"]
    hist = tokens["histogram"]
    top = max(hist["reference"] + hist["current"])
    assert ref == pytest.approx([(HEIGHT - PAD) * s / top for s in hist["reference"]], abs=0.06)
    assert cur == pytest.approx([(HEIGHT - PAD) * s / top for s in hist["current"]], abs=0.06)


def test_cli_report_from_a_saved_snapshot_and_bad_inputs(tmp_path: Path) -> None:
    saved = tmp_path / "drift.json"
    saved.write_text(json.dumps(snapshot()))
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli(), ["drift", "report", str(saved), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "drift detected" in result.output and out.read_text().startswith("<!doctype html>")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = CliRunner().invoke(cli(), ["drift", "report", str(bad)])
    assert result.exit_code == 2 and "is not a GET /v1/drift answer" in result.output
    result = CliRunner().invoke(cli(), ["drift", "report"])
    assert result.exit_code == 2 and "--reference and --prompts" in result.output


def test_offline_report_flags_shakespeare_against_kjv(
    tiny_checkpoint: Path, shared_data: Path, tmp_path: Path
) -> None:
    verses, held_out = kjv_split(shared_data, 300, 60)
    reference, same, other = tmp_path / "ref.txt", tmp_path / "same.txt", tmp_path / "other.txt"
    reference.write_text("\n".join(verses) + "\n")
    same.write_text("\n".join(held_out) + "\n")
    other.write_text("\n".join(lines(shared_data / "tinyshakespeare.txt", 0, 60)) + "\n")
    verdicts = {}
    for name, prompts in (("same", same), ("other", other)):
        out = tmp_path / f"{name}.html"
        args = ["drift", "report", "--reference", str(reference), "--prompts", str(prompts)]
        args += ["--model", str(tiny_checkpoint), "--out", str(out)]
        result = CliRunner().invoke(cli(), args)
        assert result.exit_code == 0, result.output
        verdicts[name] = result.output
        assert re.search(r"<svg", out.read_text())
        assert "completion_tokens" not in out.read_text()  # offline: prompt signals only
    assert "no drift" in verdicts["same"] and "drift detected" in verdicts["other"]


@pytest.mark.slow
def test_smollm2_log_likelihood_flags_shifted_text(shared_data: Path, tmp_path: Path) -> None:
    """On a real model the prompt log-likelihood itself separates held-out KJV verses from
    Tiny Shakespeare and from random token soup."""
    from lmscope.commands.drift import offline_snapshot
    from lmscope.zoo.registry import load

    tok = load("smollm2-135m").tokenizer
    verses, held_out = kjv_split(shared_data, 120, 60)
    rng = random.Random(0)
    soup = [
        tok.decode([rng.randrange(len(tok)) for _ in range(rng.randint(15, 40))]).replace("\n", " ")
        for _ in range(60)
    ]
    files = {"reference": verses, "same": held_out, "soup": soup}
    files["shakespeare"] = lines(shared_data / "tinyshakespeare.txt", 0, 60)
    for name, texts in files.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(texts) + "\n")
    logprob = {}
    for name in ("same", "shakespeare", "soup"):
        snap = offline_snapshot(
            str(tmp_path / "reference.txt"), str(tmp_path / f"{name}.txt"), "smollm2-135m"
        )
        (model,) = snap["models"]
        logprob[name] = next(s for s in model["signals"] if s["name"] == "prompt_logprob")
    assert not logprob["same"]["drift"], logprob["same"]
    assert logprob["shakespeare"]["drift"] and logprob["soup"]["drift"]
    assert logprob["soup"]["mean_current"] < logprob["shakespeare"]["mean_current"]
