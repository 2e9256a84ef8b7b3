"""ALTI-style proximity of parts to the whole they sum to.

For a whole y that is the exact sum of parts p_k:
    prox_k = max(||y|| - ||y - p_k||, 0)        imp_k = prox_k / sum_j prox_j
with the L1 norm by default (L2 selectable). A part that points away from the whole, or is too
small to bring the sum closer to y than its absence would, gets zero.

Numerics: ||y|| - ||y - p|| is a small difference of two large norms when p is small, so it is
never computed that way. L1 uses sum_d (|y_d| - |y_d - p_d|), whose terms are bounded by |p_d|;
L2 uses (||y||^2 - ||y - p||^2) / (||y|| + ||y - p||) = (2 y.p - p.p) / (||y|| + ||y - p||).
Both are exact rewrites and keep float32 results within ~1e-7 of a float64 reference.
"""

from __future__ import annotations

from typing import Literal

import torch

from lmscope.explain.errors import ExplainInputError

Norm = Literal["l1", "l2"]
NORMS = ("l1", "l2")


def norm_order(norm: str) -> int:
    if norm not in NORMS:
        raise ExplainInputError(f"norm must be 'l1' or 'l2', got {norm!r}")
    return 1 if norm == "l1" else 2


def vector_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """L1 or L2 norm over the last dimension."""
    return torch.linalg.vector_norm(x, ord=norm_order(norm), dim=-1)


def proximity(whole: torch.Tensor, part: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """max(||y|| - ||y - p||, 0) over the last dimension; whole and part broadcast."""
    if norm_order(norm) == 1:
        gain = (whole.abs() - (whole - part).abs()).sum(-1)
    else:
        num = 2 * (whole * part).sum(-1) - (part * part).sum(-1)
        den = vector_norm(whole, norm) + vector_norm(whole - part, norm)
        gain = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return gain.clamp_min(0.0)


def proximities(whole: torch.Tensor, parts: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """whole [..., D], parts [..., P, D] -> prox [..., P]."""
    return proximity(whole.unsqueeze(-2), parts, norm)


def normalise(prox: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
    """Importances prox / total (total defaults to the sum over the last dim); 0 where total is 0."""
    if total is None:
        total = prox.sum(-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, prox / safe, torch.zeros_like(prox))


def importances(whole: torch.Tensor, parts: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Shares of the whole: proximities normalised to sum to one over the parts."""
    return normalise(proximities(whole, parts, norm))
