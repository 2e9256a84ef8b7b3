"""Training on a tiny model: loss goes down, checkpoints, early stopping, bad resumes, full disk,
freezing, LoRA, curriculum, instruction data. Every run is a few dozen steps on CPU."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmscope.data.prepare import PrepareConfig, prepare
from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.train.batches import RowStream, micro_slices
from lmscope.train.config import FinetuneSection, config_from_dict
from lmscope.train.errors import CheckpointWriteError, ResumeError, TrainConfigError
from lmscope.train.finetune import FreezePlan
from lmscope.train.trainer import Trainer, TrainResult
from lmscope.zoo.checkpoint import load_checkpoint
from train_support import corpus, prepared_data, with_sections

pytestmark = pytest.mark.usefixtures("one_thread")


def _corpus() -> str:
    return corpus(40_000)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("train-data"), 40_000, vocab_size=384)


def tiny_config(data_dir: Path, out_dir: Path, **sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "out_dir": str(out_dir),
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0},
        "data": {"dir": str(data_dir), "context": 32},
        "train": {"max_steps": 20, "batch_size": 4, "seed": 1},
        "optim": {"lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "eval": {"every": 10, "batches": 2},
        "checkpoint": {"every": 10, "keep_last": 1},
        "log": {"every": 5, "tensorboard": False, "progress": False, "mlflow": "off"},
    }
    return with_sections(base, **sections)


def run(config: dict[str, Any], **kwargs: Any) -> TrainResult:
    return Trainer(config_from_dict(config), **kwargs).run()


def tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ---- the whole loop ------------------------------------------------------------------------------


def test_training_learns_and_writes_a_loadable_model(data_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(
        data_dir,
        tmp_path / "run",
        train={"max_steps": 40},
        log={"tensorboard": True},
        sample={"prompts": ["The "], "max_new_tokens": 8},
        checkpoint={"every": 10, "keep_last": 2},
    )
    result = run(config)
    record = result.record
    evals = [e["val_loss"] for e in record["metrics"]["eval"]]
    assert [e["step"] for e in record["metrics"]["eval"]] == [10, 20, 30, 40]
    assert evals[-1] < evals[0] < np.log(384) + 0.5  # learned something beyond uniform
    assert record["final"]["test_loss"] is not None and np.isfinite(record["final"]["test_loss"])
    assert record["final"]["stopped"] == "max_steps" and record["final"]["step"] == 40
    assert len(record["metrics"]["train"]) == 8 and record["tokens_seen"] == 40 * 4 * 32
    assert record["data_manifest"]["tokenizer"]["vocab_size"] == 384
    assert {"device", "torch", "cpu_count"} <= set(record["hardware"])
    assert record["wall_time_s"] > 0
    samples = record["metrics"]["samples"]
    assert [s["step"] for s in samples] == [10, 20, 30, 40] and all(
        isinstance(s["text"], str) for s in samples
    )
    assert list((result.out_dir / "tensorboard").glob("events.out.tfevents.*"))
    on_disk = json.loads((result.out_dir / "training_record.json").read_text())
    assert on_disk["final"] == json.loads(json.dumps(record["final"]))

    # keep_last=2 plus the best; the best is step 40 here, so exactly the last two remain
    steps = sorted(p.name for p in (result.out_dir / "checkpoints").glob("step-*"))
    assert steps == ["step-00000030", "step-00000040"]

    assert result.model_dir is not None
    model, tokenizer = load_checkpoint(result.model_dir)
    assert tokenizer is not None and tokenizer.eos_token == "<|eos|>"
    step_model, _ = load_checkpoint(result.out_dir / "checkpoints" / "step-00000040")
    tokens = torch.randint(0, 384, (1, 16))
    torch.testing.assert_close(model(tokens), step_model(tokens))
    meta = json.loads((result.model_dir / "metadata.json").read_text())
    assert meta["training"]["final"]["step"] == 40


def test_grad_accumulation_matches_a_bigger_batch(data_dir: Path, tmp_path: Path) -> None:
    big = run(tiny_config(data_dir, tmp_path / "a", train={"max_steps": 6, "batch_size": 8}))
    small = run(
        tiny_config(
            data_dir, tmp_path / "b", train={"max_steps": 6, "batch_size": 2, "grad_accum": 4}
        )
    )
    a, b = big.record["final"], small.record["final"]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_micro_slices_partition_the_global_batch() -> None:
    indices = np.arange(12)
    parts = [micro_slices(indices, r, 2, 3, 2) for r in range(2)]
    flat = np.concatenate([m for p in parts for m in p])
    assert sorted(flat.tolist()) == list(range(12))


def test_row_stream_is_resumable_and_follows_the_curriculum() -> None:
    keys = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.0])
    stream = RowStream(6, seed=0, curriculum_keys=keys, curriculum_epochs=1)
    first = stream.next(4)
    assert keys[first].tolist() == [0.0, 1.0, 2.0, 3.0]
    position = (stream.position.epoch, stream.position.cursor)
    rest = stream.next(6)  # runs into epoch 1, which is shuffled, not sorted
    again = RowStream(6, seed=0, curriculum_keys=keys)
    again.position.epoch, again.position.cursor = position
    assert again.next(6).tolist() == rest.tolist()
    assert keys[rest[:2]].tolist() == [4.0, 5.0]  # the end of the sorted epoch 0
    epoch1 = stream.order(1)
    assert sorted(epoch1.tolist()) == list(range(6))
    assert keys[epoch1].tolist() != sorted(keys.tolist())  # later epochs are shuffled
    assert rest[2:].tolist() == epoch1[:4].tolist()


def test_early_stopping(data_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(
        data_dir,
        tmp_path / "run",
        train={"max_steps": 100},
        eval={"every": 5, "batches": 1, "patience": 2, "min_delta": 100.0},
        checkpoint={"every": 5},
    )
    result = run(config)
    final = result.record["final"]
    # the first evaluation is the best; two more without a 100-nat improvement stop the run
    assert final["stopped"] == "early_stopping" and final["step"] == 15
    assert final["best_step"] == 5 and final["exported_weights"] == "best (step 5)"
    best, _ = load_checkpoint(result.out_dir / "checkpoints" / "step-00000005")
    exported, _ = load_checkpoint(result.out_dir / "model")
    for (name, a), (_, b) in zip(
        best.state_dict().items(), exported.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_rejects_another_architecture(data_dir: Path, tmp_path: Path) -> None:
    run(tiny_config(data_dir, tmp_path / "run", train={"max_steps": 10}))
    other = tiny_config(data_dir, tmp_path / "run", train={"max_steps": 20})
    other["model"] = {**other["model"], "d_model": 48}
    before = tree_hashes(tmp_path / "run" / "checkpoints")
    with pytest.raises(
        ResumeError, match=r"another architecture \(.*d_model: checkpoint 32, this run 48"
    ):
        run(other)
    with pytest.raises(ResumeError, match="already holds checkpoints"):
        run(tiny_config(data_dir, tmp_path / "run"), resume=False)
    assert tree_hashes(tmp_path / "run" / "checkpoints") == before
    with pytest.raises(ResumeError, match="nothing to resume"):
        run(tiny_config(data_dir, tmp_path / "fresh"), resume=True)


def test_full_disk_during_checkpoint_leaves_old_ones_intact(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(tiny_config(data_dir, tmp_path / "run", train={"max_steps": 10}))
    root = tmp_path / "run" / "checkpoints"
    before = tree_hashes(root)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lmscope.train.state.save_file", disk_full)
    with pytest.raises(
        CheckpointWriteError, match=r"the disk is full.*Earlier checkpoints are intact"
    ):
        run(tiny_config(data_dir, tmp_path / "run", train={"max_steps": 20}))
    assert tree_hashes(root) == before
    assert not list(root.glob(".tmp-*"))
    monkeypatch.undo()
    resumed = run(tiny_config(data_dir, tmp_path / "run", train={"max_steps": 20}))
    assert resumed.record["resumed_from_steps"] == [10]


def test_bf16_autocast_runs_on_cpu(data_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(data_dir, tmp_path / "run", train={"max_steps": 3, "dtype": "bf16"})
    config["eval"] = {"every": 0, "batches": 1}
    result = run(config)
    assert result.record["hardware"]["precision"] == "bf16"
    assert np.isfinite(result.record["final"]["train_loss"])


# ---- fine-tuning ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pretrained base: the exported model of a short from-scratch run."""
    out = tmp_path_factory.mktemp("base") / "run"
    result = run(tiny_config(data_dir, out, train={"max_steps": 10}))
    assert result.model_dir is not None
    return result.model_dir


