"""A training session as a user meets it: the start banner, Ctrl-C (save, say how to resume,
resume exactly), the test loss at the end, an ETA that knows max_minutes, max_minutes across
resumes, samples of a fine-tune in its own chat format, and which layers train/ and data/ import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmscope.data.instruct import encode_instruction
from lmscope.data.prepare import PrepareConfig, prepare
from lmscope.data.tokenizer import SpecialTokens, train_bpe
from lmscope.train.config import config_from_dict
from lmscope.train.loop_state import Callback
from lmscope.train.sampling import PromptFormat
from lmscope.train.session import projected_total
from lmscope.train.trainer import Trainer
from train_support import corpus, prepared_data, with_sections

CHATML = ["<|im_start|>", "<|im_end|>"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _text() -> str:
    return corpus(20_000)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("session-data"), 20_000, tokenizer="char")


def tiny(data_dir: Path, out_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "out_dir": str(out_dir),
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
        "data": {"dir": str(data_dir), "context": 32},
        "train": {"max_steps": 6, "batch_size": 4, "seed": 3},
        "eval": {"every": 0, "batches": 2},
        "checkpoint": {"every": 0, "keep_last": 3},
        "log": {"tensorboard": False, "progress": False, "mlflow": "off"},
    }
    return with_sections(base, **sections)


# ---- Ctrl-C ----------------------------------------------------------------------------------------


class CtrlCAfter(Callback):
    """Sends this process SIGINT, as a terminal's Ctrl-C would, after optimizer step `at`."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer: Any, step: int, loss: float) -> None:
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_at_a_step_boundary_and_resumes_exactly(
    data_dir: Path, tmp_path: Path
) -> None:
    straight = Trainer(config_from_dict(tiny(data_dir, tmp_path / "straight"))).run()
    cut = config_from_dict(tiny(data_dir, tmp_path / "cut"))
    stopped = Trainer(cut, callbacks=[CtrlCAfter(3)]).run()
    assert stopped.interrupted and stopped.model_dir is None
    assert stopped.checkpoint == tmp_path / "cut" / "checkpoints" / "step-00000003"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler removed
    resumed = Trainer(cut).run()
    assert not resumed.interrupted and resumed.record["resumed_from_steps"] == [3]
    assert resumed.record["final"]["train_loss"] == straight.record["final"]["train_loss"]
    assert straight.model_dir is not None and resumed.model_dir is not None
    a = load_file(str(straight.model_dir / "model.safetensors"))
    b = load_file(str(resumed.model_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait_for(path: Path, process: subprocess.Popen[str], limit_s: float = 240.0) -> None:
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"training never wrote {path}:\n{out}\n{err}")
        time.sleep(0.2)


def test_sigint_to_python_m_lmscope_train_saves_and_says_how_to_resume(
    data_dir: Path, tmp_path: Path
) -> None:
    config = tiny(
        data_dir,
        tmp_path / "run",
        train={"max_steps": 100_000},
        checkpoint={"every": 2},
        log={"progress": True},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "lmscope.train", str(path), "optim.lr=0.002"]
    child = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(tmp_path / "run" / "checkpoints" / "latest.json", child)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=240)
    assert child.returncode == 130, err
    # the banner: model, parameters, data, device, threads (the trainer's own OpenMP policy)
    assert "model: scratch (1 layers, d_model 32" in out and "parameters" in out
    assert f"data: {data_dir}" in out and "train tokens" in out
    assert "device: cpu, fp32; 1 thread (OpenMP wait policy PASSIVE)" in out
    step = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"]
    saved = tmp_path / "run" / "checkpoints" / f"step-{step:08d}"
    assert f"interrupted at step {step}; saved {saved}" in err
    assert "run the same command again: " in err
    assert f"-m lmscope.train {path} optim.lr=0.002" in err
    assert "Traceback" not in err
    # the same command resumes (a user's own wait policy is kept)
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    done = subprocess.run(
        [*command, f"train.max_steps={step + 2}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert f"resumed from {saved} at step {step}" in done.stdout
    assert "OpenMP wait policy ACTIVE" in done.stdout
    assert f"trained to step {step + 2} (max_steps)" in done.stderr
    assert "test loss" in done.stderr and "test loss" in done.stdout


# ---- banner, test loss, max_minutes ----------------------------------------------------------------


def test_test_loss_is_printed_and_recorded(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = Trainer(config_from_dict(tiny(data_dir, tmp_path / "r", log={"progress": True}))).run()
    test_loss = result.record["final"]["test_loss"]
    assert test_loss is not None and result.record["final"]["test_perplexity"] > 1
    out = capsys.readouterr().out
    assert f"test loss {test_loss:.4f}" in out
    assert "model: scratch" in out and " thread" in out


def test_projected_total_follows_the_time_budget() -> None:
    # 10 steps done in 60 s of a 120 s budget at 6 s a step: 10 more steps, not 1000
    assert projected_total(10, 1000, used_s=60, limit_s=120, s_per_step=6) == 20
    assert projected_total(10, 15, used_s=60, limit_s=120, s_per_step=6) == 15  # steps first
    assert projected_total(10, 1000, used_s=60, limit_s=None, s_per_step=6) == 1000
    assert projected_total(10, 1000, used_s=130, limit_s=120, s_per_step=6) == 10  # spent
    assert projected_total(10, 1000, used_s=60, limit_s=120, s_per_step=None) == 1000


def test_max_minutes_is_a_budget_across_resumes(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "budget"
    first = Trainer(config_from_dict(tiny(data_dir, out_dir, train={"max_steps": 4}))).run()
    assert first.record["wall_time_s"] > 1e-6 * 60
    # a budget the first session already spent: the resumed run trains no further step
    again = tiny(data_dir, out_dir, train={"max_steps": 8, "max_minutes": 1e-6})
    again["log"]["progress"] = True
    second = Trainer(config_from_dict(again)).run()
    assert second.record["final"]["step"] == 4
    assert second.record["final"]["stopped"] == "max_minutes"
    assert "was used up by earlier sessions" in capsys.readouterr().out


# ---- samples of a fine-tune in its own format -------------------------------------------------------


def test_chat_samples_use_the_training_format() -> None:
    tok = train_bpe([_text()[:5000]], vocab_size=320, specials=SpecialTokens(extra=CHATML))
    manifest = {"kind": "instruction", "tokenizer": {"template": "chatml"}}
    chat = PromptFormat.choose("auto", manifest, tok)
    prompt = "Complete this verse:\nIn the beginning"
    ids, stops = chat.encode(prompt, tok)
    trained, mask = encode_instruction({"prompt": prompt, "completion": " God"}, tok, "chatml")
    assert trained[: len(ids)] == ids  # exactly the prompt the model learned to answer
    assert mask[: len(ids)] == [0] * len(ids) and mask[len(ids)] == 1  # the reply starts here
    assert tok.token_id("<|im_end|>") in stops
    # raw prompts (chat off, or text data) parse the special tokens written in them
    raw = PromptFormat.choose(False, manifest, tok)
    assert raw.template is None
    ids, _ = raw.encode("<|im_start|>user\nhi", tok)
    assert ids[0] == tok.token_id("<|im_start|>")
    assert PromptFormat.choose("auto", {"kind": "text"}, tok).template is None
    plain = PromptFormat.choose(
        "auto", {"kind": "instruction", "tokenizer": {"template": "plain"}}, tok
    )
    assert plain.encode(prompt, tok)[0] == tok.encode(prompt)


# ---- import direction --------------------------------------------------------------------------------


def test_data_and_train_never_import_the_cli_or_the_server() -> None:
    code = r"""
import importlib, pkgutil, sys
import lmscope.data, lmscope.train
for package in (lmscope.data, lmscope.train):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
import lmscope.train.__main__  # the torchrun entry point, imported without running
bad = sorted(m for m in sys.modules if m.startswith(("lmscope.commands", "lmscope.serve", "lmscope.cli", "lmscope.ui")))
print(",".join(bad))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"data/train imported: {done.stdout.strip()}"


def test_a_chatml_fine_tune_samples_in_its_format(tmp_path: Path) -> None:
    lines = [line for line in _text().splitlines() if line.strip()]
    pairs = [
        {"prompt": a, "completion": " " + b}
        for a, b in zip(lines[0:200:2], lines[1:200:2], strict=True)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in pairs))
    data = tmp_path / "data"
    prepare(
        PrepareConfig(
            inputs=[str(path)],
            out=str(data),
            vocab_size=320,
            special_tokens=SpecialTokens(extra=CHATML),
            progress=False,
        )
    )
    config = tiny(data, tmp_path / "run", train={"max_steps": 2}, sample={"prompts": [lines[0]]})
    config["data"]["pack"] = False
    trainer = Trainer(config_from_dict(config))
    result = trainer.run()
    assert trainer.prompt_format.template == "chatml"  # from the data's manifest
    assert [s["prompt"] for s in result.record["metrics"]["samples"]] == [lines[0]]


def test_threads_line_counts_one_thread_in_the_singular(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from lmscope.train.session import threads_line

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert threads_line() == "1 thread (OpenMP wait policy PASSIVE)"
        torch.set_num_threads(2)
        assert threads_line() == "2 threads (OpenMP wait policy PASSIVE)"
    finally:
        torch.set_num_threads(before)
