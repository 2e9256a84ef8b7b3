"""Reading safetensors files into memory the caller owns, one tensor at a time.

Used for Hugging Face directories. safetensors' own loaders return views of a memory map of the
file: a model built from them keeps the map, and a file truncated or rewritten in place
afterwards (`save_pretrained` into the same directory, `cp` over it) kills the process with
SIGBUS. Reading each tensor into fresh memory, only when the converter asks for it, keeps peak
memory at about one copy of the weights. (Our own checkpoints keep safetensors' memory map for
fast cached loads; lmscope replaces those files only by rename, which a live map survives.)
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Iterator, Mapping

import torch

from lmscope.zoo.errors import ZooError


class TensorFileError(ZooError):
    """A safetensors file that cannot be read: a bad header, or data cut short."""


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
            raise TensorFileError("reading safetensors needs a little-endian machine")
        self.dtype = dtype
        self.where: dict[str, tuple[io.BufferedIOBase, torch.dtype, list[int], int, int]] = {}
        for file in files:
            for name, (dtype_, shape, begin, end) in _header(file).items():
                if name in self.where:
                    raise TensorFileError(f"tensor {name!r} appears in two safetensors files")
                self.where[name] = (file, dtype_, shape, begin, end)

    def __getitem__(self, name: str) -> torch.Tensor:
        file, dtype, shape, begin, end = self.where[name]
        data = torch.empty(end - begin, dtype=torch.uint8)
        file.seek(begin)
        if file.readinto(data.numpy().data) != end - begin:
            raise TensorFileError(f"{_name(file)} ends inside tensor {name!r}; it is truncated")
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
        raise TensorFileError(f"{_name(file)} is not a readable safetensors file: {err}") from err
    return entries


def _name(file: io.BufferedIOBase) -> str:
    return str(getattr(file, "name", "the safetensors file"))
