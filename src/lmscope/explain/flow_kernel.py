"""The exact L1 proximity of every attention part, as one compiled loop (numba).

For a target y (resid_mid of token i) and a part p = a u (a = A^h_ij, u = v_j W_O^h):

    prox = sum_d |y_d| - |y_d - p_d| = a (sign(y) . u) - 2 sum_d relu(a sign(y_d) u_d - |y_d|)

The first term is a matrix product (torch, in blocks of targets). The correction is zero on
every coordinate with |y_d| >= a max|u|, so the loop walks the target's coordinates from the
smallest |y| up and stops at the first one the part cannot reach: most parts visit none, a few
visit a handful, hardly any visit all D. Rows (head, target) are split between torch's threads
by their work (causal rows grow with the target); the loop releases the GIL.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from numba import njit

# Below this many parts a layer runs on the calling thread (thread hand-off costs more).
PARALLEL_MIN_PARTS = 1 << 16
_pool: ThreadPoolExecutor | None = None


def _l1_rows(dot, pattern, u, u_max, y_sorted, order, sign_sorted, i0, offset, lo, hi, out):  # type: ignore[no-untyped-def]
    """Flat rows lo..hi (h * B + r) of a block of B targets from i0; dot [H, B, S'] holds
    sign(y_i) . u_j for the block; offset = sources before the prompt (S - T)."""
    n_rows = dot.shape[1]
    d_model = u.shape[2]
    for row in range(lo, hi):
        h = row // n_rows
        r = row - h * n_rows
        i = i0 + r
        smallest = y_sorted[i, 0]
        for j in range(i + offset + 1):
            a = pattern[h, i, j]
            value = a * dot[h, r, j]
            reach = a * u_max[h, j]  # bounds every |p_d|
            if reach > smallest:
                correction = 0.0
                k = 0
                while k < d_model and y_sorted[i, k] < reach:
                    flip = a * sign_sorted[i, k] * u[h, j, order[i, k]] - y_sorted[i, k]
                    if flip > 0.0:
                        correction += flip
                    k += 1
                value -= 2.0 * correction
            out[h, i, j] = value if value > 0.0 else 0.0


def compiled(function: Any) -> Any:
    """`function` compiled by numba, cached on disk where it can be (beside the source, or in
    the user's cache); without any writable place (a read-only install and home), compiled
    again in each process rather than failing."""
    try:
        return njit(nogil=True, cache=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(nogil=True)(function)


_l1_rows = compiled(_l1_rows)


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers != threads:
        _pool = ThreadPoolExecutor(threads, thread_name_prefix="lmscope-flow")
    return _pool


def _forget_pool() -> None:
    """A forked child has none of the parent's threads: it starts its own pool."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def _split(i0: int, n_rows: int, n_heads: int, offset: int, parts: int) -> list[int]:
    """Cut points of the flat rows h * B + r into `parts` runs of about equal work."""
    per_row = np.arange(i0 + offset + 1, i0 + offset + 1 + n_rows, dtype=np.int64)
    work = np.cumsum(np.tile(per_row, n_heads))
    goals = work[-1] * np.arange(1, parts) / parts
    return [0, *np.searchsorted(work, goals).tolist(), n_rows * n_heads]


def l1_head_proximities(
    whole: torch.Tensor,
    pattern: torch.Tensor,
    v: torch.Tensor,
    w_o: torch.Tensor,
    chunk_elements: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """whole [T, D], pattern [H, T, S], v [H, S, d], w_o [H, d, D] -> prox [H, T, S].

    chunk_elements bounds the block of the matrix product ([H, rows, sources] at a time).
    out: a [H, T, S] buffer to reuse, zero at future sources (as any earlier result is).
    """
    dtype = torch.float64 if whole.dtype == torch.float64 else torch.float32
    whole, pattern = whole.to(dtype), pattern.to(dtype).contiguous()
    v, w_o = v.to(dtype), w_o.to(dtype)
    n_heads, n_tok, n_src = pattern.shape
    d_model = whole.shape[-1]
    offset = n_src - n_tok
    u = torch.bmm(v, w_o)  # [H, S, D]
    u_max = torch.maximum(u.amax(-1), u.amin(-1).neg_())  # [H, S]: max |u|, no |u| copy
    sign = torch.where(whole >= 0, 1.0, -1.0).to(dtype)  # [T, D]
    w_flat = w_o.permute(2, 0, 1).reshape(d_model, -1)  # [D, H*d]
    signed_w = (sign @ w_flat).view(n_tok, n_heads, -1).transpose(0, 1)  # [H, T, d]
    y_abs = whole.abs().numpy()
    order = np.argsort(y_abs, axis=-1).astype(np.int32)  # the smallest |y| of each target first
    tables = (
        u.numpy(),
        u_max.numpy(),
        np.take_along_axis(y_abs, order, -1),
        order,
        np.take_along_axis(sign.numpy(), order, -1),
    )
    prox = torch.zeros(n_heads, n_tok, n_src, dtype=dtype) if out is None else out
    threads = max(1, torch.get_num_threads())
    i0 = 0
    while i0 < n_tok:
        rows = 1  # causal: targets i0..i1-1 read sources up to i1-1 (+ any before the prompt)
        while (
            i0 + rows < n_tok and n_heads * (rows + 1) * (i0 + rows + offset + 1) <= chunk_elements
        ):
            rows += 1
        i1 = i0 + rows
        s1 = i1 + offset
        dot = torch.bmm(signed_w[:, i0:i1], v[:, :s1].transpose(1, 2)).numpy()
        args = (dot, pattern.numpy(), *tables, i0, offset)
        parts = n_heads * rows * (i0 + offset + rows // 2 + 1)
        if threads == 1 or parts < PARALLEL_MIN_PARTS:
            _l1_rows(*args, 0, n_heads * rows, prox.numpy())
        else:
            cuts = _split(i0, rows, n_heads, offset, threads)
            runs = [
                _executor(threads).submit(_l1_rows, *args, lo, hi, prox.numpy())
                for lo, hi in pairwise(cuts)
                if hi > lo
            ]
            for run in runs:
                run.result()
        i0 = i1
    return prox
