"""Model names and paths -> loaded models.

`load("smollm2-135m")` gives the embedded default model; a path gives one of our checkpoints, a
Hugging Face checkpoint directory, or a GGUF file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmscope.model.transformer import Transformer
from lmscope.zoo.default import DEFAULT_MODEL, EMBEDDED_MODELS, EmbeddedModel


class UnknownModelError(ValueError):
    """A model name or path that lmscope cannot resolve."""


@dataclass
class LoadedModel:
    """A canonical model with the tokenizer that belongs to it."""

    name: str
    model: Transformer
    tokenizer: Any  # a transformers PreTrainedTokenizerBase, or None
    source: str  # where the weights came from

    @property
    def cfg(self) -> Any:
        return self.model.cfg


@dataclass
class ModelListing:
    name: str
    description: str
    location: str
    cached: bool


def available_models() -> list[ModelListing]:
    """The embedded models, where their source lives, and whether the converted cache exists."""
    listings = []
    for entry in EMBEDDED_MODELS.values():
        listings.append(
            ModelListing(
                name=entry.name,
                description=entry.description,
                location=str(entry.cache_dir()),
                cached=entry.is_cached(),
            )
        )
    return listings


def model_names() -> list[str]:
    return sorted(EMBEDDED_MODELS)


def _unknown(name: str) -> UnknownModelError:
    return UnknownModelError(
        f"unknown model {name!r}; available: {', '.join(model_names())}, or a path to an "
        "lmscope checkpoint directory, a Hugging Face checkpoint directory or a .gguf file"
    )


def _load_directory(path: Path) -> tuple[Transformer, Any]:
    from lmscope.zoo import checkpoint

    if checkpoint.is_checkpoint(path):
        return checkpoint.load_checkpoint(path)
    if (path / "config.json").is_file():
        from lmscope.zoo.hf import load_hf_directory

        return load_hf_directory(path)  # with the directory's own tokenizer
    raise UnknownModelError(
        f"{path} is a directory but neither an lmscope checkpoint (config.json + "
        "model.safetensors) nor a Hugging Face checkpoint"
    )


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or one clear error when this machine cannot use it."""
    from lmscope.zoo.errors import DeviceError

    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {str(device)!r}; use cpu or cuda (cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {str(device)!r} is not available: this torch sees no CUDA GPU; use cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {str(device)!r} does not exist: {torch.cuda.device_count()} GPU(s) here"
            )
    elif resolved.type != "cpu":
        raise DeviceError(f"device {str(device)!r} is not supported; use cpu or cuda (cuda:N)")
    return resolved


def load(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Resolve a registered name or a path into a LoadedModel (in eval mode)."""
    device = check_device(device)
    key = str(name_or_path)
    entry: EmbeddedModel | None = EMBEDDED_MODELS.get(key)
    if entry is not None:
        model, tokenizer = entry.load()
        source = str(entry.cache_dir())
    else:
        path = Path(key).expanduser()
        if path.is_dir():
            model, tokenizer = _load_directory(path)
        elif path.is_file() and path.suffix == ".gguf":
            from lmscope.zoo.gguf import from_gguf

            model, tokenizer = from_gguf(path)
        elif path.exists():
            raise UnknownModelError(
                f"{path} is not a model: expected a checkpoint directory or a .gguf file"
            )
        else:
            raise _unknown(key)
        source = str(path.resolve())
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(device).eval()
    return LoadedModel(name=key, model=model, tokenizer=tokenizer, source=source)
