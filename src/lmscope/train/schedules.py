"""Learning-rate schedules as pure functions of the step: nothing to save, exact on resume.

All start with a linear warmup from lr/warmup to lr over `warmup_steps` steps.
  constant  lr
  linear    lr -> lr * min_lr_ratio linearly, reached at decay_steps
  cosine    lr -> lr * min_lr_ratio along a half cosine, reached at decay_steps
  step      lr * gamma ** (steps after warmup // step_every)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmscope.train.config import ScheduleSection


@dataclass(frozen=True)
class Schedule:
    lr: float
    kind: str
    warmup_steps: int
    decay_steps: int
    min_lr_ratio: float
    step_every: int
    gamma: float

    @classmethod
    def from_config(cls, lr: float, section: ScheduleSection, max_steps: int) -> Schedule:
        return cls(
            lr=lr,
            kind=section.kind,
            warmup_steps=section.warmup_steps,
            decay_steps=section.decay_steps or max_steps,
            min_lr_ratio=section.min_lr_ratio,
            step_every=section.step_every,
            gamma=section.gamma,
        )

    def __call__(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        if self.kind == "step":
            return self.lr * self.gamma ** ((step - self.warmup_steps) // self.step_every)
        span = max(self.decay_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        if self.kind == "linear":
            factor = 1.0 - progress
        elif self.kind == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * factor)
