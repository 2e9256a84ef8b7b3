"""GPT-2: learned positions, LayerNorm, Conv1D weights stored [in, out]."""

from __future__ import annotations

from typing import Any

import torch

from lmscope.model.config import ModelConfig
from lmscope.zoo.errors import UnsupportedModelError
from lmscope.zoo.hf.common import Family, Source, activation, common_fields, get, linear, norm


def gpt2_config(hf: Any, family: str) -> ModelConfig:
    if not get(hf, "scale_attn_weights", True):
        raise UnsupportedModelError("GPT-2 with scale_attn_weights=False is not supported")
    if get(hf, "scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedModelError(
            "GPT-2 with scale_attn_by_inverse_layer_idx=True is not supported"
        )
    if get(hf, "add_cross_attention", False):
        raise UnsupportedModelError("GPT-2 with cross-attention is not a decoder-only model")
    return ModelConfig(
        vocab_size=hf.vocab_size,
        d_model=hf.n_embd,
        n_layers=hf.n_layer,
        n_heads=hf.n_head,
        d_mlp=get(hf, "n_inner") or 4 * hf.n_embd,
        n_ctx=hf.n_positions,
        positional="learned",
        norm="layernorm",
        norm_eps=hf.layer_norm_epsilon,
        activation=activation(hf, "activation_function", family),
        **common_fields(hf, family),
    )


def gpt2_weights(src: Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    # Conv1D stores weights as [in, out]; c_attn's output is already [q | k | v].
    out = {"embed.weight": src.get("wte.weight"), "pos_embed.weight": src.get("wpe.weight")}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        norm(out, ours + "ln1", src, theirs + "ln_1", cfg)
        linear(out, ours + "attn.qkv", src, theirs + "attn.c_attn", transpose=True)
        linear(out, ours + "attn.out", src, theirs + "attn.c_proj", transpose=True)
        norm(out, ours + "ln2", src, theirs + "ln_2", cfg)
        linear(out, ours + "mlp.fc_in", src, theirs + "mlp.c_fc", transpose=True)
        linear(out, ours + "mlp.fc_out", src, theirs + "mlp.c_proj", transpose=True)
    norm(out, "ln_final", src, "ln_f", cfg)
    return out


FAMILIES = (Family("gpt2", gpt2_config, gpt2_weights, prefix="transformer."),)
