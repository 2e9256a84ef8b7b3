"""OPT (pre-LN variants): learned positions offset by two, ReLU, separate q/k/v projections."""

from __future__ import annotations

from typing import Any

import torch

from lmscope.model.config import ModelConfig
from lmscope.zoo.errors import UnsupportedModelError
from lmscope.zoo.hf.common import (
    Family,
    Source,
    activation,
    common_fields,
    get,
    linear,
    norm,
    pack_qkv,
    standard_sizes,
)


def opt_config(hf: Any, family: str) -> ModelConfig:
    if not get(hf, "do_layer_norm_before", True):
        raise UnsupportedModelError(
            "OPT with do_layer_norm_before=False (post-LN, e.g. opt-350m) is not supported: "
            "the canonical block normalises before attention and MLP"
        )
    proj = get(hf, "word_embed_proj_dim")
    if proj not in (None, hf.hidden_size):
        raise UnsupportedModelError(
            f"OPT with word_embed_proj_dim={proj} != hidden_size={hf.hidden_size} (projected "
            "embeddings, e.g. opt-350m) is not supported"
        )
    if get(hf, "_remove_final_layer_norm", False):
        raise UnsupportedModelError("OPT with _remove_final_layer_norm=True is not supported")
    bias = bool(get(hf, "enable_bias", True))
    return ModelConfig(
        **standard_sizes(hf),
        d_mlp=hf.ffn_dim,
        positional="learned",
        norm="layernorm",
        norm_eps=1e-5,  # OPT uses nn.LayerNorm's default
        activation=activation(hf, "activation_function", family),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        **common_fields(hf, family),
    )


def opt_weights(src: Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    # OPT's position table has two extra leading rows: HF looks it up at position + 2.
    positions = src.get("embed_positions.weight")
    out = {"embed.weight": src.get("embed_tokens.weight"), "pos_embed.weight": positions[2:]}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"layers.{i}."
        norm(out, ours + "ln1", src, theirs + "self_attn_layer_norm", cfg)
        pack_qkv(out, ours, src, theirs + "self_attn.", "out_proj")
        norm(out, ours + "ln2", src, theirs + "final_layer_norm", cfg)
        linear(out, ours + "mlp.fc_in", src, theirs + "fc1")
        linear(out, ours + "mlp.fc_out", src, theirs + "fc2")
    norm(out, "ln_final", src, "final_layer_norm", cfg)
    return out


FAMILIES = (Family("opt", opt_config, opt_weights, prefix="model.decoder."),)
