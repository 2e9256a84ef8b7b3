"""Step checkpoints: written whole into a temporary directory and renamed into place, so a
crash or a full disk never leaves a half-written checkpoint behind, and never touches older ones.

    out_dir/checkpoints/step-00000200/   one complete checkpoint (model + training state)
    out_dir/checkpoints/latest.json      {"step": 200, "dir": "step-00000200"}
    out_dir/checkpoints/best.json        the step with the lowest validation loss (kept)

The last `keep_last` checkpoints are kept, plus the best one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from lmscope.files import atomic_write_text, new_temp_dir, replace_dir
from lmscope.train.errors import CheckpointWriteError, ResumeError
from lmscope.train.state import TRAINER_STATE

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
LATEST, BEST = "latest.json", "best.json"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    with contextlib.suppress(OSError):  # directories cannot be opened for fsync everywhere
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int, keep_best: bool) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_best = keep_best

    # ---- writing ------------------------------------------------------------------------------
    def save(self, step: int, write: Callable[[Path], None], is_best: bool) -> Path:
        """Call `write(tmp_dir)` to fill a new checkpoint, then move it into place."""
        final = self.root / step_dir_name(step)
        tmp: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = new_temp_dir(f".tmp-{final.name}-", self.root)
            write(tmp)
            if not (tmp / TRAINER_STATE).is_file():
                raise RuntimeError(f"checkpoint writer left no {TRAINER_STATE}")
            _fsync_tree(tmp)
            replace_dir(tmp, final)  # the same step may be written again after a resume
            tmp = None
            pointer = json.dumps({"step": step, "dir": final.name})
            atomic_write_text(self.root / LATEST, pointer)
            if is_best and self.keep_best:
                atomic_write_text(self.root / BEST, pointer)
        except OSError as err:
            full = err.errno in (errno.ENOSPC, errno.EDQUOT)
            what = "the disk is full" if full else str(err)
            raise CheckpointWriteError(
                f"could not write the checkpoint for step {step} to {self.root}: {what}. "
                "Earlier checkpoints are intact; free space (or fix permissions) and resume "
                "with `lmscope train CONFIG --resume`"
            ) from err
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        self.prune()
        return final

    def prune(self) -> None:
        """Delete step checkpoints beyond the last `keep_last`, sparing the best one."""
        steps = self.steps()
        keep = set(steps[-self.keep_last :])
        best = self.best_step()
        if best is not None and self.keep_best:
            keep.add(best)
        for step in steps:
            if step not in keep:
                shutil.rmtree(self.root / step_dir_name(step), ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)

    # ---- reading ------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / TRAINER_STATE).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def _pointer(self, name: str) -> int | None:
        try:
            step = json.loads((self.root / name).read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return step if isinstance(step, int) and step in self.steps() else None

    def best_step(self) -> int | None:
        return self._pointer(BEST)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        steps = self.steps()
        return self.root / step_dir_name(steps[-1]) if steps else None

    def resume_point(
        self, resume: bool | None, resume_from: Path | None, out_dir: Path
    ) -> Path | None:
        """The checkpoint a run continues from. resume: None (the newest, if any), True (the
        newest, which must exist), False (none; out_dir must hold no checkpoints)."""
        if resume_from is not None:
            if not resume_from.is_dir():
                raise ResumeError(f"no checkpoint at {resume_from}")
            return resume_from
        latest = self.latest()
        if latest is None:
            if resume:
                raise ResumeError(f"nothing to resume: {self.root} holds no complete checkpoint")
            return None
        if resume is False:
            raise ResumeError(
                f"{out_dir} already holds checkpoints (latest {latest.name}); resume with "
                "--resume, or pick another out_dir"
            )
        return latest

    def best(self) -> Path | None:
        step = self.best_step()
        return None if step is None else self.root / step_dir_name(step)
