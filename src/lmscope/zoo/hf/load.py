"""Whole models: a loaded transformers model, or a Hugging Face directory read straight from its
safetensors files (config.json + weights: no transformers model is built and no memory map is
kept, so peak memory stays at about one copy of the weights)."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.model.transformer import Transformer
from lmscope.zoo.checkpoint import model_from_state_dict
from lmscope.zoo.errors import ConversionError, UnsupportedModelError
from lmscope.zoo.hf.convert import as_config, config_from_hf, state_dict_from_hf
from lmscope.zoo.hf.families import family_of
from lmscope.zoo.tensor_files import LazyTensors

if TYPE_CHECKING:
    from transformers import PreTrainedModel

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def from_hf(
    model_or_path: PreTrainedModel | str | Path, dtype: torch.dtype = torch.float32
) -> Transformer:
    """A canonical Transformer (eval mode, on CPU) with the weights of a Hugging Face causal LM.

    model_or_path: a loaded `PreTrainedModel`, or a local directory holding config.json and
    safetensors weights (nothing is downloaded; pickled .bin weights are refused). A directory
    is read tensor by tensor from its safetensors files. This returns the model only: for the
    directory's tokenizer too, use `load_hf_directory(path)` (or `lmscope.zoo.registry.load`).
    """
    if isinstance(model_or_path, (str, Path)):
        return load_hf_directory(model_or_path, dtype, tokenizer=False)[0]
    hf_model = model_or_path
    cfg = config_from_hf(hf_model.config)
    hf_state = hf_model.state_dict()
    tensors = state_dict_from_hf(hf_state, hf_model.config)
    theirs = {t.untyped_storage().data_ptr() for t in hf_state.values()}
    tensors = {  # never share memory with the caller's model
        name: (t.clone() if t.untyped_storage().data_ptr() in theirs else t).detach().to("cpu")
        for name, t in tensors.items()
    }
    return _build(cfg, tensors, dtype)


def load_hf_directory(
    path: str | Path, dtype: torch.dtype = torch.float32, *, tokenizer: bool = True
) -> tuple[Transformer, Any]:
    """(Transformer, tokenizer or None) from a Hugging Face checkpoint directory.

    The tokenizer is the directory's own (AutoTokenizer, local files only); None when the
    directory has no tokenizer files, or (with a warning saying why) when they cannot be read.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"no Hugging Face model at {path}: expected a directory with config.json "
            "(models are never downloaded; save one with model.save_pretrained(path))"
        )
    files = _weight_files(path)
    try:
        data = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConversionError(f"cannot read {config_file}: {err}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{config_file} must hold a JSON object")
    family_of(data)  # fail early, naming the supported families
    hf_config = as_config(data)
    cfg = config_from_hf(hf_config)
    with contextlib.ExitStack() as stack:
        lazy = LazyTensors([stack.enter_context(open(f, "rb")) for f in files], dtype)
        tensors = state_dict_from_hf(lazy, hf_config)
    model = _build(cfg, tensors, dtype)
    return model, (_tokenizer(path) if tokenizer else None)


def _build(cfg: Any, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> Transformer:
    return model_from_state_dict(
        cfg, tensors, dtype=dtype, source=f"converted {cfg.architecture} weights",
        error=ConversionError,
    )  # fmt: skip


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files transformers would load: the index's shards, or model.safetensors."""
    index = path / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConversionError(f"cannot read the shard index {index}: {err}") from err
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConversionError(f"{index} names shards that are missing: {', '.join(missing)}")
        return files
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS]
    found = sorted(p.name for p in path.glob("*.safetensors"))
    if found:
        raise UnsupportedModelError(
            f"{path} has safetensors files ({', '.join(found)}) but neither {WEIGHTS} nor "
            f"{WEIGHTS_INDEX}; save the model with save_pretrained(path)"
        )
    raise UnsupportedModelError(
        f"{path} has no .safetensors weights; lmscope does not unpickle .bin files. Load "
        "the model with transformers yourself and pass the object to from_hf, or re-save "
        "it with save_pretrained(..., safe_serialization=True)"
    )


def _tokenizer(path: Path) -> Any:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # a model without a usable tokenizer still loads
        warnings.warn(
            f"the tokenizer in {path} could not be loaded ({type(err).__name__}: {err}); "
            "the model loads without one",
            UserWarning,
            stacklevel=3,
        )
        return None
