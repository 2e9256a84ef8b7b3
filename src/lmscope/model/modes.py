"""Temporarily switching a module's train/eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode (no dropout) for the block; restore every submodule's previous
    mode after (a model with some parts in eval mode, e.g. frozen ones, keeps them so)."""
    # Flip only the modules in training mode (a model already in eval mode costs nothing): the
    # same end state as module.eval() then m.train(previous) for each, without ~100 setattr calls
    # a layer.
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield module
    finally:
        for m in training:
            m.training = True
