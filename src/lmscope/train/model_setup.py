"""Building the model a run trains: from a config (from scratch) or a pretrained model (fine-tuning),
and checking that a checkpoint fits it before resuming."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lmscope.data.tokenizer import TextTokenizer, from_object
from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.train.config import TrainConfig, model_config
from lmscope.train.errors import ResumeError, TrainConfigError
from lmscope.train.finetune import set_dropout

# Config fields that change the maths (and the shapes) of a model.
_IDENTITY_FIELDS = {"dropout", "architecture", "bos_token_id", "eos_token_id", "extra", "init_std"}


@dataclass
class BuiltModel:
    model: Transformer
    hf_tokenizer: Any  # saved with checkpoints: transformers tokenizer
    source: str  # "scratch" or what init_from resolved to


def build_model(config: TrainConfig, tokenizer: TextTokenizer) -> BuiltModel:
    if config.init_from is None:
        cfg = model_config(
            config,
            vocab_size=tokenizer.vocab_size,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
        )
        torch.manual_seed(config.train.seed)
        return BuiltModel(Transformer(cfg), tokenizer.to_hf(), "scratch")
    from lmscope.zoo import registry

    loaded = registry.load(config.init_from)
    model = loaded.model.float()
    if loaded.tokenizer is not None:
        check_same_vocab(tokenizer, from_object(loaded.tokenizer), config.init_from)
    elif tokenizer.vocab_size > model.cfg.vocab_size:
        raise TrainConfigError(
            f"the data's tokenizer has {tokenizer.vocab_size} tokens but {config.init_from} "
            f"only {model.cfg.vocab_size}; prepare the data with --tokenizer {config.init_from}"
        )
    if config.data.context > model.cfg.n_ctx:
        raise TrainConfigError(
            f"data.context ({config.data.context}) exceeds {config.init_from}'s context window "
            f"({model.cfg.n_ctx}); lower data.context"
        )
    if "dropout" in config.model:
        set_dropout(model, float(config.model["dropout"]))
    hf = loaded.tokenizer if loaded.tokenizer is not None else tokenizer.to_hf()
    return BuiltModel(model, hf, loaded.source)


def check_same_vocab(data_tok: TextTokenizer, model_tok: TextTokenizer, name: str) -> None:
    if data_tok.backend.get_vocab() != model_tok.backend.get_vocab():
        raise TrainConfigError(
            f"the data was tokenised with another tokenizer than {name}'s; prepare it again with "
            f"`lmscope data prepare ... --tokenizer {name}`"
        )


def architecture_diff(saved: dict[str, Any], current: ModelConfig) -> list[str]:
    mine = current.to_dict()
    keys = sorted((set(saved) | set(mine)) - _IDENTITY_FIELDS)
    return [
        f"{k}: checkpoint {saved.get(k)!r}, this run {mine.get(k)!r}"
        for k in keys
        if saved.get(k) != mine.get(k)
    ]


def check_architecture(saved: dict[str, Any], current: ModelConfig, where: Path) -> None:
    diff = architecture_diff(saved, current)
    if diff:
        raise ResumeError(
            f"cannot resume from {where}: it holds a model of another architecture ("
            + "; ".join(diff[:4])
            + "). Use the config that wrote it, or a fresh out_dir"
        )


def load_full_weights(model: Transformer, directory: Path) -> None:
    """Load model.safetensors from a step checkpoint into `model` (same architecture)."""
    from lmscope.zoo.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    try:
        saved_cfg = ModelConfig.load(directory / CONFIG_FILE).to_dict()
    except ValueError as err:
        raise ResumeError(f"cannot resume from {directory}: {err}") from err
    check_architecture(saved_cfg, model.cfg, directory)
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except Exception as err:  # safetensors' own error type, OSError
        raise ResumeError(f"cannot read the weights in {directory}: {err}") from err
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if model.cfg.tie_embeddings:
        missing = [m for m in missing if m != "unembed.weight"]
    if missing or unexpected:
        raise ResumeError(
            f"the weights in {directory} do not fit this model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