def test_freeze_plan_unfreezes_from_the_top() -> None:
    plan = FreezePlan.from_config(FinetuneSection(freeze_layers=3, unfreeze_every=10), n_layers=4)
    assert [plan.frozen_blocks(s) for s in (0, 9, 10, 25, 30, 99)] == [3, 3, 2, 1, 0, 0]
    model = Transformer(ModelConfig(vocab_size=20, d_model=16, n_layers=4, n_heads=2, n_ctx=8))
    assert plan.apply(model, 10)
    trainable = {
        n.split(".")[1]
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith("blocks")
    }
    assert trainable == {"2", "3"}
    assert not plan.apply(model, 11)
    with pytest.raises(TrainConfigError, match="exceeds"):
        FreezePlan.from_config(FinetuneSection(freeze_layers=5), n_layers=4)


def test_full_finetune_with_frozen_layers(data_dir: Path, base_model: Path, tmp_path: Path) -> None:
    config = tiny_config(data_dir, tmp_path / "ft", train={"max_steps": 6})
    config.update(init_from=str(base_model), model={"dropout": 0.1})  # only dropout may change
    config["finetune"] = {"freeze_layers": 1, "freeze_embeddings": True}
    result = run(config)
    base, _ = load_checkpoint(base_model)
    tuned, _ = load_checkpoint(result.out_dir / "model")
    assert torch.equal(base.embed.weight, tuned.embed.weight)
    assert torch.equal(base.blocks[0].attn.qkv.weight, tuned.blocks[0].attn.qkv.weight)
    assert not torch.equal(base.blocks[1].attn.qkv.weight, tuned.blocks[1].attn.qkv.weight)
    assert result.record["parameters"]["trainable"] < result.record["parameters"]["total"]


