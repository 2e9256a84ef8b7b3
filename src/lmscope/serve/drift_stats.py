"""Two-sample drift statistics: population-stability index (PSI) and Kolmogorov-Smirnov (KS).

PSI bins both samples at the reference's quantiles, so every reference bin holds about the same
share; PSI = sum over bins of (current - reference) * ln(current / reference), with empty bins
floored at `EPS`. Rule of thumb (credit-risk practice): < 0.1 stable, 0.1-0.25 some shift,
> 0.25 a real shift. KS is the largest gap between the two empirical CDFs; its p-value uses
Kolmogorov's limiting distribution with Stephens' small-sample correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPS = 1e-4  # floor of a bin's share, so that an empty bin costs a finite amount


def quantile_edges(reference: Sequence[float], bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (ties merge bins: discrete values keep
    whole bins of their own)."""
    ref = np.asarray(reference, dtype=np.float64)
    if bins < 2 or ref.size == 0:
        return np.empty(0)
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.unique(np.quantile(ref, qs, method="lower"))  # observed values: ties stay whole


def bin_shares(values: Sequence[float], edges: np.ndarray) -> np.ndarray:
    """Share of `values` in each of the len(edges) + 1 bins; bin i is (edges[i-1], edges[i]],
    so a reference that is one value (say no rare tokens at all) still has a bin above it."""
    vals = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, vals, side="left"), minlength=edges.size + 1)
    return counts / max(1, vals.size)


def psi_from_shares(reference: np.ndarray, current: np.ndarray) -> float:
    ref = np.maximum(reference, EPS)
    cur = np.maximum(current, EPS)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """Population-stability index of `current` against `reference`, in reference-quantile bins."""
    edges = quantile_edges(reference, bins)
    return psi_from_shares(bin_shares(reference, edges), bin_shares(current, edges))


def category_shares(
    reference: Sequence[str], current: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The categories seen in either sample and each sample's share of them."""
    names = sorted(set(reference) | set(current))

    def shares(values: Sequence[str]) -> np.ndarray:
        counts = np.array([sum(1 for v in values if v == name) for name in names], dtype=float)
        return counts / max(1, len(values))

    return names, shares(reference), shares(current)


def psi_categorical(reference: Sequence[str], current: Sequence[str]) -> float:
    _, ref, cur = category_shares(reference, current)
    return psi_from_shares(ref, cur)


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample KS statistic: max over x of |F_a(x) - F_b(x)| (ties handled exactly)."""
    xa = np.sort(np.asarray(a, dtype=np.float64))
    xb = np.sort(np.asarray(b, dtype=np.float64))
    if xa.size == 0 or xb.size == 0:
        return 0.0
    grid = np.concatenate([xa, xb])
    fa = np.searchsorted(xa, grid, side="right") / xa.size
    fb = np.searchsorted(xb, grid, side="right") / xb.size
    return float(np.max(np.abs(fa - fb)))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for Kolmogorov's limiting distribution K (two series, each where it converges
    fast)."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:
        terms = sum(
            math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * lam * lam)) for k in range(1, 50)
        )
        return min(1.0, max(0.0, 1.0 - math.sqrt(2 * math.pi) / lam * terms))
    terms = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 50))
    return min(1.0, max(0.0, 2.0 * terms))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic d from samples of n and m."""
    if n == 0 or m == 0:
        return 1.0
    en = math.sqrt(n * m / (n + m))
    return kolmogorov_sf((en + 0.12 + 0.11 / en) * d)
