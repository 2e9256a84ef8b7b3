"""Whole models: a loaded transformers model, or a Hugging Face directory read straight from its
safetensors files (config.json + weights: no transformers model is built and no memory map is
kept, so peak memory stays at about one copy of the weights)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.model.transformer import Transformer
from lmscope.zoo.checkpoint import model_from_state_dict
from lmscope.zoo.errors import ConversionError, UnsupportedModelError
from lmscope.zoo.hf.convert import as_config, config_from_hf, state_dict_from_hf
from lmscope.zoo.hf.families import family_of

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


# safetensors dtype names -> torch dtypes (the format: an 8-byte little-endian header length, a
# JSON header {name: {dtype, shape, data_offsets: [begin, end]}}, then the raw little-endian data).
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


class LazyTensors(Mapping[str, torch.Tensor]):
    """The tensors of safetensors files by name, each read from disk (and cast to `dtype` if it
    is a float) only when asked for. Reads go into memory the model then owns: no memory map
    stays behind (a map would double the resident size while converting, and a file rewritten
    later would change or crash the loaded model)."""

    def __init__(self, files: list[io.BufferedIOBase], dtype: torch.dtype | None) -> None:
        if sys.byteorder != "little":
            raise UnsupportedModelError("reading safetensors needs a little-endian machine")
        self.dtype = dtype
        self.where: dict[str, tuple[io.BufferedIOBase, torch.dtype, list[int], int, int]] = {}
        for file in files:
            for name, (dtype_, shape, begin, end) in _header(file).items():
                if name in self.where:
                    raise ConversionError(f"tensor {name!r} appears in two safetensors files")
                self.where[name] = (file, dtype_, shape, begin, end)

    def __getitem__(self, name: str) -> torch.Tensor:
        file, dtype, shape, begin, end = self.where[name]
        data = torch.empty(end - begin, dtype=torch.uint8)
        file.seek(begin)
        if file.readinto(data.numpy().data) != end - begin:
            raise ConversionError(f"{_name(file)} ends inside tensor {name!r}; it is truncated")
        tensor = data.view(dtype).reshape(shape)
        if self.dtype is not None and tensor.is_floating_point() and tensor.dtype != self.dtype:
            return tensor.to(self.dtype)
        return tensor

    def __contains__(self, name: object) -> bool:
        return name in self.where

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)


def _header(file: io.BufferedIOBase) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
    """name -> (dtype, shape, first byte, end byte) from a safetensors header, checked."""
    try:
        file.seek(0)
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
        start = 8 + length
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES[info["dtype"]]
            shape = [int(n) for n in info["shape"]]
            begin, end = (start + int(o) for o in info["data_offsets"])
            count = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if end - begin != count:
                raise ValueError(f"tensor {name!r} has {end - begin} bytes for shape {shape}")
            entries[name] = (dtype, shape, begin, end)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as err:
        raise ConversionError(f"{_name(file)} is not a readable safetensors file: {err}") from err
    return entries


def _name(file: io.BufferedIOBase) -> str:
    return str(getattr(file, "name", "the safetensors file"))


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
