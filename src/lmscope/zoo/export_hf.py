"""Export a canonical model as a Hugging Face directory (config.json, model.safetensors,
generation_config.json, tokenizer files) that transformers, vLLM, TGI or KServe load.

The weight layout is not written twice: each family's *import* map (zoo/hf/<family>.py) is run
on tensors of element ids shaped like that family's Hugging Face parameters; what comes out says,
for every element of every lmscope parameter, which Hugging Face element it was read from, and
the export writes it back there. The config is chosen per family and checked the same way: the
import of the exported config must give back this model's architecture, field for field, or the
export stops and names the fields the family cannot express.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from lmscope.files import staged_dir
from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo.errors import UnsupportedModelError
from lmscope.zoo.hf.common import ACTIVATIONS
from lmscope.zoo.hf.convert import config_from_hf, state_dict_from_hf
from lmscope.zoo.hf.families import FAMILIES

ID_BASE = 1 << 20  # element ids start here; smaller values are constants the importer made
# Fields that describe training or bookkeeping, not the function the model computes.
NOT_ARCHITECTURE = {"architecture", "extra", "init_std", "dropout", "bos_token_id", "eos_token_id"}
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "opt": "OPTForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
}
SEARCH_ORDER = ("llama", "qwen2", "mistral", "gpt2", "opt", "gpt_neox")


class ExportError(UnsupportedModelError):
    """A model (or feature) the target format cannot express."""


def _hf_activation(cfg: ModelConfig) -> str:
    preferred = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
    name = preferred.get(cfg.activation)
    if name is None or ACTIVATIONS.get(name) != cfg.activation:
        raise ExportError(f"activation {cfg.activation!r} has no Hugging Face name")
    return name


def _rope_fields(cfg: ModelConfig) -> dict[str, Any]:
    scaling = None
    if cfg.rope_scaling:
        scaling = dict(cfg.rope_scaling)
        scaling["rope_type"] = scaling.pop("type")
    return {"rope_theta": cfg.rope_theta, "rope_scaling": scaling}


def hf_config_fields(cfg: ModelConfig, family: str) -> dict[str, Any]:
    """config.json fields (transformers' attribute names) describing `cfg` as `family`."""
    common: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.extra.get("eos_token_ids", cfg.eos_token_id),
        "initializer_range": cfg.init_std,
        "architectures": [ARCHITECTURES[family]],
    }
    sizes = {
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "max_position_embeddings": cfg.n_ctx,
    }
    if family == "gpt2":
        return common | {
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.mlp_dim,
            "n_positions": cfg.n_ctx,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": _hf_activation(cfg),
        }
    if family == "opt":
        return (
            common
            | sizes
            | {
                "ffn_dim": cfg.mlp_dim,
                "word_embed_proj_dim": cfg.d_model,
                "do_layer_norm_before": True,
                "enable_bias": cfg.qkv_bias,
                "activation_function": _hf_activation(cfg),
            }
        )
    if family == "gpt_neox":
        return (
            common
            | sizes
            | {
                "intermediate_size": cfg.mlp_dim,
                "rotary_pct": cfg.rotary_pct,
                "partial_rotary_factor": cfg.rotary_pct,
                "rotary_emb_base": cfg.rope_theta,
                "layer_norm_eps": cfg.norm_eps,
                "hidden_act": _hf_activation(cfg),
                "use_parallel_residual": cfg.parallel_attn_mlp,
                "attention_bias": cfg.qkv_bias,
                **_rope_fields(cfg),
            }
        )
    fields = (
        common
        | sizes
        | {
            "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim,
            "intermediate_size": cfg.mlp_dim,
            "hidden_act": _hf_activation(cfg),
            "rms_norm_eps": cfg.norm_eps,
            "mlp_bias": cfg.mlp_bias,
            **_rope_fields(cfg),
        }
    )
    if family == "llama":
        fields["attention_bias"] = cfg.qkv_bias
    if family in ("mistral", "qwen2"):
        fields["sliding_window"] = None
    return fields


def _architecture(cfg: ModelConfig) -> dict[str, Any]:
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in NOT_ARCHITECTURE
    }


