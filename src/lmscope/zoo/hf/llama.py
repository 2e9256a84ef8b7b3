"""The LLaMA layout: LLaMA, Mistral and Qwen2 (RoPE, RMSNorm, gated SiLU MLP, GQA)."""

from __future__ import annotations

import warnings
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
    pack_qkv,
    rope,
    standard_sizes,
)


def llama_config(hf: Any, family: str) -> ModelConfig:
    theta, scaling, fraction = rope(hf, family)
    if family == "qwen2":  # q/k/v carry biases, the output projection does not
        qkv_bias, out_bias = True, False
    else:
        qkv_bias = out_bias = bool(get(hf, "attention_bias", False))
    n_ctx = hf.max_position_embeddings
    common = common_fields(hf, family)
    window = _sliding_window(hf, family)
    if window is not None:
        common["extra"]["sliding_window"] = window
        if window < n_ctx:
            warnings.warn(
                f"{family} sliding_window={window} is smaller than max_position_embeddings={n_ctx}; "
                "lmscope does not apply sliding-window attention, so logits for sequences longer "
                f"than {window} tokens will differ from Hugging Face's",
                UserWarning,
                stacklevel=3,
            )
    return ModelConfig(
        **standard_sizes(hf),
        n_kv_heads=get(hf, "num_key_value_heads") or hf.num_attention_heads,
        d_head=get(hf, "head_dim") or hf.hidden_size // hf.num_attention_heads,
        d_mlp=hf.intermediate_size,
        positional="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_pct=fraction,
        norm="rmsnorm",
        norm_eps=hf.rms_norm_eps,
        activation=activation(hf, "hidden_act", family),
        gated_mlp=True,
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        mlp_bias=bool(get(hf, "mlp_bias", False)),
        **common,
    )


def _sliding_window(hf: Any, family: str) -> int | None:
    """The attention window HF applies to some layer, or None when every layer sees everything."""
    window = get(hf, "sliding_window")
    if window is None:
        return None
    if family == "qwen2" and not get(hf, "use_sliding_window", False):
        return None
    layer_types = get(hf, "layer_types")
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def llama_weights(src: Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"embed.weight": src.get("embed_tokens.weight")}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"layers.{i}."
        norm(out, ours + "ln1", src, theirs + "input_layernorm", cfg)
        pack_qkv(out, ours, src, theirs + "self_attn.", "o_proj")
        norm(out, ours + "ln2", src, theirs + "post_attention_layernorm", cfg)
        mlp = theirs + "mlp."
        out[ours + "mlp.fc_in.weight"] = torch.cat(
            [src.get(mlp + "gate_proj.weight"), src.get(mlp + "up_proj.weight")], dim=0
        )
        gate_bias, up_bias = (
            src.optional(mlp + "gate_proj.bias"),
            src.optional(mlp + "up_proj.bias"),
        )
        if gate_bias is not None and up_bias is not None:
            out[ours + "mlp.fc_in.bias"] = torch.cat([gate_bias, up_bias], dim=0)
        linear(out, ours + "mlp.fc_out", src, mlp + "down_proj")
    norm(out, "ln_final", src, "norm", cfg)
    return out


FAMILIES = tuple(
    Family(model_type, llama_config, llama_weights, prefix="model.")
    for model_type in ("llama", "mistral", "qwen2")
)
