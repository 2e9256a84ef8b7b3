"""Facts of a Hugging Face config.json alone (no weights): any family is described from its
fields; parameters are computed where the family is known.

Decoder families lmscope runs (GPT-2, OPT, LLaMA/Mistral/Qwen2, GPT-NeoX) are built on the meta
device (no memory, no weights), so the layer table and counts are those of the canonical model.
BERT, T5 and ViT are counted by their published layer formulas, matching transformers'
`num_parameters()` for the class named in `architectures` (tied weights once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmscope.document.errors import DocError
from lmscope.document.skeleton import new_facts


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DocError(f"{path} is not a readable JSON config: {err}") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise DocError(
            f"{path} is neither a model nor a known config (no model_type); give a model "
            "directory, a Hugging Face config.json, a .onnx, .keras or .gguf file"
        )
    return data


def runnable_family(path: Path) -> bool:
    from lmscope.zoo.hf.families import FAMILIES

    try:
        return read_config(path).get("model_type") in FAMILIES
    except DocError:
        return False


def _bert(c: dict[str, Any], arch: str) -> dict[str, int]:
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    emb = (
        v * h + c.get("max_position_embeddings", 512) * h + c.get("type_vocab_size", 2) * h + 2 * h
    )
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    counts = {"embeddings": emb, "encoder": c["num_hidden_layers"] * layer}
    labels = len(c.get("id2label") or {}) or 2
    if arch.endswith("ForMaskedLM"):
        counts["mlm_head"] = (h * h + h) + 2 * h + v  # decoder weight tied to embeddings
    elif arch.endswith("ForSequenceClassification"):
        counts["pooler"] = h * h + h
        counts["classifier"] = h * labels + labels
    else:
        counts["pooler"] = h * h + h
    return counts


def _t5(c: dict[str, Any], arch: str) -> dict[str, int]:
    d, ff, v = c["d_model"], c["d_ff"], c["vocab_size"]
    inner = c["num_heads"] * c["d_kv"]
    gated = str(c.get("feed_forward_proj", "relu")).startswith("gated")
    ffn = (2 if gated else 1) * d * ff + ff * d
    attn = 4 * d * inner
    rel = c.get("relative_attention_num_buckets", 32) * c["num_heads"]
    n_dec = c.get("num_decoder_layers") or c["num_layers"]
    counts = {
        "shared_embeddings": v * d,
        "encoder": c["num_layers"] * (attn + ffn + 2 * d) + rel + d,
        "decoder": n_dec * (2 * attn + ffn + 3 * d) + rel + d,
    }
    if arch.endswith("ForConditionalGeneration") and not c.get("tie_word_embeddings", True):
        counts["lm_head"] = v * d
    return counts


def _vit(c: dict[str, Any], arch: str) -> dict[str, int]:
    h, i = c["hidden_size"], c["intermediate_size"]
    p, img, ch = c.get("patch_size", 16), c.get("image_size", 224), c.get("num_channels", 3)
    bias = 1 if c.get("qkv_bias", True) else 0
    patches = (img // p) ** 2
    layer = 2 * h + 3 * (h * h + bias * h) + (h * h + h) + 2 * h + (h * i + i) + (i * h + h)
    counts = {
        "embeddings": h + (patches + 1) * h + (ch * p * p * h + h),
        "encoder": c["num_hidden_layers"] * layer,
        "final_norm": 2 * h,
    }
    labels = len(c.get("id2label") or {}) or 2
    if arch.endswith("ForImageClassification"):
        counts["classifier"] = h * labels + labels
    else:
        counts["pooler"] = h * h + h
    return counts


_FORMULAS = {"bert": (_bert, "fill-mask"), "t5": (_t5, "text2text-generation"),
             "vit": (_vit, "image-classification")}  # fmt: skip
_KIND = {"bert": "encoder-only transformer", "t5": "encoder-decoder transformer",
         "vit": "vision transformer (encoder)"}  # fmt: skip


def _runnable_from_config(config: dict[str, Any], facts: dict[str, Any]) -> None:
    import torch

    from lmscope.document.architecture import TASK, architecture_choices, component_parameters
    from lmscope.model.transformer import Transformer
    from lmscope.zoo.hf.convert import config_from_hf

    cfg = config_from_hf(config)
    with torch.device("meta"):
        model = Transformer(cfg)
    counts = model.parameter_counts()
    if config.get("model_type") == "opt":  # HF keeps 2 reserved rows in OPT's position table
        counts["pos_embed"] = counts.get("pos_embed", 0) + 2 * cfg.d_model
        counts["total"] += 2 * cfg.d_model
    facts["overview"].update(
        family=cfg.architecture, task=TASK, context_length=cfg.n_ctx, vocab_size=cfg.vocab_size,
        parameters={"total": counts["total"], "by_component": component_parameters(counts),
                    "tied_embeddings_counted_once": cfg.tie_embeddings},
    )  # fmt: skip
    facts["architecture"] = architecture_choices(cfg)


def config_facts(path: Path) -> dict[str, Any]:
    config = read_config(path)
    model_type = str(config["model_type"])
    archs = config.get("architectures") or [model_type]
    arch = str(archs[0])
    facts = new_facts(path.parent.name or path.name, "hf-config", str(path), False)
    facts["overview"].update(
        family=model_type, dtype=config.get("torch_dtype") or config.get("dtype")
    )
    from lmscope.zoo.hf.families import FAMILIES

    if model_type in FAMILIES:
        _runnable_from_config(config, facts)
    elif model_type in _FORMULAS:
        formula, task = _FORMULAS[model_type]
        try:
            counts = formula(config, arch)
        except KeyError as err:
            raise DocError(f"{path}: a {model_type} config needs the field {err}") from None
        facts["overview"].update(
            task=task,
            parameters={"total": sum(counts.values()), "by_component": counts, "counted_as": arch},
            context_length=config.get("max_position_embeddings") or config.get("n_positions"),
            vocab_size=config.get("vocab_size"),
        )
    else:
        facts["problems"].append(
            f"parameters of model_type {model_type!r} are not computed (known: "
            f"{', '.join(sorted(set(FAMILIES) | set(_FORMULAS)))})"
        )
    scalars = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
    if not facts["architecture"]:
        facts["architecture"] = {
            "kind": _KIND.get(model_type, model_type),
            "class": arch,
            **scalars,
        }
    return facts
