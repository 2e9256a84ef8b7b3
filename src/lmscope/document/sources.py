"""From what the user names to a facts document: which reader handles which input."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmscope.document.errors import DocError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def collect_facts(
    model: str,
    *,
    eval_path: Path | None = None,
    positions: int | None = None,
    probe: bool = True,
    allow_code: bool = False,
    input_shape: list[int] | None = None,
) -> dict[str, Any]:
    """Facts of `model`: a registered name, a checkpoint/HF directory, a .gguf, .onnx or .keras
    file, a Hugging Face config.json, or (with allow_code) a `package.module:factory`."""
    from lmscope.document.skeleton import finish

    path = Path(model).expanduser()
    if not path.exists() and _FACTORY.match(model):
        if not allow_code:
            raise DocError(
                f"{model!r} names Python code; documenting it imports and runs that module. "
                "Pass --allow-code to do so"
            )
        from lmscope.document.foreign.torch_module import module_facts

        return finish(module_facts(model, input_shape), None, eval_path)
    if path.is_file() and path.suffix == ".onnx":
        from lmscope.document.foreign.onnx_graph import onnx_facts

        return finish(onnx_facts(path), path, eval_path)
    if path.is_file() and path.suffix == ".keras":
        from lmscope.document.foreign.keras_file import keras_facts

        return finish(keras_facts(path), path, eval_path)
    if path.is_file() and path.suffix == ".json":
        from lmscope.document.foreign.hf_config import config_facts

        return finish(config_facts(path), path, eval_path)
    if path.is_dir() and _config_only(path):
        from lmscope.document.foreign.hf_config import config_facts

        return finish(config_facts(path / "config.json"), path, eval_path)
    return runnable_facts(model, eval_path=eval_path, positions=positions, probe=probe)


def _config_only(path: Path) -> bool:
    """A directory with a config.json but no weights lmscope reads (or a family it cannot run)."""
    from lmscope.zoo.checkpoint import is_checkpoint

    if is_checkpoint(path) or not (path / "config.json").is_file():
        return False
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.safetensors.index.json"))
    if not weights:
        return True
    from lmscope.document.foreign.hf_config import runnable_family

    return not runnable_family(path / "config.json")


def runnable_facts(
    model: str, *, eval_path: Path | None, positions: int | None, probe: bool
) -> dict[str, Any]:
    from lmscope.document.facts import DEFAULT_POSITIONS, loaded_facts
    from lmscope.zoo.registry import load

    loaded = load(model)
    return loaded_facts(
        loaded, positions=positions or DEFAULT_POSITIONS, probe=probe, eval_path=eval_path
    )
