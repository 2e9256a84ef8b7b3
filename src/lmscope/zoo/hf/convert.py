"""Hugging Face config and tensors -> our ModelConfig and parameter names, for any family."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from lmscope.model.config import ModelConfig
from lmscope.zoo.errors import ConversionError
from lmscope.zoo.hf.common import HFConfig, Source
from lmscope.zoo.hf.families import family_of


def config_from_hf(hf_config: HFConfig) -> ModelConfig:
    """The ModelConfig that describes a Hugging Face config (object or config.json dict)."""
    hf_config = as_config(hf_config)
    family = family_of(hf_config)
    return family.config(hf_config, family.model_type)


def as_config(hf_config: HFConfig) -> Any:
    """A transformers config object (a config.json dict is checked, then read by AutoConfig:
    a config, never a model)."""
    if isinstance(hf_config, Mapping):
        from transformers import AutoConfig

        data = dict(hf_config)
        model_type = family_of(data).model_type
        data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)
    return hf_config


def state_dict_from_hf(
    hf_state_dict: Mapping[str, torch.Tensor], hf_config: HFConfig
) -> dict[str, torch.Tensor]:
    """Rename, transpose and pack HF tensors into lmscope parameter names.

    `hf_state_dict` may be any mapping, e.g. one that reads tensors from safetensors files on
    demand. With tied embeddings `unembed.weight` is the same tensor as `embed.weight`, so the
    result loads into `Transformer.load_state_dict` as it is.
    """
    hf = as_config(hf_config)
    family = family_of(hf)
    cfg = quiet_config(hf)  # from_hf and config_from_hf already warn
    src = Source(hf_state_dict, family.prefix)
    out = family.weights(src, cfg)
    head = None
    for name in family.head_names:
        head = src.optional(name, root=True)
        if head is not None:
            break
    if cfg.tie_embeddings:
        out["unembed.weight"] = out["embed.weight"]
    elif head is None:
        raise ConversionError(
            f"the Hugging Face state dict has no output head ({' or '.join(family.head_names)}) "
            "and its config does not tie it to the embeddings"
        )
    else:
        out["unembed.weight"] = head
    src.check_all_used()
    return {name: t.contiguous() for name, t in out.items()}


def quiet_config(hf: Any) -> ModelConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return config_from_hf(hf)
