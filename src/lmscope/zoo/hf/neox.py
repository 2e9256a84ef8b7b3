"""GPT-NeoX / Pythia: parallel attention and MLP, partial rotary, per-head interleaved q/k/v."""

from __future__ import annotations

from typing import Any

import torch

from lmscope.model.config import ModelConfig
from lmscope.zoo.hf.common import (
    Family,
    Source,
    activation,
    common_fields,
    get,
    linear,
    norm,
    rope,
    standard_sizes,
)


def neox_config(hf: Any, family: str) -> ModelConfig:
    theta, scaling, fraction = rope(hf, family)
    bias = bool(get(hf, "attention_bias", True))
    return ModelConfig(
        **standard_sizes(hf),
        d_mlp=hf.intermediate_size,
        positional="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_pct=fraction,
        norm="layernorm",
        norm_eps=hf.layer_norm_eps,
        activation=activation(hf, "hidden_act", family),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=True,
        parallel_attn_mlp=bool(get(hf, "use_parallel_residual", True)),
        **{
            **common_fields(hf, family),
            "tie_embeddings": bool(get(hf, "tie_word_embeddings", False)),
        },
    )


def neox_weights(src: Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    heads, d_head = cfg.n_heads, cfg.head_dim
    out = {"embed.weight": src.get("embed_in.weight")}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"layers.{i}."
        norm(out, ours + "ln1", src, theirs + "input_layernorm", cfg)
        # query_key_value's outputs are laid out per head as [head, (q, k, v), d_head].
        weight = src.get(theirs + "attention.query_key_value.weight")
        out[ours + "attn.qkv.weight"] = (
            weight.reshape(heads, 3, d_head, -1).transpose(0, 1).reshape(3 * heads * d_head, -1)
        )
        bias = src.optional(theirs + "attention.query_key_value.bias")
        if bias is not None:
            out[ours + "attn.qkv.bias"] = bias.reshape(heads, 3, d_head).transpose(0, 1).reshape(-1)
        linear(out, ours + "attn.out", src, theirs + "attention.dense")
        norm(out, ours + "ln2", src, theirs + "post_attention_layernorm", cfg)
        linear(out, ours + "mlp.fc_in", src, theirs + "mlp.dense_h_to_4h")
        linear(out, ours + "mlp.fc_out", src, theirs + "mlp.dense_4h_to_h")
    norm(out, "ln_final", src, "final_layer_norm", cfg)
    return out


# transformers 5.x renamed the output head embed_out -> lm_head.
FAMILIES = (
    Family(
        "gpt_neox",
        neox_config,
        neox_weights,
        prefix="gpt_neox.",
        head_names=("embed_out.weight", "lm_head.weight"),
    ),
)
