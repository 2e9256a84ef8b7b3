"""Exact resume: a run killed with SIGKILL (between checkpoints, and in the middle of writing one)
and resumed ends with exactly the same losses and weights as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from train_support import prepared_data

# Runs a training config (JSON in argv[1]); kills itself with SIGKILL at the moment argv[2] names:
# "step:N" right after optimizer step N, "checkpoint:N" halfway through writing checkpoint N.
CHILD = r"""
import json, os, signal, sys
import torch
import lmscope.train.state as state
from lmscope.train.config import config_from_dict
from lmscope.train.trainer import Callback, Trainer

config = config_from_dict(json.loads(sys.argv[1]))
kind, _, at = sys.argv[2].partition(":")
at = int(at or -1)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class KillAfterStep(Callback):
    def on_step_end(self, trainer, step, loss):
        if kind == "step" and step == at:
            die()

write_state = state.write_trainer_state
def write_then_die(directory, data):
    if kind == "checkpoint" and data["step"] == at:
        die()  # optimizer and weights are on disk, trainer_state.json never is
    write_state(directory, data)
state.write_trainer_state = write_then_die

result = Trainer(config, callbacks=[KillAfterStep()]).run()
print("RESULT " + json.dumps(result.record["final"]))
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("resume-data"), 20_000, vocab_size=320)


def config(data_dir: Path, out_dir: Path) -> dict[str, Any]:
    return {
        "out_dir": str(out_dir),
        "model": {
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "dropout": 0.1,
        },  # dropout uses the RNG
        "data": {"dir": str(data_dir), "context": 32},
        "train": {"max_steps": 24, "batch_size": 4, "grad_accum": 2, "seed": 7},
        "optim": {"lr": 3e-3, "grad_clip": 0.5},
        "schedule": {"kind": "cosine", "warmup_steps": 3},
        "eval": {"every": 4, "batches": 2},
        "checkpoint": {"every": 5, "keep_last": 2},
        "log": {"every": 3, "tensorboard": False, "progress": False, "mlflow": "off"},
        "sample": {"prompts": ["A"], "max_new_tokens": 4, "every_evals": 2},
    }


def launch(cfg: dict[str, Any], kill: str, script: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), json.dumps(cfg), kill],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def final_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


def test_sigkill_and_resume_matches_an_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    straight = final_of(launch(config(data_dir, tmp_path / "straight"), "none", script))

    out = tmp_path / "killed"
    cfg = config(data_dir, out)
    first = launch(cfg, "step:13", script)  # after checkpoint 10, during the work towards 15
    assert first.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == [
        "step-00000005",
        "step-00000010",
    ]

    second = launch(cfg, "checkpoint:15", script)  # resumes from 10, dies writing 15
    assert second.returncode == -signal.SIGKILL
    assert not (out / "checkpoints" / "step-00000015").exists()  # never half-written
    assert list((out / "checkpoints").glob(".tmp-step-00000015-*"))  # the abandoned temp dir

    resumed = final_of(launch(cfg, "none", script))  # resumes from 10 again, to the end
    assert resumed == straight  # train, val and test losses, bit for bit
    assert resumed["step"] == 24

    record = json.loads((out / "training_record.json").read_text())
    assert record["resumed_from_steps"] == [10]  # both resumes restarted from step 10's state
    straight_record = json.loads((tmp_path / "straight" / "training_record.json").read_text())
    assert record["metrics"]["train"] == [
        {**entry, "tokens_per_s": record["metrics"]["train"][i]["tokens_per_s"]}
        for i, entry in enumerate(straight_record["metrics"]["train"])
    ]
    assert record["metrics"]["eval"] == straight_record["metrics"]["eval"]
    assert record["metrics"]["samples"] == straight_record["metrics"]["samples"]
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not list((out / "checkpoints").glob(".tmp-*"))  # cleaned up by the next save
