"""Fine-tuning the real default model (slow: loads SmolLM2-135M; run with -m slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lmscope.data.prepare import PrepareConfig, prepare
from lmscope.train.config import config_from_dict
from lmscope.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
KJV = ROOT / ".." / "shared" / "data" / "kjv.txt"


@pytest.mark.slow
def test_lora_finetune_of_smollm2_lowers_validation_loss(tmp_path: Path) -> None:
    from lmscope.zoo import registry

    sys.path.insert(0, str(ROOT / "examples"))
    from make_instructions import make_pairs

    pairs = make_pairs(KJV.read_text().splitlines()[:3000], 120, seed=1)
    (tmp_path / "verses.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    manifest = prepare(
        PrepareConfig(
            inputs=[str(tmp_path / "verses.jsonl")],
            out=str(tmp_path / "data"),
            tokenizer="smollm2-135m",
            val_fraction=0.1,
            test_fraction=0.05,
            progress=False,
        )
    )
    assert manifest["tokenizer"]["template"] == "chatml"
    config = config_from_dict(
        {
            "out_dir": str(tmp_path / "run"),
            "init_from": "smollm2-135m",
            "data": {
                "dir": str(tmp_path / "data"),
                "context": 64,
                "pack": False,
                "curriculum": "length",
            },
            "train": {"max_steps": 8, "batch_size": 4},
            "optim": {"lr": 3e-3, "weight_decay": 0.0},
            "schedule": {"kind": "constant", "warmup_steps": 2},
            "eval": {"every": 8, "batches": 2, "at_start": True},
            "checkpoint": {"every": 8, "keep_last": 1},
            "log": {"every": 2, "tensorboard": False, "progress": False, "mlflow": "off"},
            "finetune": {
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["attn.qkv", "attn.out"]}
            },
        }
    )
    result = Trainer(config).run()
    evals = result.record["metrics"]["eval"]
    assert [e["step"] for e in evals] == [0, 8]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert (
        result.adapter_dir is not None
        and (result.adapter_dir / "adapter_model.safetensors").is_file()
    )
    assert result.model_dir is not None
    loaded = registry.load(str(result.model_dir))
    assert loaded.model.cfg.n_layers == 30 and loaded.tokenizer is not None
    ids = loaded.tokenizer("In the beginning", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(ids)
    assert torch.isfinite(logits).all()
