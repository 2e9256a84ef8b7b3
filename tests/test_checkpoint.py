"""lmscope checkpoints: safetensors + config.json (+ tokenizer, metadata)."""

from __future__ import annotations

import json
import os
import pickle
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo import checkpoint as ckpt
from lmscope.zoo.checkpoint import (
    is_checkpoint,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from lmscope.zoo.errors import CheckpointError


def tiny_model(**overrides: Any) -> Transformer:
    sizes: dict[str, Any] = dict(vocab_size=50, d_mlp=48, n_ctx=32)
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name("tiny-mistral", **{**sizes, **overrides})).eval()


TOKENS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4]])


def logits(model: Transformer) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = tiny_model()
    path = save_checkpoint(model, tmp_path / "ckpt")
    assert path == tmp_path / "ckpt"
    assert is_checkpoint(path)
    loaded, tokenizer = load_checkpoint(path)
    assert tokenizer is None
    assert loaded.cfg == model.cfg
    assert not loaded.training
    assert torch.equal(logits(loaded), logits(model))
    for (name, ours), (_, theirs) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    assert leftovers(path) == []


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_round_trip_other_positions(tmp_path: Path, positional: str) -> None:
    model = tiny_model(positional=positional, norm="layernorm", gated_mlp=False, qkv_bias=True)
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path))
    assert torch.equal(logits(loaded), logits(model))


def test_tied_embeddings_saved_once_and_retied(tmp_path: Path) -> None:
    model = tiny_model(tie_embeddings=True)
    save_checkpoint(model, tmp_path)
    assert "unembed.weight" not in load_file(str(tmp_path / "model.safetensors"))
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.unembed.weight is loaded.embed.weight
    assert torch.equal(logits(loaded), logits(model))
    untied = tiny_model(tie_embeddings=False)
    save_checkpoint(untied, tmp_path / "untied")
    assert "unembed.weight" in load_file(str(tmp_path / "untied" / "model.safetensors"))


def test_dtype_on_load(tmp_path: Path) -> None:
    save_checkpoint(tiny_model(), tmp_path)
    loaded, _ = load_checkpoint(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert loaded.rope_cos.dtype == torch.float32  # position tables keep full precision
    assert logits(loaded).dtype == torch.bfloat16


def test_metadata_round_trip(tmp_path: Path) -> None:
    metadata = {"step": 120, "loss": 2.5, "data": ["a.txt"], "nested": {"lr": 3e-4}}
    save_checkpoint(tiny_model(), tmp_path, metadata=metadata)
    assert read_metadata(tmp_path) == metadata
    save_checkpoint(tiny_model(), tmp_path / "bare")
    assert read_metadata(tmp_path / "bare") is None


def test_unserialisable_metadata_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tiny_model(), tmp_path / "ckpt", metadata={"tensor": torch.zeros(1)})
    assert not (tmp_path / "ckpt").exists()


def test_tokenizer_round_trip(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<unk>": 0,
        "<eos>": 1,
        **{w: i + 2 for i, w in enumerate(["the", "cat", "sat", "on", "a", "mat"])},
    }
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>"
    )
    save_checkpoint(tiny_model(), tmp_path, tokenizer=tokenizer)
    _, loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    assert loaded("the cat sat on a mat")["input_ids"] == [2, 3, 4, 5, 6, 7]
    assert loaded.eos_token == "<eos>"
    assert leftovers(tmp_path) == []


def test_truncated_weights_name_the_file(tmp_path: Path) -> None:
    save_checkpoint(tiny_model(), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors") as info:
        load_checkpoint(tmp_path)
    assert "truncated" in str(info.value)
    weights.write_bytes(data[:4])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(tmp_path)


def test_corrupt_config_names_the_file(tmp_path: Path) -> None:
    save_checkpoint(tiny_model(), tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(tmp_path)


def test_missing_extra_and_misshaped_tensors(tmp_path: Path) -> None:
    save_checkpoint(tiny_model(), tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({**tensors, "blocks.9.attn.qkv.weight": torch.zeros(2)}, str(weights))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: blocks\.9\.attn\.qkv\.weight"):
        load_checkpoint(tmp_path)
    save_file({k: v for k, v in tensors.items() if k != "ln_final.weight"}, str(weights))
    with pytest.raises(CheckpointError, match=r"missing tensors: ln_final\.weight"):
        load_checkpoint(tmp_path)
    save_file(tensors, str(weights))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "d_mlp": 64}))
    with pytest.raises(
        CheckpointError, match=r"fc_in\.weight has shape \[96, 32\], the config needs \[128, 32\]"
    ):
        load_checkpoint(tmp_path)


def test_failed_save_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    save_checkpoint(model, tmp_path)
    before = logits(model)

    def broken_save_file(tensors: dict[str, torch.Tensor], filename: str, **_: Any) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny_model(n_layers=1), tmp_path)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    loaded, _ = load_checkpoint(tmp_path)  # the earlier checkpoint is intact
    assert torch.equal(logits(loaded), before)

    class BrokenTokenizer:
        def save_pretrained(self, directory: str) -> None:
            (Path(directory) / "tokenizer.json").write_text("{")
            raise RuntimeError("tokenizer exploded")

    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        save_checkpoint(model, tmp_path, tokenizer=BrokenTokenizer())  # type: ignore[arg-type]
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "tokenizer.json").exists()


def test_checkpoint_files_follow_the_umask(tmp_path: Path) -> None:
    """Checkpoints are shared (a team directory, a model server's user): 0o600 files were not."""
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tiny_model(), tmp_path / "ckpt", metadata={"note": "x"})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


class _Marker:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (str(self.path), "w"))


def test_pickle_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tiny_model(), tmp_path)
    marker = tmp_path / "pwned"
    weights = tmp_path / "model.safetensors"

    def no_unpickling(*_: Any, **__: Any) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    weights.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path)
    # A PyTorch zip archive (torch.save) is refused too.
    monkeypatch.undo()
    torch.save({"embed.weight": torch.zeros(50, 32), "x": _Marker(marker)}, weights)
    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_pickle_only_directory_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tiny_model(), tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    assert not is_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin, a pickle"):
        load_checkpoint(tmp_path)


def test_is_checkpoint(tmp_path: Path) -> None:
    assert not is_checkpoint(tmp_path / "nowhere")
    assert not is_checkpoint(tmp_path)
    save_checkpoint(tiny_model(), tmp_path / "ours")
    assert is_checkpoint(tmp_path / "ours")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    (hf_dir / "model.safetensors").write_bytes(
        (tmp_path / "ours" / "model.safetensors").read_bytes()
    )
    assert not is_checkpoint(hf_dir)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nowhere")


def test_incomplete_checkpoint_without_config(tmp_path: Path) -> None:
    save_checkpoint(tiny_model(), tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_checkpoint(tmp_path)


def test_loading_leaves_random_initialisation_alone(tmp_path: Path) -> None:
    """Loading switches torch.nn.init off only while it builds the model, only in its thread."""
    originals = (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_)
    save_checkpoint(tiny_model(), tmp_path)
    load_checkpoint(tmp_path)
    assert (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_) == originals
    seen: list[float] = []

    def build_elsewhere() -> None:
        seen.append(float(torch.nn.Linear(64, 64).weight.detach().abs().sum()))

    with ckpt._skipping_random_init():
        worker = threading.Thread(target=build_elsewhere)
        worker.start()
        worker.join()
        untouched = torch.ones(3)
        torch.nn.init.normal_(untouched)
        assert torch.equal(untouched, torch.ones(3))
    assert seen and seen[0] > 0  # the other thread's layer was initialised
    assert (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_) == originals
