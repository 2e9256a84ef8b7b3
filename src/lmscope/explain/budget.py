"""Cost control for explanations: cancellation between batches and a memory budget.

A server runs explanations for clients that may hang up or time out, so every method that runs
in batches takes `should_stop`, a no-argument callable checked between batches: when it returns
True the method raises `ExplanationCancelled` and keeps nothing alive.

Methods that backpropagate through the model (integrated gradients) hold, for every path point
of a batch, the activations autograd saves for the backward pass. `points_per_batch` sizes a
batch so that those activations stay under a byte budget, from the model's shapes: the saved
floats per token and layer are bounded by 8 d_model + 2 qkv_width + 2 d_mlp (4 d_mlp when the
MLP is gated). The bound is checked against autograd's saved tensors for every model family in
tests/test_explain_budget.py. A process needs more than the saved tensors (the backward pass's
transient gradients, the allocator's slack): PEAK_FACTOR is that ratio as measured by
`bench/explain_speed.py ig-memory` on smollm2-135m at 256 tokens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

import torch

from lmscope.explain.errors import ExplanationCancelled
from lmscope.model.config import ModelConfig

ShouldStop = Callable[[], bool]

# Bytes one pass of a backpropagating method may add to the process (two path points of
# smollm2-135m at 256 tokens, eight at 64 tokens).
DEFAULT_MEMORY_BUDGET = 1 << 30
# What a path point adds to the process's peak / autograd's saved bytes (1.1 measured).
PEAK_FACTOR = 1.25

# Single passes needing more than this give their memory back when they finish (a collection
# costs milliseconds, worth it only after a large pass).
RELEASE_ABOVE = 256 << 20


def check_cancelled(should_stop: ShouldStop | None, what: str) -> None:
    """Raise ExplanationCancelled if the caller asked to stop."""
    if should_stop is not None and should_stop():
        raise ExplanationCancelled(f"{what} was cancelled before it finished")


def saved_floats_per_token(cfg: ModelConfig, n_layers: int | None = None) -> int:
    """Upper bound on the floats autograd saves per token for one input of a forward pass."""
    qkv_width = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
    per_layer = 8 * cfg.d_model + 2 * qkv_width + (4 if cfg.gated_mlp else 2) * cfg.mlp_dim
    layers = cfg.n_layers if n_layers is None else n_layers
    return layers * per_layer + 4 * cfg.d_model


def bytes_per_point(cfg: ModelConfig, n_tokens: int, dtype: torch.dtype) -> int:
    """Peak bytes one path point of a forward + backward pass adds to the process."""
    # 16-bit models still normalise in float32, so count at least 4 bytes per float.
    width = max(torch.empty((), dtype=dtype).element_size(), 4)
    return int(PEAK_FACTOR * n_tokens * width * saved_floats_per_token(cfg))


def points_per_batch(
    cfg: ModelConfig,
    n_tokens: int,
    dtype: torch.dtype,
    budget: int = DEFAULT_MEMORY_BUDGET,
    cap: int | None = None,
) -> int:
    """How many path points fit the byte budget (at least one; at most `cap`)."""
    points = max(1, budget // max(1, bytes_per_point(cfg, n_tokens, dtype)))
    return points if cap is None else max(1, min(points, cap))


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give freed memory back to the operating system after a large explanation.

    glibc keeps freed heap pages of large tensors mapped (its mmap threshold grows with use), so
    without a trim a server process stays at its peak after one big request.
    """
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if _TRIM is not None:
        _TRIM(0)
