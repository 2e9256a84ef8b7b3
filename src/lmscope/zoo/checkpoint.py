"""lmscope's own checkpoint format: a directory of safetensors weights and JSON.

    model.safetensors   weights under canonical parameter names (tied unembedding left out)
    config.json         ModelConfig.to_dict()
    metadata.json       optional free-form JSON (training record, provenance, ...)
    tokenizer.json ...  optional, from a Hugging Face fast tokenizer's save_pretrained

Every file is written to a temporary name and renamed into place. Loading never runs code: weights
are read with safetensors only, never with pickle or torch.load.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from lmscope.files import atomic_write, atomic_write_text
from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo.errors import CheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
TOKENIZER_FILE = "tokenizer.json"
_OWN_FILES = frozenset({WEIGHTS_FILE, CONFIG_FILE, METADATA_FILE})
_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "model.bin")

# ---- building a model from tensors ------------------------------------------------------------


def model_from_state_dict(
    cfg: ModelConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    source: str = "state dict",
    error: type[ValueError] = CheckpointError,
) -> Transformer:
    """A Transformer whose parameters are the given tensors, without random initialisation.

    With tied embeddings `unembed.weight` may be left out (it is ignored if present).
    Missing, unexpected or mis-shaped tensors raise `error` naming `source`. Floating-point
    tensors are cast to `dtype` when given; positional tables stay float32. Eval mode.
    """
    with _skipping_random_init():
        model = Transformer(cfg)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tensors = dict(state_dict)
    if cfg.tie_embeddings:
        expected.pop("unembed.weight", None)
        tensors.pop("unembed.weight", None)
    _check_tensors(expected, tensors, source, error)

    target = torch.device(device)
    converted = {}
    for name, tensor in tensors.items():
        want = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        converted[name] = tensor.to(device=target, dtype=want)
    model.load_state_dict(converted, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.unembed.weight = model.embed.weight
    return model.to(target).eval()  # moves the positional tables; parameters are there already


# Building the model on the meta device would skip initialisation too, but in a fresh process the
# first meta-tensor arange/normal_ imports torch._dynamo (1-2 s). Instead the model is built on
# the CPU with torch.nn.init's random initialisers switched off for this thread: the unused
# tensors are never touched, so their pages are never committed, and assign=True replaces them.
_RANDOM_INITS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_",
                 "xavier_uniform_", "xavier_normal_")  # fmt: skip
_init_state = threading.local()
_init_lock = threading.Lock()
_init_users = 0
_init_originals: dict[str, Callable[..., torch.Tensor]] = {}


def _skip_in_this_thread(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if getattr(_init_state, "skip", False):
            return tensor
        return original(tensor, *args, **kwargs)

    return init


@contextlib.contextmanager
def _skipping_random_init() -> Iterator[None]:
    """While active, random initialisers in torch.nn.init leave tensors untouched in this thread
    (other threads are unaffected)."""
    global _init_users
    with _init_lock:
        if _init_users == 0:
            for name in _RANDOM_INITS:
                _init_originals[name] = getattr(torch.nn.init, name)
                setattr(torch.nn.init, name, _skip_in_this_thread(_init_originals[name]))
        _init_users += 1
    _init_state.skip = True
    try:
        yield
    finally:
        _init_state.skip = False
        with _init_lock:
            _init_users -= 1
            if _init_users == 0:
                for name, original in _init_originals.items():
                    setattr(torch.nn.init, name, original)


def _check_tensors(
    expected: dict[str, tuple[int, ...]],
    found: Mapping[str, torch.Tensor],
    source: str,
    error: type[ValueError],
) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors: {_some(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {_some(extra)}")
    for name in sorted(set(expected) & set(found)):
        shape = tuple(found[name].shape)
        if shape != expected[name]:
            problems.append(
                f"{name} has shape {list(shape)}, the config needs {list(expected[name])}"
            )
            break
    if problems:
        raise error(
            f"{source} does not match its model config ({'; '.join(problems)}); "
            "the weights and config.json come from different models, or the file is damaged"
        )


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---- saving ------------------------------------------------------------------------------------


def save_checkpoint(
    model: Transformer,
    directory: str | Path,
    tokenizer: PreTrainedTokenizerFast | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` (and optionally a tokenizer and JSON metadata) to `directory`.

    config.json is written last, so a directory only looks like a checkpoint once its
    weights are complete.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"cannot save a checkpoint to {directory}: it is a file, not a directory"
        )
    metadata_text = None
    if metadata is not None:
        try:
            metadata_text = json.dumps(dict(metadata), indent=2, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint metadata must be JSON-serialisable: {err}; "
                "convert paths, tensors and dates to strings or numbers first"
            ) from err
    tensors = _tensors_to_save(model)
    directory.mkdir(parents=True, exist_ok=True)

    def write_weights(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "lmscope"})

    atomic_write(directory / WEIGHTS_FILE, write_weights)
    if tokenizer is not None:
        _save_tokenizer(tokenizer, directory)
    if metadata_text is not None:
        atomic_write_text(directory / METADATA_FILE, metadata_text)
    model.cfg.save(directory / CONFIG_FILE)
    return directory


def _tensors_to_save(model: Transformer) -> dict[str, torch.Tensor]:
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        if model.unembed.weight.data_ptr() != model.embed.weight.data_ptr():
            raise CheckpointError(
                "the config says tie_embeddings=True but unembed.weight is not embed.weight; "
                "re-tie them (model.unembed.weight = model.embed.weight) or set "
                "cfg.tie_embeddings=False before saving"
            )
        # safetensors refuses tensors that share memory; the tie is restored on load.
        tensors.pop("unembed.weight", None)
    return tensors


def _save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    """save_pretrained into a temporary folder, then move each file into place."""
    with tempfile.TemporaryDirectory(prefix=".tokenizer.", dir=directory) as tmp:
        tokenizer.save_pretrained(tmp)
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        clash = [p.name for p in files if p.name in _OWN_FILES]
        if clash:
            raise CheckpointError(
                f"the tokenizer wrote {', '.join(clash)}, which would overwrite checkpoint files"
            )
        for path in files:
            os.replace(path, directory / path.name)


# ---- loading -----------------------------------------------------------------------------------


def is_checkpoint(path: str | Path) -> bool:
    """True for a directory holding an lmscope checkpoint (not a Hugging Face model folder)."""
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        return False
    try:
        data = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and "model_type" not in data
        and {"d_model", "n_layers", "vocab_size"} <= data.keys()
    )


def load_checkpoint(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[Transformer, PreTrainedTokenizerFast | None]:
    """Load a checkpoint written by `save_checkpoint`: (model in eval mode, tokenizer or None)."""
    directory = Path(directory)
    _require_files(directory)
    config_path = directory / CONFIG_FILE
    try:
        cfg = ModelConfig.load(config_path)
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"{config_path} is not a valid lmscope model config: {err}; "
            "restore it from the original checkpoint"
        ) from err
    weights_path = directory / WEIGHTS_FILE
    tensors = _read_weights(weights_path, device)
    model = model_from_state_dict(
        cfg, tensors, device=device, dtype=dtype, source=str(weights_path)
    )
    return model, load_tokenizer(directory)


def _require_files(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: not a directory")
    if not (directory / WEIGHTS_FILE).is_file():
        pickles = [name for name in _PICKLE_WEIGHTS if (directory / name).exists()]
        hint = (
            f"; it holds {pickles[0]}, a pickle, which lmscope never loads because unpickling "
            "can run code: convert it to safetensors with a tool you trust"
            if pickles
            else "; save one with lmscope.zoo.checkpoint.save_checkpoint"
        )
        raise CheckpointError(f"no {WEIGHTS_FILE} in {directory}{hint}")
    if not (directory / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"no {CONFIG_FILE} in {directory}: the checkpoint is incomplete (an interrupted "
            "save?); save it again"
        )


def _read_weights(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(
            f"{path} is a pickle / PyTorch zip archive, not safetensors; lmscope never loads "
            "pickles because unpickling can run code. Convert it to safetensors with a tool you trust"
        )
    # safetensors maps the file (a cached load takes ~0.15 s, not ~0.4 s as a full read would):
    # the model then reads from the file, so lmscope only ever replaces checkpoints by rename.
    try:
        return load_file(str(path), device=str(torch.device(device)))
    except Exception as err:  # safetensors raises its own error type, OSError or RuntimeError
        raise CheckpointError(
            f"cannot read {path}: {err}. The file is corrupt or truncated (an interrupted copy "
            "or save?); copy or save the checkpoint again"
        ) from err


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast | None:
    """The tokenizer saved beside a checkpoint, or None if there is none."""
    directory = Path(directory)
    if not (directory / TOKENIZER_FILE).is_file():
        return None
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # tokenizers and transformers raise many kinds
        raise CheckpointError(
            f"cannot read the tokenizer in {directory / TOKENIZER_FILE}: {err}; "
            "save the tokenizer again (tokenizer.save_pretrained) or delete its files"
        ) from err


def read_metadata(directory: str | Path) -> dict[str, Any] | None:
    """The checkpoint's metadata.json as a dict, or None if it has none."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}; fix or delete the file") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data
