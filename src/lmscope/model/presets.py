"""Named model configurations: `ModelConfig.from_name("gpt2")`, `ModelConfig.from_name("tiny-llama")`.

Two kinds of preset live here, as plain field dictionaries:

- **published architectures** (`gpt2`, `opt-125m`, `pythia-70m`, `smollm2-135m`, ...): the shapes
  of released models, for training from scratch at a known size (weights come from `zoo/`);
- **tiny test models** (`tiny-*`), one per architectural family and variant the canonical model
  supports, all at toy size. They are the one table every test draws its families from;
  `TINY_FAMILIES` lists them.

Keyword overrides replace any field, e.g. `from_name("tiny-llama", vocab_size=101, d_model=48)`;
`family_fields(name)` gives a preset's family without its sizes.
"""

from __future__ import annotations

import difflib
from typing import Any

from lmscope.model.config import ConfigError

# ---- building blocks: the fields that make a family (everything else is a size) ---------------

_GPT2 = dict(positional="learned", norm="layernorm", activation="gelu_tanh", architecture="gpt2")
_OPT = dict(positional="learned", norm="layernorm", activation="relu", architecture="opt")
_LLAMA = dict(
    positional="rope",
    norm="rmsnorm",
    activation="silu",
    gated_mlp=True,
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
    architecture="llama",
)
_QWEN2 = {**_LLAMA, "qkv_bias": True, "architecture": "qwen2"}  # biases on q/k/v only
_NEOX = dict(
    positional="rope",
    rotary_pct=0.25,
    norm="layernorm",
    activation="gelu",
    parallel_attn_mlp=True,
    tie_embeddings=False,
    architecture="gpt_neox",
)

_TINY_SIZE = dict(vocab_size=128, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=64)

# ---- tiny test models: every family and the variants that change the maths --------------------

_TINY: dict[str, dict[str, Any]] = {
    "tiny-gpt2": _GPT2,
    "tiny-opt": _OPT,
    "tiny-llama": {**_LLAMA, "n_kv_heads": 2},  # GQA, tied embeddings (as SmolLM2)
    "tiny-mistral": {**_LLAMA, "n_kv_heads": 2, "tie_embeddings": False, "architecture": "mistral"},
    "tiny-qwen2-mqa": {**_QWEN2, "n_kv_heads": 1},  # MQA with biases on q/k/v only
    "tiny-neox": _NEOX,  # parallel attention + MLP, partial rotary, untied
    "tiny-sinusoidal": dict(  # sinusoidal positions, bias-free q/k/v and norms, unembed bias
        positional="sinusoidal",
        activation="relu",
        qkv_bias=False,
        norm_bias=False,
        unembed_bias=True,
    ),
    "tiny-rope-llama3": dict(  # RoPE with Llama-3 frequency scaling, on a LayerNorm/GELU body
        positional="rope",
        rope_scaling={"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16},
    ),
    "tiny-gated-gelu": dict(  # gated GELU MLP, GQA and an unembedding bias
        positional="rope", gated_mlp=True, activation="gelu", unembed_bias=True, n_kv_heads=2
    ),
}

TINY_FAMILIES: tuple[str, ...] = tuple(_TINY)

# ---- published architectures --------------------------------------------------------------------

_PUBLISHED: dict[str, dict[str, Any]] = {
    "gpt2": {**_GPT2, "vocab_size": 50257, "d_model": 768, "n_layers": 12, "n_heads": 12,
             "n_ctx": 1024},
    "gpt2-medium": {**_GPT2, "vocab_size": 50257, "d_model": 1024, "n_layers": 24, "n_heads": 16,
                    "n_ctx": 1024},
    "opt-125m": {**_OPT, "vocab_size": 50272, "d_model": 768, "n_layers": 12, "n_heads": 12,
                 "d_mlp": 3072, "n_ctx": 2048},
    "pythia-70m": {**_NEOX, "vocab_size": 50304, "d_model": 512, "n_layers": 6, "n_heads": 8,
                   "d_mlp": 2048, "n_ctx": 2048},
    "pythia-160m": {**_NEOX, "vocab_size": 50304, "d_model": 768, "n_layers": 12, "n_heads": 12,
                    "d_mlp": 3072, "n_ctx": 2048},
    "smollm2-135m": {**_LLAMA, "vocab_size": 49152, "d_model": 576, "n_layers": 30, "n_heads": 9,
                     "n_kv_heads": 3, "d_mlp": 1536, "n_ctx": 8192, "rope_theta": 100000.0,
                     "bos_token_id": 1, "eos_token_id": 2},
}  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    **_PUBLISHED,
    **{name: {**_TINY_SIZE, **fields} for name, fields in _TINY.items()},
}


def preset_fields(name: str, **overrides: Any) -> dict[str, Any]:
    """The ModelConfig fields of preset `name`, with `overrides` applied (a fresh dict)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model preset {name!r}{hint}; available: {', '.join(PRESETS)}")
    fields = {key: (dict(v) if isinstance(v, dict) else v) for key, v in PRESETS[name].items()}
    fields.update(overrides)
    return fields


def family_fields(name: str) -> dict[str, Any]:
    """The fields of preset `name` that make its family, without its sizes (vocabulary, width,
    depth, heads, MLP width, context): to build that family at a size of one's own."""
    return {k: v for k, v in preset_fields(name).items() if k not in _TINY_SIZE}
