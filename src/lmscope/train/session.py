"""What one training session shows and how it stops: the start banner, an ETA that knows about
`train.max_minutes`, and Ctrl-C / SIGTERM turned into "finish this step, save, stop".

Stopping between steps (never inside one) keeps the saved checkpoint exact: the weights, the
optimizer and the data position all belong to the same completed step, so the run resumes as if
it had never stopped. A second Ctrl-C quits at once without saving.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import torch

OMP_POLICY_ENV = "OMP_WAIT_POLICY"


class StopRequest:
    """Set by SIGINT/SIGTERM while installed; the training loop polls it between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second time: the user means it
            self.uninstall()
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(
            f"\n{self.signal_name}: stopping after this step and saving a checkpoint "
            "(press Ctrl-C again to quit without saving)",
            file=sys.stderr,
            flush=True,
        )

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers live in the main thread; a trainer in a thread has none
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()


def projected_total(
    step: int, max_steps: int, used_s: float, limit_s: float | None, s_per_step: float | None
) -> int:
    """The step the run will stop at: max_steps, or earlier when the time budget (limit_s, with
    used_s spent) runs out first at s_per_step seconds per step. Sets the progress bar's total,
    so its ETA is the time to the real end."""
    if limit_s is None or not s_per_step or s_per_step <= 0 or not math.isfinite(s_per_step):
        return max_steps
    more = max(limit_s - used_s, 0.0) / s_per_step
    return max(step, min(max_steps, step + math.ceil(more)))


def threads_line() -> str:
    policy = os.environ.get(OMP_POLICY_ENV, "default")
    count = torch.get_num_threads()
    return f"{count} thread{'s' if count != 1 else ''} (OpenMP wait policy {policy})"


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total and trainable parameters, tied weights counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)


def banner(
    *,
    source: str,
    model: Any,
    parameters: dict[str, int],
    data_dir: str,
    manifest: dict[str, Any],
    device: torch.device,
    precision: str,
    world_size: int,
) -> list[str]:
    """The lines printed when a run starts: what trains, on what, where."""
    cfg = model.cfg
    shape = f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, n_ctx {cfg.n_ctx}"
    trainable = parameters["trainable"]
    params = f"{_millions(parameters['total'])} parameters"
    if trainable != parameters["total"]:
        params += f", {_millions(trainable)} trainable"
    tok = manifest.get("tokenizer", {})
    train_tokens = manifest.get("splits", {}).get("train", {}).get("tokens", 0)
    where = str(device) if world_size == 1 else f"{device.type} x {world_size} processes"
    return [
        f"model: {source} ({shape}; {params})",
        f"data: {data_dir} ({manifest.get('kind', '?')}, {train_tokens:,} train tokens, "
        f"tokenizer {tok.get('source', '?')} with {tok.get('vocab_size', 0):,} tokens)",
        f"device: {where}, {precision}; {threads_line()}",
    ]
