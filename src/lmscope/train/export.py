"""The end of a run: out_dir/model (a full lmscope checkpoint every command loads) and, for LoRA,
out_dir/adapter (PEFT's format), each written whole beside its target and renamed into place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lmscope.files import staged_dir
from lmscope.model.transformer import Transformer
from lmscope.train.errors import CheckpointWriteError
from lmscope.train.finetune import merge_lora, save_adapter


def export(
    core: Transformer,
    peft: Any,
    hf_tokenizer: Any,
    out_dir: Path,
    *,
    merge: bool,
    record: dict[str, Any],
) -> tuple[Path | None, Path | None]:
    """Write out_dir/model (None for LoRA without merging) and, for LoRA, out_dir/adapter."""
    from lmscope.zoo.checkpoint import save_checkpoint

    for stale in [*out_dir.glob(".model.*"), *out_dir.glob(".adapter.*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
    metadata = {"producer": "lmscope train", "training": record}
    adapter_dir = None
    model: Transformer | None = core
    if peft is not None:
        adapter_dir = save_adapter(peft, out_dir / "adapter")
        model = merge_lora(peft) if merge else None
    if model is None:
        return None, adapter_dir
    target = out_dir / "model"
    try:
        with staged_dir(target) as tmp:  # named .model.* while it is written
            save_checkpoint(model, tmp, tokenizer=hf_tokenizer, metadata=json_safe(metadata))
    except OSError as err:
        raise CheckpointWriteError(
            f"could not write the final model to {target}: {err}; the step "
            "checkpoints are intact, free space and run again with --resume"
        ) from err
    return target, adapter_dir


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, allow_nan=True))


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1, default=str) + "\n"
