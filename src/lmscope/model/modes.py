"""Temporarily switching a module's train/eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode (no dropout) for the block; restore every submodule's previous
    mode after (a model with some parts in eval mode, e.g. frozen ones, keeps them so)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:  # parents come first, so children end in their own mode
            m.train(training)
