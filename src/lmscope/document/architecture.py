"""Architecture choices of a canonical model, as named values read from its ModelConfig."""

from __future__ import annotations

from typing import Any

from lmscope.model.config import ModelConfig

# Family (config.architecture) -> what the canonical model generates.
TASK = "text-generation"


def attention_kind(n_heads: int, n_kv_heads: int) -> str:
    if n_kv_heads == n_heads:
        return "MHA"
    return "MQA" if n_kv_heads == 1 else "GQA"


def architecture_choices(cfg: ModelConfig) -> dict[str, Any]:
    """Every switch of the canonical transformer with its value, grouped by component."""
    positional: dict[str, Any] = {"kind": cfg.positional}
    if cfg.positional == "rope":
        positional["theta"] = cfg.rope_theta
        positional["rotary_fraction"] = cfg.rotary_pct
        positional["rotary_dims"] = cfg.rotary_dim
        positional["scaling"] = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    return {
        "kind": "decoder-only transformer",
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "positional": positional,
        "normalisation": {
            "kind": cfg.norm,
            "eps": cfg.norm_eps,
            "placement": "pre-norm",
            "bias": cfg.norm_bias if cfg.norm == "layernorm" else False,
            "final_norm": True,
        },
        "attention": {
            "kind": attention_kind(cfg.n_heads, cfg.kv_heads),
            "heads": cfg.n_heads,
            "kv_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim,
            "group_size": cfg.n_heads // cfg.kv_heads,
            "causal": True,
        },
        "mlp": {
            "activation": cfg.activation,
            "gated": cfg.gated_mlp,
            "width": cfg.mlp_dim,
            "width_ratio": round(cfg.mlp_dim / cfg.d_model, 4),
        },
        "biases": {
            "qkv": cfg.qkv_bias,
            "attention_out": cfg.out_bias,
            "mlp": cfg.mlp_bias,
            "unembed": cfg.unembed_bias,
        },
        "tied_embeddings": cfg.tie_embeddings,
        "tied_parameters_saved": cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0,
        "parallel_blocks": cfg.parallel_attn_mlp,
        "dropout": cfg.dropout,
    }


def component_parameters(counts: dict[str, int]) -> dict[str, int]:
    """Transformer.parameter_counts() regrouped as the card reports them (tied weights once)."""
    return {
        "embeddings": counts.get("embed", 0) + counts.get("pos_embed", 0),
        "attention": counts.get("attention", 0),
        "mlp": counts.get("mlp", 0),
        "norms": counts.get("norms", 0),
        "unembedding": counts.get("unembed", 0),
    }
