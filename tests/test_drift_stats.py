"""Drift statistics against independent computations: PSI by a plain loop over bins, KS against
scipy, and the drift flag of a monitor on synthetic windows."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from scipy import stats

from lmscope.engine.observer import RequestRecord
from lmscope.serve import drift_stats
from lmscope.serve.drift import DriftMonitor, DriftSettings
from lmscope.serve.drift_reference import ReferenceProfile


def brute_psi(reference: list[float], current: list[float], edges: list[float]) -> float:
    """PSI with bins (-inf, e0], (e0, e1], ..., (e_last, inf), counted one value at a time."""
    bounds = [-math.inf, *edges, math.inf]
    total = 0.0
    for lo, hi in itertools.pairwise(bounds):
        r = sum(1 for v in reference if lo < v <= hi) / len(reference)
        c = sum(1 for v in current if lo < v <= hi) / len(current)
        r, c = max(r, drift_stats.EPS), max(c, drift_stats.EPS)
        total += (c - r) * math.log(c / r)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psi_equals_a_loop_over_reference_quantile_bins(seed: int) -> None:
    rng = random.Random(seed)
    reference = [rng.gauss(0, 1) for _ in range(300)]
    current = [rng.gauss(0.3 * seed, 1 + seed / 2) for _ in range(80)]
    edges = drift_stats.quantile_edges(reference, 10).tolist()
    assert len(edges) == 9
    assert sorted(edges) == edges
    # each reference bin holds a tenth of the reference (continuous data)
    assert drift_stats.bin_shares(reference, np.array(edges)) == pytest.approx([0.1] * 10, abs=0.01)
    expected = brute_psi(reference, current, edges)
    assert drift_stats.psi(reference, current, bins=10) == pytest.approx(expected, rel=1e-12)


def test_psi_of_discrete_values_and_categories() -> None:
    reference = [1.0] * 50 + [2.0] * 30 + [5.0] * 20
    current = [1.0] * 10 + [2.0] * 10 + [5.0] * 60 + [9.0] * 20
    edges = drift_stats.quantile_edges(reference, 10).tolist()
    assert set(edges) <= {1.0, 2.0, 5.0}  # tied quantiles merge
    assert drift_stats.psi(reference, current) == pytest.approx(
        brute_psi(reference, current, edges)
    )
    assert drift_stats.psi(reference, reference) == 0.0
    # a reference that is one value still separates anything above it
    assert drift_stats.psi([0.0] * 50, [0.5] * 50) == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))
    ref_cats = ["stop"] * 70 + ["length"] * 30
    cur_cats = ["stop"] * 20 + ["length"] * 60 + ["abort"] * 20
    expected = sum(
        (max(c, 1e-4) - max(r, 1e-4)) * math.log(max(c, 1e-4) / max(r, 1e-4))
        for r, c in ((0.7, 0.2), (0.3, 0.6), (0.0, 0.2))
    )
    assert drift_stats.psi_categorical(ref_cats, cur_cats) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ks_statistic_matches_scipy_with_and_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=200)
    b = rng.normal(0.2 * seed, 1.0, size=50)
    if seed % 2:  # integer-valued signals (prompt lengths) have ties
        a, b = np.round(a * 3), np.round(b * 3)
    expected = stats.ks_2samp(a, b).statistic
    assert drift_stats.ks_statistic(a.tolist(), b.tolist()) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.6, 0.9, 1.1, 1.18, 1.2, 1.5, 2.0, 3.0])
def test_kolmogorov_survival_matches_scipy(lam: float) -> None:
    assert drift_stats.kolmogorov_sf(lam) == pytest.approx(stats.kstwobign.sf(lam), abs=1e-10)


def test_ks_pvalue_is_close_to_scipy_exact_for_moderate_samples() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=150), rng.normal(0.4, 1.0, size=60)
    result = stats.ks_2samp(a, b, method="exact")
    ours = drift_stats.ks_pvalue(result.statistic, 150, 60)
    assert ours == pytest.approx(result.pvalue, rel=0.1)


def profile(values: dict[str, list[float]]) -> ReferenceProfile:
    return ReferenceProfile(
        source="synthetic",
        prompt_tokens=values["prompt_tokens"],
        prompt_logprob=values["prompt_logprob"],
        rare_token_share=values["rare_token_share"],
        token_counts=np.ones(100, dtype=np.int64),
    )


def test_monitor_flags_a_shifted_window_and_not_a_fresh_draw() -> None:
    rng = random.Random(0)
    ref = {
        "prompt_tokens": [float(rng.randint(20, 60)) for _ in range(200)],
        "prompt_logprob": [rng.gauss(-3.0, 0.4) for _ in range(200)],
        "rare_token_share": [0.0] * 200,
    }
    settings = DriftSettings("synthetic", window=60, min_samples=30)
    monitor = DriftMonitor("m", profile(ref), settings)

    def feed(n: int, length: tuple[int, int], logprob: float) -> None:
        for _ in range(n):
            ids = list(range(rng.randint(*length)))
            monitor.on_request("m", RequestRecord(ids, rng.gauss(logprob, 0.4), 4, "length"))

    feed(20, (20, 60), -3.0)
    early = monitor.snapshot()
    assert not early["drift"]  # fewer than min_samples: no judgement yet
    feed(60, (20, 60), -3.0)
    calm = monitor.snapshot()
    assert not calm["drift"], calm
    feed(60, (20, 60), -5.0)  # same lengths, much less likely text
    shifted = {s["name"]: s for s in monitor.snapshot()["signals"]}
    assert shifted["prompt_logprob"]["drift"] and not shifted["prompt_tokens"]["drift"]
    assert shifted["prompt_logprob"]["ks"] == pytest.approx(
        stats.ks_2samp(ref["prompt_logprob"], list(monitor._window["prompt_logprob"])).statistic
    )