def test_gradual_unfreezing_trains_more_blocks_over_time(
    data_dir: Path, base_model: Path, tmp_path: Path
) -> None:
    config = tiny_config(data_dir, tmp_path / "ft", train={"max_steps": 4})
    config.update(init_from=str(base_model), model={})
    config["finetune"] = {"freeze_layers": 2, "unfreeze_every": 2}
    config["eval"] = {"every": 2, "batches": 1}
    config["checkpoint"] = {"every": 2, "keep_last": 5, "final": "last"}
    result = run(config)
    ckpt = result.out_dir / "checkpoints"
    base, _ = load_checkpoint(base_model)
    at2, _ = load_checkpoint(ckpt / "step-00000002")
    at4, _ = load_checkpoint(ckpt / "step-00000004")
    # steps 0-1: both blocks frozen; steps 2-3: block 1 thawed, block 0 still frozen
    assert torch.equal(base.blocks[1].mlp.fc_in.weight, at2.blocks[1].mlp.fc_in.weight)
    assert not torch.equal(at2.blocks[1].mlp.fc_in.weight, at4.blocks[1].mlp.fc_in.weight)
    assert torch.equal(base.blocks[0].mlp.fc_in.weight, at4.blocks[0].mlp.fc_in.weight)
    assert not torch.equal(base.unembed.weight, at2.unembed.weight)


def test_lora_saves_an_adapter_and_a_merged_checkpoint(
    data_dir: Path, base_model: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    config = tiny_config(data_dir, tmp_path / "lora", train={"max_steps": 8}, optim={"lr": 1e-2})
    config.update(init_from=str(base_model), model={})
    config["finetune"] = {
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["attn.qkv", "mlp.fc_in"]}
    }
    result = run(config)
    assert result.adapter_dir is not None and result.model_dir is not None
    adapter_cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and set(adapter_cfg["target_modules"]) == {"attn.qkv", "mlp.fc_in"}
    assert adapter_cfg["base_model_name_or_path"] == str(base_model)
    params = result.record["parameters"]
    assert 0 < params["trainable"] < params["total"] / 5

    base, _ = load_checkpoint(base_model)
    merged, _ = load_checkpoint(result.model_dir)
    with_adapter = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    tokens = torch.randint(0, 384, (2, 12))
    torch.testing.assert_close(merged(tokens), with_adapter(tokens), rtol=1e-4, atol=1e-4)
    fresh, _ = load_checkpoint(base_model)
    assert not torch.allclose(merged(tokens), fresh(tokens), atol=1e-4)
    assert torch.equal(merged.blocks[0].attn.out.weight, fresh.blocks[0].attn.out.weight)

    # a LoRA run resumes from its adapter checkpoint
    config["train"] = {**config["train"], "max_steps": 10}
    again = run(config)
    assert again.record["resumed_from_steps"] == [8]


def test_lora_rejects_unknown_targets(data_dir: Path, base_model: Path, tmp_path: Path) -> None:
    config = tiny_config(data_dir, tmp_path / "lora")
    config.update(init_from=str(base_model), model={})
    config["finetune"] = {"lora": {"targets": ["q_proj"]}}
    with pytest.raises(
        TrainConfigError, match=r"no linear module named 'q_proj'; available: .*attn.qkv"
    ):
        run(config)


def test_instruction_data_with_curriculum(tmp_path: Path) -> None:
    lines = _corpus().splitlines()
    pairs = [
        {"prompt": a + "\n", "completion": b, "score": float(len(b))}
        for a, b in zip(lines[0:400:2], lines[1:400:2], strict=True)
        if a.strip() and b.strip()
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in pairs))
    data = tmp_path / "data"
    prepare(
        PrepareConfig(
            inputs=[str(path)], out=str(data), vocab_size=320, score_key="score", progress=False
        )
    )
    config = tiny_config(data, tmp_path / "run", train={"max_steps": 8})
    config["data"] = {"dir": str(data), "context": 32, "pack": False, "curriculum": "score"}
    config["eval"] = {"every": 4, "batches": 2}
    result = run(config)
    evals = result.record["metrics"]["eval"]
    assert len(evals) == 2 and all(np.isfinite(e["val_loss"]) for e in evals)
    assert result.record["data_manifest"]["kind"] == "instruction"
    # the first batch holds the lowest-scored (shortest) completions
    trainer = Trainer(config_from_dict(config))
    trainer._setup()
    first = trainer.train_rows[trainer.stream.next(4)]
    keys = trainer.train_split.row_scores(first, "score")
    all_keys = trainer.train_split.row_scores(trainer.train_rows, "score")
    assert keys.max() <= np.sort(all_keys)[3]
