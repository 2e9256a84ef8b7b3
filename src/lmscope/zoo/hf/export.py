"""Back to Hugging Face: a LLaMA-shaped canonical model as a LlamaConfig and state dict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lmscope.model.transformer import Transformer
from lmscope.zoo.errors import UnsupportedModelError

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def to_hf_state_dict(model: Transformer) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
    """A LlamaConfig and LlamaForCausalLM state dict for a LLaMA-shaped canonical model."""
    from transformers import LlamaConfig

    cfg = model.cfg
    hidden_act = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
    needs = {
        "positional='rope'": cfg.positional == "rope",
        "rotary_pct=1": cfg.rotary_pct == 1.0,
        "norm='rmsnorm'": cfg.norm == "rmsnorm",
        "gated_mlp=True": cfg.gated_mlp,
        "parallel_attn_mlp=False": not cfg.parallel_attn_mlp,
        "unembed_bias=False": not cfg.unembed_bias,
        "qkv_bias == out_bias": cfg.qkv_bias == cfg.out_bias,
    }
    unmet = [k for k, ok in needs.items() if not ok]
    if unmet:
        raise UnsupportedModelError(
            f"to_hf_state_dict exports LLaMA-shaped models only; this model needs {', '.join(unmet)}"
        )
    rope_scaling = None
    if cfg.rope_scaling:
        rope_scaling = dict(cfg.rope_scaling)
        rope_scaling["rope_type"] = rope_scaling.pop("type", rope_scaling.get("rope_type"))
    eos = cfg.extra.get("eos_token_ids", cfg.eos_token_id)
    # rope_theta / rope_scaling: the 4.x spelling, which 5.x folds into rope_parameters.
    legacy_rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_scaling": rope_scaling}
    hf_config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act=hidden_act[cfg.activation],
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.norm_eps,
        attention_bias=cfg.qkv_bias,
        mlp_bias=cfg.mlp_bias,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=eos,
        **legacy_rope,
    )
    ours = {name: t.detach() for name, t in model.state_dict().items()}
    q_size, kv_size = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    sd = {
        "model.embed_tokens.weight": ours["embed.weight"],
        "model.norm.weight": ours["ln_final.weight"],
    }
    for i in range(cfg.n_layers):
        a, t = f"blocks.{i}.", f"model.layers.{i}."
        sd[t + "input_layernorm.weight"] = ours[a + "ln1.weight"]
        sd[t + "post_attention_layernorm.weight"] = ours[a + "ln2.weight"]
        for kind in ("weight", "bias"):
            if a + f"attn.qkv.{kind}" in ours:
                q, k, v = ours[a + f"attn.qkv.{kind}"].split([q_size, kv_size, kv_size], dim=0)
                sd[t + f"self_attn.q_proj.{kind}"] = q
                sd[t + f"self_attn.k_proj.{kind}"] = k
                sd[t + f"self_attn.v_proj.{kind}"] = v
                sd[t + f"self_attn.o_proj.{kind}"] = ours[a + f"attn.out.{kind}"]
            if a + f"mlp.fc_in.{kind}" in ours:
                gate, up = ours[a + f"mlp.fc_in.{kind}"].split(cfg.mlp_dim, dim=0)
                sd[t + f"mlp.gate_proj.{kind}"] = gate
                sd[t + f"mlp.up_proj.{kind}"] = up
                sd[t + f"mlp.down_proj.{kind}"] = ours[a + f"mlp.fc_out.{kind}"]
    sd["lm_head.weight"] = ours["unembed.weight"]
    return hf_config, {name: t.contiguous() for name, t in sd.items()}
