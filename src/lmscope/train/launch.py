"""Running a training config the way both entry points do (`lmscope train` and
`python -m lmscope.train` under torchrun): load, print or train, then one summary line, or on
Ctrl-C the checkpoint saved and the command that resumes from it."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

INTERRUPTED_EXIT = 130  # the shell's code for "stopped by SIGINT"


def _resume_command(command: str, config: Path, overrides: list[str]) -> str:
    return shlex.join([*shlex.split(command), str(config), *overrides])


def run_config(
    config: Path,
    overrides: list[str],
    *,
    resume: bool | None = None,
    resume_from: Path | None = None,
    print_config: bool = False,
    command: str = "lmscope train",
    after_training: Callable[[Any], None] | None = None,
) -> int:
    """Train (or print the resolved config); return the process exit code. `command` is how
    the user started us, for the resume hint; `after_training(result)` runs on the main process
    once a run has finished (not when interrupted), e.g. to document the model."""
    import yaml

    from lmscope.train.config import load_config
    from lmscope.train.trainer import Trainer

    cfg = load_config(config, overrides)
    if print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    try:
        result = Trainer(cfg, resume=resume, resume_from=resume_from).run()
    except KeyboardInterrupt:  # Ctrl-C twice: quit at once
        print(
            f"quit without saving; the checkpoints in {Path(cfg.out_dir) / 'checkpoints'} are "
            f"intact: {_resume_command(command, config, overrides)} resumes from the newest",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    if result.rank != 0:
        return INTERRUPTED_EXIT if result.interrupted else 0
    final = result.record["final"]
    if result.interrupted:
        saved = (
            f"saved {result.checkpoint}"
            if result.checkpoint is not None
            else "nothing trained yet, nothing saved"
        )
        print(
            f"interrupted at step {final['step']}; {saved}. To resume, run the same command "
            f"again: {_resume_command(command, config, overrides)}",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    if after_training is not None:
        after_training(result)
    parts = [f"trained to step {final['step']} ({final['stopped']})"]
    for name in ("val", "test"):
        loss = final.get(f"{name}_loss")
        if loss is not None:
            parts.append(f"{name} loss {loss:.4f}")
    parts.append(f"model: {result.model_dir or result.adapter_dir}")
    print("; ".join(parts), file=sys.stderr)
    return 0