def hf_config_for(cfg: ModelConfig, family: str | None = None) -> Any:
    """A transformers config for `cfg`: its own family (`cfg.architecture`) or the first that
    expresses it exactly; ExportError naming what no family can express."""
    from transformers import AutoConfig

    candidates = (
        [family]
        if family
        else ([cfg.architecture] if cfg.architecture in FAMILIES else list(SEARCH_ORDER))
    )
    problems: list[str] = []
    for name in candidates:
        if name not in FAMILIES:
            raise ExportError(f"unknown family {name!r}; supported: {', '.join(FAMILIES)}")
        try:
            fields = hf_config_fields(cfg, name)
            hf = AutoConfig.for_model(name, **fields)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                back = config_from_hf(hf)
        except (ExportError, UnsupportedModelError, ValueError, KeyError) as err:
            problems.append(f"{name}: {err}")
            continue
        ours, theirs = _architecture(cfg), _architecture(back)
        differ = [k for k in ours if ours[k] != theirs[k]]
        if not differ:
            return hf
        problems.append(f"{name} cannot express " + ", ".join(f"{k}={ours[k]!r}" for k in differ))
    raise ExportError("this model has no Hugging Face equivalent: " + "; ".join(problems))


def hf_state_dict(model: Transformer, hf_config: Any) -> dict[str, torch.Tensor]:
    """Hugging Face tensors for `model` under `hf_config`, by inverting the family's import map
    (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    ids: dict[str, torch.Tensor] = {}
    start = ID_BASE
    for name, shape in shapes.items():
        n = int(torch.Size(shape).numel())
        ids[name] = torch.arange(start, start + n, dtype=torch.float64).reshape(shape)
        start += n
    mapped = state_dict_from_hf(ids, hf_config)  # our name -> the HF element id of each value
    flat = torch.zeros(start - ID_BASE, dtype=model.dtype)
    covered = torch.zeros(start - ID_BASE, dtype=torch.bool)
    ours = model.state_dict()
    for name, where in mapped.items():
        value = ours[name].detach().to("cpu").reshape(-1)
        where = where.reshape(-1)
        if value.numel() != where.numel():
            raise ExportError(f"{name}: {tuple(ours[name].shape)} does not fit the HF layout")
        is_id = where >= ID_BASE
        if not torch.equal(value[~is_id].double(), where[~is_id]):
            raise ExportError(
                f"{name} holds learned values where {hf_config.model_type} has a constant "
                "(e.g. a LayerNorm without affine parameters)"
            )
        index = (where[is_id] - ID_BASE).long()
        flat[index] = value[is_id]
        covered[index] = True
    out: dict[str, torch.Tensor] = {}
    for name, tensor in ids.items():
        lo = int(tensor.reshape(-1)[0]) - ID_BASE if tensor.numel() else 0
        span = slice(lo, lo + tensor.numel())
        if tensor.numel() and covered[span].any():
            out[name] = flat[span].reshape(tensor.shape).clone()
    if getattr(hf_config, "tie_word_embeddings", False):
        out.pop("lm_head.weight", None)  # tied: transformers rebuilds it from the embeddings
    return out


def export_hf(
    model: Transformer,
    tokenizer: Any,
    out: str | Path,
    *,
    overwrite: bool = False,
    family: str | None = None,
    source: str | Path | None = None,
) -> Path:
    """Write `model` (and its tokenizer, when given) as a Hugging Face directory at `out`; a
    model card (README.md) in the `source` checkpoint directory comes along. Nothing is left
    at `out` if anything fails."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; pass overwrite=True (--overwrite) to replace it"
        )
    hf_config = hf_config_for(model.cfg, family)
    hf_config.torch_dtype = str(model.dtype).removeprefix("torch.")
    tensors = hf_state_dict(model, hf_config)
    with staged_dir(out) as tmp:
        hf_config.save_pretrained(tmp)
        weights = {k: v.contiguous() for k, v in tensors.items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        GenerationConfig.from_model_config(hf_config).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if source is not None:
            copy_model_card(Path(source), tmp)
    return out


def copy_model_card(source: Path, out: Path) -> bool:
    """Carry a model card (README.md) from the checkpoint directory, when it has one."""
    card = source / "README.md"
    if not source.is_dir() or not card.is_file():
        return False
    shutil.copyfile(card, out / "README.md")
    return True


def describe(out: Path) -> str:
    config = json.loads((out / "config.json").read_text())
    return f"{config.get('model_type')} ({', '.join(config.get('architectures') or [])})"
