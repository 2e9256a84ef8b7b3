"""What every Hugging Face family converter shares: reading config fields (4.x and 5.x
spellings), the family record, and reading, renaming and packing tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lmscope.model.config import ActivationKind, ModelConfig
from lmscope.zoo.errors import ConversionError, UnsupportedModelError

HFConfig = Any  # a transformers PretrainedConfig, or the dict of its config.json

ACTIVATIONS: dict[str, ActivationKind] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",  # the tanh approximation with a rounded constant
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
ROPE_KINDS = ("default", "linear", "dynamic", "llama3")
# Buffers some checkpoints carry that hold no learned weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                    ".rotary_emb.inv_freq")  # fmt: skip


@dataclass(frozen=True)
class Family:
    """One Hugging Face model_type: how its config and its tensors become ours.

    config: (HF config, model_type) -> ModelConfig. weights: tensors under `prefix` -> our
    names (without the output head). head_names: where the output head may live (root names).
    """

    model_type: str
    config: Callable[[Any, str], ModelConfig]
    weights: Callable[[Source, ModelConfig], dict[str, torch.Tensor]]
    prefix: str
    head_names: tuple[str, ...] = ("lm_head.weight",)


# ---- config fields -----------------------------------------------------------------------------


def get(hf: Any, name: str, default: Any = None) -> Any:
    if isinstance(hf, Mapping):
        return hf.get(name, default)
    return getattr(hf, name, default)


def activation(hf: Any, attr: str, family: str) -> ActivationKind:
    name = get(hf, attr)
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{family} {attr}={name!r} is not supported; supported: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def common_fields(hf: Any, family: str) -> dict[str, Any]:
    """Fields shared by every family: identity, tokens, tying."""
    eos = get(hf, "eos_token_id")
    extra: dict[str, Any] = {}
    if isinstance(eos, (list, tuple)):
        extra["eos_token_ids"] = list(eos)
        eos = eos[0] if eos else None
    architectures = get(hf, "architectures")
    if architectures:
        extra["hf_architectures"] = list(architectures)
    return {
        "architecture": family,
        "bos_token_id": get(hf, "bos_token_id"),
        "eos_token_id": eos,
        "tie_embeddings": bool(get(hf, "tie_word_embeddings", True)),
        "init_std": float(get(hf, "initializer_range", 0.02)),
        "extra": extra,
    }


def standard_sizes(hf: Any) -> dict[str, Any]:
    """Vocabulary, width, depth, heads and context under the usual HF attribute names (every
    family here but GPT-2, which has its own)."""
    return {
        "vocab_size": hf.vocab_size,
        "d_model": hf.hidden_size,
        "n_layers": hf.num_hidden_layers,
        "n_heads": hf.num_attention_heads,
        "n_ctx": hf.max_position_embeddings,
    }


def rope(hf: Any, family: str) -> tuple[float, dict[str, Any] | None, float]:
    """(theta, lmscope rope_scaling, rotary fraction) from a 4.x or 5.x config."""
    params = dict(get(hf, "rope_parameters") or {})
    legacy = get(hf, "rope_scaling")
    if isinstance(legacy, Mapping) and not params:
        params = dict(legacy)
    theta = params.get("rope_theta") or get(hf, "rope_theta") or get(hf, "rotary_emb_base")
    fraction = (
        params.get("partial_rotary_factor")
        or get(hf, "partial_rotary_factor")
        or get(hf, "rotary_pct")
        or 1.0
    )
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_KINDS:
        raise UnsupportedModelError(
            f"{family} rope type {kind!r} is not supported; supported: {', '.join(ROPE_KINDS)}"
        )
    scaling: dict[str, Any] | None = None
    if kind in ("linear", "dynamic"):
        scaling = {"type": kind, "factor": float(params["factor"])}
    elif kind == "llama3":
        scaling = {
            "type": "llama3",
            "factor": float(params["factor"]),
            "low_freq_factor": float(params["low_freq_factor"]),
            "high_freq_factor": float(params["high_freq_factor"]),
            "original_max_position_embeddings": int(
                params.get("original_max_position_embeddings") or hf.max_position_embeddings
            ),
        }
    return float(theta or 10000.0), scaling, float(fraction)


# ---- tensors -----------------------------------------------------------------------------------


class Source:
    """HF tensors by name. The base-model prefix is optional (bare GPT2Model files lack it);
    every tensor read is remembered so that leftovers can be reported. Works on any mapping,
    including one that reads each tensor from disk only when asked (`LazyTensors`)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], prefix: str) -> None:
        self.tensors = state_dict
        self.prefix = prefix if any(k.startswith(prefix) for k in state_dict) else ""
        self.used: set[str] = set()

    def get(self, name: str, *, root: bool = False) -> torch.Tensor:
        tensor = self.optional(name, root=root)
        if tensor is None:
            key = name if root else self.prefix + name
            raise ConversionError(
                f"the Hugging Face state dict has no {key!r}; is it a complete checkpoint of "
                "the model its config describes?"
            )
        return tensor

    def optional(self, name: str, *, root: bool = False) -> torch.Tensor | None:
        key = name if root else self.prefix + name
        if key not in self.tensors:
            return None
        self.used.add(key)
        return self.tensors[key]

    def check_all_used(self) -> None:
        left = sorted(
            k for k in self.tensors if k not in self.used and not k.endswith(IGNORED_SUFFIXES)
        )
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise ConversionError(
                f"the Hugging Face state dict has tensors the converter does not use: {shown}; "
                "is it a causal-LM checkpoint of the family its config names?"
            )


def norm(
    out: dict[str, torch.Tensor], ours: str, src: Source, theirs: str, cfg: ModelConfig
) -> None:
    """A LayerNorm / RMSNorm. A parameter-free LayerNorm (OPT's layer_norm_elementwise_affine=False)
    becomes weight 1, bias 0."""
    weight = src.optional(theirs + ".weight")
    bias = src.optional(theirs + ".bias")
    if weight is None and cfg.norm == "layernorm":
        like = out["embed.weight"]
        weight = torch.ones(cfg.d_model, dtype=like.dtype, device=like.device)
        bias = torch.zeros_like(weight) if bias is None else bias
    out[ours + ".weight"] = weight if weight is not None else src.get(theirs + ".weight")
    if bias is not None:
        out[ours + ".bias"] = bias


def linear(
    out: dict[str, torch.Tensor], ours: str, src: Source, theirs: str, *, transpose: bool = False
) -> None:
    weight = src.get(theirs + ".weight")
    out[ours + ".weight"] = weight.t() if transpose else weight
    bias = src.optional(theirs + ".bias")
    if bias is not None:
        out[ours + ".bias"] = bias


def pack_qkv(
    out: dict[str, torch.Tensor], ours: str, src: Source, theirs: str, out_proj: str
) -> None:
    """Separate q_proj, k_proj, v_proj -> our packed [q | k | v]."""
    parts = [src.get(f"{theirs}{p}_proj.weight") for p in "qkv"]
    out[ours + "attn.qkv.weight"] = torch.cat(parts, dim=0)
    biases = [src.optional(f"{theirs}{p}_proj.bias") for p in "qkv"]
    present = [b for b in biases if b is not None]
    if present and len(present) != 3:
        raise ConversionError(f"{theirs}: some of q/k/v_proj have a bias and some do not")
    if present:
        out[ours + "attn.qkv.bias"] = torch.cat(present, dim=0)
    linear(out, ours + "attn.out", src, theirs + out_proj)
