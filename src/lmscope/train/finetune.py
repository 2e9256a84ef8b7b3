"""Fine-tuning helpers: freezing, gradual unfreezing, and LoRA through PEFT.

Freezing acts on the canonical parameter names: `embed`/`pos_embed` (and `unembed` when it is tied
to `embed`) and `blocks.{i}.*`. Gradual unfreezing thaws the frozen blocks from the top down,
one every `unfreeze_every` steps, so what is trainable is a pure function of the step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmscope.files import staged_dir
from lmscope.model.transformer import Transformer
from lmscope.train.config import FinetuneSection, LoraSection
from lmscope.train.errors import ResumeError, TrainConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class FreezePlan:
    n_layers: int
    freeze_layers: int = 0
    freeze_embeddings: bool = False
    unfreeze_every: int | None = None

    @classmethod
    def from_config(cls, section: FinetuneSection, n_layers: int) -> FreezePlan:
        if section.freeze_layers > n_layers:
            raise TrainConfigError(
                f"finetune.freeze_layers ({section.freeze_layers}) exceeds the model's "
                f"{n_layers} layers"
            )
        return cls(
            n_layers, section.freeze_layers, section.freeze_embeddings, section.unfreeze_every
        )

    @property
    def active(self) -> bool:
        return self.freeze_layers > 0 or self.freeze_embeddings

    def frozen_blocks(self, step: int) -> int:
        """How many of the first blocks are frozen at optimizer step `step`."""
        if self.unfreeze_every is None:
            return self.freeze_layers
        return max(self.freeze_layers - step // self.unfreeze_every, 0)

    def apply(self, model: Transformer, step: int) -> bool:
        """Set requires_grad for `step`; return True if anything changed."""
        frozen = self.frozen_blocks(step)
        changed = False
        for name, param in model.named_parameters():
            trainable = not self._frozen(name, frozen)
            if param.requires_grad != trainable:
                param.requires_grad_(trainable)
                changed = True
        return changed

    def _frozen(self, name: str, frozen_blocks: int) -> bool:
        parts = name.split(".")
        if parts[0] == "blocks":
            return int(parts[1]) < frozen_blocks
        return self.freeze_embeddings and parts[0] in ("embed", "pos_embed")


def set_dropout(model: nn.Module, p: float) -> None:
    """Change every dropout probability of a built model (fine-tuning with a new dropout)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "dropout", None), float):
            setattr(module, "dropout", p)  # attention's probability dropout  # noqa: B010
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        cfg.dropout = p


# ---- LoRA ----------------------------------------------------------------------------------------


def linear_suffixes(model: nn.Module) -> list[str]:
    """Module-name suffixes that LoRA can target, e.g. 'attn.qkv' (from 'blocks.0.attn.qkv')."""
    found = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            parts = name.split(".")
            found.add(".".join(parts[2:]) if parts[0] == "blocks" else name)
    return sorted(found)


def apply_lora(model: Transformer, section: LoraSection, base_name: str | None) -> Any:
    """Wrap `model` in a PEFT LoRA model; only the adapter weights stay trainable.

    The LoRA layers are injected into `model` itself, so `model` keeps working as the canonical
    Transformer (forward, generation, traces) with the adapters active.
    """
    from peft import LoraConfig, get_peft_model

    available = linear_suffixes(model)
    for target in section.targets:
        if not any(s == target or s.endswith("." + target) for s in available):
            raise TrainConfigError(
                f"finetune.lora.targets: no linear module named {target!r}; "
                f"available: {', '.join(available)}"
            )
    if model.cfg.tie_embeddings and "unembed" in section.targets:
        raise TrainConfigError(
            "finetune.lora.targets: 'unembed' is tied to the embeddings in this model, and a "
            "merged adapter would change both; leave it out"
        )
    config = LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,  # type: ignore[arg-type]  # PEFT accepts floats too
        lora_dropout=section.dropout,
        target_modules=list(section.targets),
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    return peft_model


def lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}


def save_adapter(peft_model: Any, directory: Path) -> Path:
    """Write the adapter in PEFT's format (adapter_config.json + adapter_model.safetensors),
    replacing `directory` only once the new files are complete."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(directory) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
    return directory


def load_adapter_weights(peft_model: Any, directory: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ResumeError(f"no {ADAPTER_WEIGHTS} in {directory}; the checkpoint is not a LoRA run")
    weights = load_file(str(path))
    expected = set(lora_state(peft_model))
    if set(weights) != expected:
        raise ResumeError(
            f"the adapter in {directory} has other LoRA weights than this run's (rank or target "
            "modules differ); resume with the config that wrote it, or start a fresh out_dir"
        )
    mine = lora_state(peft_model)
    for name, tensor in weights.items():
        if tensor.shape != mine[name].shape:
            raise ResumeError(
                f"adapter weight {name} in {directory} has shape {list(tensor.shape)}"
            )
    result = set_peft_model_state_dict(peft_model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ResumeError(f"unexpected adapter weights in {directory}: {unexpected[:3]}")


def merge_lora(peft_model: Any) -> Transformer:
    """Fold the adapters into the base weights; returns the plain canonical Transformer."""
    merged = peft_model.merge_and_unload()
    if not isinstance(merged, Transformer):
        raise TypeError(f"merging gave a {type(merged).__name__}, expected a Transformer")
    return merged


def read_adapter_config(directory: Path) -> dict[str, Any]:
    return dict(json.loads((Path(directory) / ADAPTER_CONFIG).read_text()))
