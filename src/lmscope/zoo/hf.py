"""Hugging Face checkpoints -> the canonical lmscope Transformer.

Families: GPT-2, OPT (pre-LN), LLaMA / Mistral / Qwen2 and GPT-NeoX (Pythia). Each family has
a config map (`config_from_hf`) and a weight map (`state_dict_from_hf`); a conversion is right
when the canonical model's logits match the Hugging Face model's.

Works with transformers 4.x (rope_theta / rope_scaling / rotary_pct attributes) and 5.x (one
`rope_parameters` dict; GPT-NeoX's `embed_out` renamed `lm_head`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.model.config import ActivationKind, ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo.checkpoint import model_from_state_dict
from lmscope.zoo.errors import ConversionError, UnsupportedModelError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

SUPPORTED_FAMILIES = ("gpt2", "opt", "llama", "mistral", "qwen2", "gpt_neox")

_ACTIVATIONS: dict[str, ActivationKind] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",  # the tanh approximation with a rounded constant
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ROPE_KINDS = ("default", "linear", "dynamic", "llama3")
# Buffers some checkpoints carry that hold no learned weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                     ".rotary_emb.inv_freq")  # fmt: skip

HFConfig = Any  # a transformers PretrainedConfig, or the dict of its config.json


# ---- configs -----------------------------------------------------------------------------------


def family_of(hf_config: HFConfig) -> str:
    """The HF model_type, checked against SUPPORTED_FAMILIES."""
    model_type = _get(hf_config, "model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"unsupported Hugging Face model type {model_type!r}; "
            f"supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return str(model_type)


def config_from_hf(hf_config: HFConfig) -> ModelConfig:
    """The ModelConfig that describes a Hugging Face config (object or config.json dict)."""
    hf_config = _as_config(hf_config)
    family = family_of(hf_config)
    return _CONFIGS[family](hf_config, family)


def _as_config(hf_config: HFConfig) -> Any:
    if isinstance(hf_config, Mapping):
        from transformers import AutoConfig

        data = dict(hf_config)
        model_type = family_of(data)
        data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)
    return hf_config


def _get(hf: Any, name: str, default: Any = None) -> Any:
    if isinstance(hf, Mapping):
        return hf.get(name, default)
    return getattr(hf, name, default)


def _activation(hf: Any, attr: str, family: str) -> ActivationKind:
    name = _get(hf, attr)
    if name not in _ACTIVATIONS:
        raise UnsupportedModelError(
            f"{family} {attr}={name!r} is not supported; supported: {', '.join(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def _common(hf: Any, family: str) -> dict[str, Any]:
    """Fields shared by every family: identity, tokens, tying."""
    eos = _get(hf, "eos_token_id")
    extra: dict[str, Any] = {}
    if isinstance(eos, (list, tuple)):
        extra["eos_token_ids"] = list(eos)
        eos = eos[0] if eos else None
    architectures = _get(hf, "architectures")
    if architectures:
        extra["hf_architectures"] = list(architectures)
    return {
        "architecture": family,
        "bos_token_id": _get(hf, "bos_token_id"),
        "eos_token_id": eos,
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", True)),
        "init_std": float(_get(hf, "initializer_range", 0.02)),
        "extra": extra,
    }


def _gpt2_config(hf: Any, family: str) -> ModelConfig:
    if not _get(hf, "scale_attn_weights", True):
        raise UnsupportedModelError("GPT-2 with scale_attn_weights=False is not supported")
    if _get(hf, "scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedModelError(
            "GPT-2 with scale_attn_by_inverse_layer_idx=True is not supported"
        )
    if _get(hf, "add_cross_attention", False):
        raise UnsupportedModelError("GPT-2 with cross-attention is not a decoder-only model")
    return ModelConfig(
        vocab_size=hf.vocab_size,
        d_model=hf.n_embd,
        n_layers=hf.n_layer,
        n_heads=hf.n_head,
        d_mlp=_get(hf, "n_inner") or 4 * hf.n_embd,
        n_ctx=hf.n_positions,
        positional="learned",
        norm="layernorm",
        norm_eps=hf.layer_norm_epsilon,
        activation=_activation(hf, "activation_function", family),
        **_common(hf, family),
    )


def _opt_config(hf: Any, family: str) -> ModelConfig:
    if not _get(hf, "do_layer_norm_before", True):
        raise UnsupportedModelError(
            "OPT with do_layer_norm_before=False (post-LN, e.g. opt-350m) is not supported: "
            "the canonical block normalises before attention and MLP"
        )
    proj = _get(hf, "word_embed_proj_dim")
    if proj not in (None, hf.hidden_size):
        raise UnsupportedModelError(
            f"OPT with word_embed_proj_dim={proj} != hidden_size={hf.hidden_size} (projected "
            "embeddings, e.g. opt-350m) is not supported"
        )
    if _get(hf, "_remove_final_layer_norm", False):
        raise UnsupportedModelError("OPT with _remove_final_layer_norm=True is not supported")
    bias = bool(_get(hf, "enable_bias", True))
    return ModelConfig(
        vocab_size=hf.vocab_size,
        d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        d_mlp=hf.ffn_dim,
        n_ctx=hf.max_position_embeddings,
        positional="learned",
        norm="layernorm",
        norm_eps=1e-5,  # OPT uses nn.LayerNorm's default
        activation=_activation(hf, "activation_function", family),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        **_common(hf, family),
    )


def _rope(hf: Any, family: str) -> tuple[float, dict[str, Any] | None, float]:
    """(theta, lmscope rope_scaling, rotary fraction) from a 4.x or 5.x config."""
    params = dict(_get(hf, "rope_parameters") or {})
    legacy = _get(hf, "rope_scaling")
    if isinstance(legacy, Mapping) and not params:
        params = dict(legacy)
    theta = params.get("rope_theta") or _get(hf, "rope_theta") or _get(hf, "rotary_emb_base")
    fraction = (
        params.get("partial_rotary_factor")
        or _get(hf, "partial_rotary_factor")
        or _get(hf, "rotary_pct")
        or 1.0
    )
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_KINDS:
        raise UnsupportedModelError(
            f"{family} rope type {kind!r} is not supported; supported: {', '.join(_ROPE_KINDS)}"
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


def _llama_config(hf: Any, family: str) -> ModelConfig:
    theta, scaling, fraction = _rope(hf, family)
    if family == "qwen2":  # q/k/v carry biases, the output projection does not
        qkv_bias, out_bias = True, False
    else:
        qkv_bias = out_bias = bool(_get(hf, "attention_bias", False))
    n_ctx = hf.max_position_embeddings
    common = _common(hf, family)
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
        vocab_size=hf.vocab_size,
        d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        n_kv_heads=_get(hf, "num_key_value_heads") or hf.num_attention_heads,
        d_head=_get(hf, "head_dim") or hf.hidden_size // hf.num_attention_heads,
        d_mlp=hf.intermediate_size,
        n_ctx=n_ctx,
        positional="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_pct=fraction,
        norm="rmsnorm",
        norm_eps=hf.rms_norm_eps,
        activation=_activation(hf, "hidden_act", family),
        gated_mlp=True,
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        mlp_bias=bool(_get(hf, "mlp_bias", False)),
        **common,
    )


def _sliding_window(hf: Any, family: str) -> int | None:
    """The attention window HF applies to some layer, or None when every layer sees everything."""
    window = _get(hf, "sliding_window")
    if window is None:
        return None
    if family == "qwen2" and not _get(hf, "use_sliding_window", False):
        return None
    layer_types = _get(hf, "layer_types")
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def _neox_config(hf: Any, family: str) -> ModelConfig:
    theta, scaling, fraction = _rope(hf, family)
    bias = bool(_get(hf, "attention_bias", True))
    return ModelConfig(
        vocab_size=hf.vocab_size,
        d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        d_mlp=hf.intermediate_size,
        n_ctx=hf.max_position_embeddings,
        positional="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_pct=fraction,
        norm="layernorm",
        norm_eps=hf.layer_norm_eps,
        activation=_activation(hf, "hidden_act", family),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=True,
        parallel_attn_mlp=bool(_get(hf, "use_parallel_residual", True)),
        **{**_common(hf, family), "tie_embeddings": bool(_get(hf, "tie_word_embeddings", False))},
    )


_CONFIGS: dict[str, Callable[[Any, str], ModelConfig]] = {
    "gpt2": _gpt2_config,
    "opt": _opt_config,
    "llama": _llama_config,
    "mistral": _llama_config,
    "qwen2": _llama_config,
    "gpt_neox": _neox_config,
}

# ---- weights -----------------------------------------------------------------------------------


class _Source:
    """HF tensors by name. The base-model prefix is optional (bare GPT2Model files lack it);
    every tensor read is remembered so that leftovers can be reported."""

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
            k for k in self.tensors if k not in self.used and not k.endswith(_IGNORED_SUFFIXES)
        )
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise ConversionError(
                f"the Hugging Face state dict has tensors the converter does not use: {shown}; "
                "is it a causal-LM checkpoint of the family its config names?"
            )


def state_dict_from_hf(
    hf_state_dict: Mapping[str, torch.Tensor], hf_config: HFConfig
) -> dict[str, torch.Tensor]:
    """Rename, transpose and pack HF tensors into lmscope parameter names.

    With tied embeddings `unembed.weight` is the same tensor as `embed.weight`, so the result
    loads into `Transformer.load_state_dict` as it is.
    """
    hf = _as_config(hf_config)
    family = family_of(hf)
    cfg = _quiet_config(hf)  # from_hf and config_from_hf already warn
    mapper, prefix, head_names = _WEIGHTS[family]
    src = _Source(hf_state_dict, prefix)
    out = mapper(src, cfg)
    head = None
    for name in head_names:
        head = src.optional(name, root=True)
        if head is not None:
            break
    if cfg.tie_embeddings:
        out["unembed.weight"] = out["embed.weight"]
    elif head is None:
        raise ConversionError(
            f"the Hugging Face state dict has no output head ({' or '.join(head_names)}) and "
            "its config does not tie it to the embeddings"
        )
    else:
        out["unembed.weight"] = head
    src.check_all_used()
    return {name: t.contiguous() for name, t in out.items()}


def _quiet_config(hf: Any) -> ModelConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return config_from_hf(hf)


def _norm(
    out: dict[str, torch.Tensor], ours: str, src: _Source, theirs: str, cfg: ModelConfig
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


def _linear(
    out: dict[str, torch.Tensor],
    ours: str,
    src: _Source,
    theirs: str,
    *,
    transpose: bool = False,
) -> None:
    weight = src.get(theirs + ".weight")
    out[ours + ".weight"] = weight.t() if transpose else weight
    bias = src.optional(theirs + ".bias")
    if bias is not None:
        out[ours + ".bias"] = bias


def _gpt2_weights(src: _Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    # Conv1D stores weights as [in, out]; c_attn's output is already [q | k | v].
    out = {"embed.weight": src.get("wte.weight"), "pos_embed.weight": src.get("wpe.weight")}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        _norm(out, ours + "ln1", src, theirs + "ln_1", cfg)
        _linear(out, ours + "attn.qkv", src, theirs + "attn.c_attn", transpose=True)
        _linear(out, ours + "attn.out", src, theirs + "attn.c_proj", transpose=True)
        _norm(out, ours + "ln2", src, theirs + "ln_2", cfg)
        _linear(out, ours + "mlp.fc_in", src, theirs + "mlp.c_fc", transpose=True)
        _linear(out, ours + "mlp.fc_out", src, theirs + "mlp.c_proj", transpose=True)
    _norm(out, "ln_final", src, "ln_f", cfg)
    return out


def _opt_weights(src: _Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    # OPT's position table has two extra leading rows: HF looks it up at position + 2.
    positions = src.get("embed_positions.weight")
    out = {"embed.weight": src.get("embed_tokens.weight"), "pos_embed.weight": positions[2:]}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"layers.{i}."
        _norm(out, ours + "ln1", src, theirs + "self_attn_layer_norm", cfg)
        _pack_qkv(out, ours, src, theirs + "self_attn.", "out_proj")
        _norm(out, ours + "ln2", src, theirs + "final_layer_norm", cfg)
        _linear(out, ours + "mlp.fc_in", src, theirs + "fc1")
        _linear(out, ours + "mlp.fc_out", src, theirs + "fc2")
    _norm(out, "ln_final", src, "final_layer_norm", cfg)
    return out


def _pack_qkv(
    out: dict[str, torch.Tensor], ours: str, src: _Source, theirs: str, out_proj: str
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
    _linear(out, ours + "attn.out", src, theirs + out_proj)


def _llama_weights(src: _Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"embed.weight": src.get("embed_tokens.weight")}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"layers.{i}."
        _norm(out, ours + "ln1", src, theirs + "input_layernorm", cfg)
        _pack_qkv(out, ours, src, theirs + "self_attn.", "o_proj")
        _norm(out, ours + "ln2", src, theirs + "post_attention_layernorm", cfg)
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
        _linear(out, ours + "mlp.fc_out", src, mlp + "down_proj")
    _norm(out, "ln_final", src, "norm", cfg)
    return out


def _neox_weights(src: _Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    heads, d_head = cfg.n_heads, cfg.head_dim
    out = {"embed.weight": src.get("embed_in.weight")}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"layers.{i}."
        _norm(out, ours + "ln1", src, theirs + "input_layernorm", cfg)
        # query_key_value's outputs are laid out per head as [head, (q, k, v), d_head].
        weight = src.get(theirs + "attention.query_key_value.weight")
        out[ours + "attn.qkv.weight"] = (
            weight.reshape(heads, 3, d_head, -1).transpose(0, 1).reshape(3 * heads * d_head, -1)
        )
        bias = src.optional(theirs + "attention.query_key_value.bias")
        if bias is not None:
            out[ours + "attn.qkv.bias"] = bias.reshape(heads, 3, d_head).transpose(0, 1).reshape(-1)
        _linear(out, ours + "attn.out", src, theirs + "attention.dense")
        _norm(out, ours + "ln2", src, theirs + "post_attention_layernorm", cfg)
        _linear(out, ours + "mlp.fc_in", src, theirs + "mlp.dense_h_to_4h")
        _linear(out, ours + "mlp.fc_out", src, theirs + "mlp.dense_4h_to_h")
    _norm(out, "ln_final", src, "final_layer_norm", cfg)
    return out


_Mapper = Callable[[_Source, ModelConfig], dict[str, torch.Tensor]]
# family -> (weight map, base-model prefix, possible names of the output head)
_WEIGHTS: dict[str, tuple[_Mapper, str, tuple[str, ...]]] = {
    "gpt2": (_gpt2_weights, "transformer.", ("lm_head.weight",)),
    "opt": (_opt_weights, "model.decoder.", ("lm_head.weight",)),
    "llama": (_llama_weights, "model.", ("lm_head.weight",)),
    "mistral": (_llama_weights, "model.", ("lm_head.weight",)),
    "qwen2": (_llama_weights, "model.", ("lm_head.weight",)),
    "gpt_neox": (_neox_weights, "gpt_neox.", ("embed_out.weight", "lm_head.weight")),
}

# ---- whole models ------------------------------------------------------------------------------


def from_hf(
    model_or_path: PreTrainedModel | str | Path, dtype: torch.dtype = torch.float32
) -> Transformer:
    """A canonical Transformer (eval mode, on CPU) with the weights of a Hugging Face causal LM.

    model_or_path: a loaded `PreTrainedModel`, or a local directory holding config.json and
    safetensors weights (nothing is downloaded; pickled .bin weights are refused).
    """
    if isinstance(model_or_path, (str, Path)):
        hf_model = _load_local(Path(model_or_path), dtype)
        owned = True
    else:
        hf_model, owned = model_or_path, False
    hf_config = hf_model.config
    cfg = config_from_hf(hf_config)
    hf_state = hf_model.state_dict()
    tensors = state_dict_from_hf(hf_state, hf_config)
    if not owned:  # never share memory with the caller's model
        theirs = {t.untyped_storage().data_ptr() for t in hf_state.values()}
        tensors = {
            name: t.clone() if t.untyped_storage().data_ptr() in theirs else t
            for name, t in tensors.items()
        }
    tensors = {name: t.detach().to("cpu") for name, t in tensors.items()}
    return model_from_state_dict(
        cfg,
        tensors,
        dtype=dtype,
        source=f"converted {cfg.architecture} weights",
        error=ConversionError,
    )


def _load_local(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no Hugging Face model at {path}: expected a directory with config.json "
            "(models are never downloaded; save one with model.save_pretrained(path))"
        )
    if not any(path.glob("*.safetensors")):
        raise UnsupportedModelError(
            f"{path} has no .safetensors weights; lmscope does not unpickle .bin files. Load "
            "the model with transformers yourself and pass the object to from_hf, or re-save "
            "it with save_pretrained(..., safe_serialization=True)"
        )
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    family_of(hf_config)  # fail early, with the list of supported families
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, use_safetensors=True, **{dtype_arg: dtype}
    )
    return model


# ---- back to Hugging Face (LLaMA only) -----------------------------------------------------------


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
