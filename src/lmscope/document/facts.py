"""Facts about a model that lmscope can run (our checkpoints, Hugging Face directories, GGUF
files, the embedded default): computed from the model itself and the records beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmscope.document.architecture import TASK, architecture_choices, component_parameters
from lmscope.document.layers import layer_table
from lmscope.document.records import data_facts, find_training_record, training_facts
from lmscope.document.skeleton import finish, new_facts
from lmscope.model.transformer import Attention, Transformer

DEFAULT_POSITIONS = 128  # sequence length the layer table's shapes are measured at


def attention_core_macs(cfg: Any, positions: int) -> int:
    """Multiply-adds per token of scores (QK^T) and mixing (AV), causal: token i sees i + 1
    keys, so the mean over T positions is H * d_head * (T + 1)."""
    return int(cfg.n_heads * cfg.head_dim * (positions + 1))


def canonical_layers(model: Transformer, positions: int) -> dict[str, Any]:
    positions = max(1, min(positions, model.cfg.n_ctx))
    tokens = torch.zeros(1, positions, dtype=torch.long)

    def extra(path: str, module: torch.nn.Module) -> int:
        return attention_core_macs(model.cfg, positions) if isinstance(module, Attention) else 0

    rows = layer_table(model, lambda: model.run_with_trace(tokens, names=()), positions, extra)
    return {"positions": positions, "macs_unit": "per token", "rows": rows}


def _tokenizer_facts(tokenizer: Any, cfg: Any) -> dict[str, Any] | None:
    if tokenizer is None:
        return None
    specials = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, key, None)
        if isinstance(value, str):
            specials[key.removesuffix("_token")] = value
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer) if hasattr(tokenizer, "__len__") else cfg.vocab_size,
        "special_tokens": specials,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


def display_name(name: str) -> str:
    """A model's name for a card: a registered name as is, a path by its last part(s)
    (`runs/tiny/model` -> `tiny/model`, since trainers call every final model `model`)."""
    path = Path(name)
    if len(path.parts) <= 1:
        return name
    parts = path.resolve().parts
    if path.name in ("model", "final", "merged") or path.name.startswith("step-"):
        return "/".join(parts[-2:])
    return parts[-1]


def _stored_count(facts: dict[str, Any], source: Path | None) -> None:
    """A Hugging Face directory's own count becomes the total when it differs from the
    converted model's (the canonical count is kept beside it, with the difference)."""
    from lmscope.zoo.checkpoint import is_checkpoint

    if source is None or not source.is_dir() or is_checkpoint(source):
        return
    from lmscope.document.stored import stored_parameters

    stored = stored_parameters(source)
    params = facts["overview"]["parameters"]
    if stored is not None and stored != params["total"]:
        params["canonical_total"] = params["total"]
        params["total"] = stored
        params["note"] = (
            f"the source files hold {stored - params['canonical_total']} parameters the "
            "converted model does not use (e.g. OPT's reserved position rows)"
        )


def loaded_facts(
    loaded: Any,
    *,
    positions: int = DEFAULT_POSITIONS,
    probe: bool = True,
    eval_path: Path | None = None,
) -> dict[str, Any]:
    """Facts of a `zoo.registry.LoadedModel` (its `.source` is where the files are)."""
    model: Transformer = loaded.model
    cfg = model.cfg
    source = Path(loaded.source) if loaded.source else None
    facts = new_facts(display_name(loaded.name), "lmscope", loaded.source, True)
    counts = model.parameter_counts()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    facts["overview"] = {
        "family": cfg.architecture,
        "task": TASK,
        "parameters": {
            "total": counts["total"],
            "trainable": trainable,
            "by_component": component_parameters(counts),
            "tied_embeddings_counted_once": cfg.tie_embeddings,
        },
        "context_length": cfg.n_ctx,
        "vocab_size": cfg.vocab_size,
        "dtype": str(model.dtype).replace("torch.", ""),
        "file_size_bytes": None,
        "checksum": None,
        "tokenizer": _tokenizer_facts(loaded.tokenizer, cfg),
    }
    _stored_count(facts, source)
    facts["layers"] = canonical_layers(model, positions)
    facts["architecture"] = architecture_choices(cfg)
    problems: list[str] = facts["problems"]
    record = find_training_record(source, problems) if source is not None else None
    if record is not None:
        facts["training"] = training_facts(record)
        manifest = record.get("data_manifest")
        if isinstance(manifest, dict):
            facts["data"] = data_facts(manifest)
    if probe:
        from lmscope.document.probe import highlights

        facts["interpretability"] = highlights(model, loaded.tokenizer)
    return finish(facts, source, eval_path)
