"""Online A/B statistics over the experiment store: per-version satisfaction, latency and error
rates, the difference with its CI and p-value, a sample-ratio-mismatch check, and an
always-valid sequential p-value so that looking at the report while the test runs is safe.

Satisfaction is on [0, 1]: thumbs up 1 / down 0, a rating r of 1-5 as (r - 1) / 4, a free-form
score as given (it must already lie in [0, 1]).

The sequential test is the mixture sequential probability ratio test (mSPRT) for a difference
of two means under a normal approximation, with a N(0, tau^2) mixing distribution on the effect
(Johari, Koomen, Pekelis and Walsh, "Peeking at A/B tests", KDD 2017): after each observation,
Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2))), where d is the observed
difference and V its variance; the always-valid p-value is the running minimum of 1 / Lambda.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmscope.evaluate.stats import bootstrap, mean_of

DEFAULT_TAU = 0.1  # prior scale of the effect on satisfaction, for the mSPRT mixture
MIN_PER_ARM = 2


def chi_square_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df), exact for integer df (closed forms of the regularised
    upper incomplete gamma function for integer and half-integer shape)."""
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(half) * math.exp(-half) / math.sqrt(math.pi) * 2
    for i in range(1, (df + 1) // 2):
        total += term
        term *= half / (i + 0.5)
    return min(1.0, total)


def sample_ratio_mismatch(counts: dict[str, int], weights: dict[str, float]) -> dict[str, Any]:
    """Chi-square goodness of fit of the observed split against the configured weights."""
    arms = [arm for arm in weights if weights[arm] > 0]
    total = sum(counts.get(arm, 0) for arm in arms)
    if total == 0 or len(arms) < 2:
        return {"chi2": 0.0, "df": max(len(arms) - 1, 0), "p_value": 1.0, "mismatch": False}
    weight_sum = sum(weights[arm] for arm in arms)
    chi2 = sum(
        (counts.get(arm, 0) - total * weights[arm] / weight_sum) ** 2
        / (total * weights[arm] / weight_sum)
        for arm in arms
    )
    p = chi_square_sf(chi2, len(arms) - 1)
    return {
        "chi2": chi2,
        "df": len(arms) - 1,
        "p_value": p,
        "mismatch": p < 0.001,  # the usual SRM threshold: a broken split, not bad luck
        "observed": {arm: counts.get(arm, 0) for arm in arms},
        "expected": {arm: total * weights[arm] / weight_sum for arm in arms},
    }


def msprt_p_values(
    a: Sequence[float], b: Sequence[float], arms: Sequence[str], tau: float = DEFAULT_TAU
) -> list[float]:
    """Always-valid p-values after each observation, in arrival order; `arms[i]` says whether
    observation i belongs to "a" or "b" (and values are taken from a and b in that order)."""
    ia = ib = 0
    sums = {"a": [0.0, 0.0, 0], "b": [0.0, 0.0, 0]}  # sum, sum of squares, count
    p, out = 1.0, []
    for arm in arms:
        value = a[ia] if arm == "a" else b[ib]
        if arm == "a":
            ia += 1
        else:
            ib += 1
        s = sums[arm]
        s[0] += value
        s[1] += value * value
        s[2] += 1
        if sums["a"][2] >= MIN_PER_ARM and sums["b"][2] >= MIN_PER_ARM:
            mean_a, var_a = _mean_var(sums["a"])
            mean_b, var_b = _mean_var(sums["b"])
            v = max(var_a / sums["a"][2] + var_b / sums["b"][2], 1e-12)
            d = mean_b - mean_a
            log_lambda = 0.5 * math.log(v / (v + tau**2)) + d * d * tau**2 / (2 * v * (v + tau**2))
            p = min(p, math.exp(-log_lambda) if log_lambda < 700 else 0.0)
        out.append(min(p, 1.0))
    return out


def _mean_var(s: list[float]) -> tuple[float, float]:
    n = s[2]
    mean = s[0] / n
    return mean, max((s[1] - n * mean * mean) / (n - 1), 0.0)


def welch(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Difference of means b - a with a normal-approximation 95% CI and two-sided p-value
    (Welch's standard error; the sample sizes of an online test make the normal fine)."""
    d = float(b.mean() - a.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if se == 0:
        return {"difference": d, "ci95": [d, d], "p_value": 1.0 if d == 0 else 0.0}
    z = d / se
    return {
        "difference": d,
        "ci95": [d - 1.96 * se, d + 1.96 * se],
        "p_value": math.erfc(abs(z) / math.sqrt(2)),
    }


def ab_report(
    responses: list[dict[str, Any]],
    feedback: list[dict[str, Any]],
    experiments: list[dict[str, Any]],
    alias: str | None = None,
    tau: float = DEFAULT_TAU,
) -> dict[str, Any]:
    """The report of one experiment (an alias; the first configured one when not given)."""
    import json

    configured = {e["alias"]: json.loads(e["weights"]) for e in experiments}
    if alias is None:
        alias = next(iter(configured), None)
    served = [r for r in responses if r["alias"] == alias and not r["shadow_of"]]
    arms = list(configured.get(alias, {})) or sorted({r["model"] for r in served})
    by_id = {r["id"]: r for r in served}
    rated = [(f, by_id[f["response_id"]]) for f in feedback if f["response_id"] in by_id]
    versions: dict[str, Any] = {}
    for arm in arms:
        rows = [r for r in served if r["model"] == arm]
        scores = np.array([f["satisfaction"] for f, r in rated if r["model"] == arm], dtype=float)
        latencies = np.array([r["latency_s"] for r in rows if r["latency_s"] is not None])
        versions[arm] = {
            "requests": len(rows),
            "errors": sum(1 for r in rows if r["error"]),
            "error_rate": (sum(1 for r in rows if r["error"]) / len(rows)) if rows else 0.0,
            "feedback": len(scores),
            "satisfaction": (
                bootstrap(mean_of(scores), len(scores)).as_dict() if len(scores) else None
            ),
            "latency_p50_s": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "latency_p95_s": float(np.percentile(latencies, 95)) if len(latencies) else None,
            "completion_tokens": sum(r["completion_tokens"] or 0 for r in rows),
        }
    report: dict[str, Any] = {
        "alias": alias,
        "weights": configured.get(alias),
        "versions": versions,
        "shadow": _shadow_summary(responses, by_id),
    }
    if configured.get(alias):
        counts = {arm: versions[arm]["requests"] for arm in arms}
        report["sample_ratio"] = sample_ratio_mismatch(counts, configured[alias])
    if len(arms) >= 2:
        report["comparison"] = _compare_arms(arms[0], arms[1], rated, tau)
    return report


def _compare_arms(
    first: str, second: str, rated: list[tuple[dict[str, Any], dict[str, Any]]], tau: float
) -> dict[str, Any] | None:
    a = np.array([f["satisfaction"] for f, r in rated if r["model"] == first], dtype=float)
    b = np.array([f["satisfaction"] for f, r in rated if r["model"] == second], dtype=float)
    if len(a) < MIN_PER_ARM or len(b) < MIN_PER_ARM:
        return {
            "a": first,
            "b": second,
            "note": f"needs at least {MIN_PER_ARM} ratings per version",
        }
    order = sorted(rated, key=lambda pair: pair[0]["created"])
    sequence = [
        "a" if r["model"] == first else "b" for _, r in order if r["model"] in (first, second)
    ]
    values_a = [f["satisfaction"] for f, r in order if r["model"] == first]
    values_b = [f["satisfaction"] for f, r in order if r["model"] == second]
    always_valid = msprt_p_values(values_a, values_b, sequence, tau)[-1]
    fixed = welch(a, b)
    return {
        "a": first,
        "b": second,
        "metric": "satisfaction",
        **fixed,
        "always_valid_p_value": always_valid,
        "tau": tau,
        "significant": always_valid < 0.05,
        "verdict": (
            f"satisfaction {second} - {first} = {fixed['difference']:+.3f} (95% CI "
            f"{fixed['ci95'][0]:+.3f} to {fixed['ci95'][1]:+.3f}); always-valid p "
            f"{_p(always_valid)} ({'significant' if always_valid < 0.05 else 'not significant'}"
            f" at 0.05, safe to peek), fixed-horizon p {_p(fixed['p_value'])}; "
            f"{len(a)} and {len(b)} ratings"
        ),
    }


def _p(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"= {value:.3g}"


def _shadow_summary(responses: list[dict[str, Any]], served: dict[str, Any]) -> dict[str, Any]:
    shadows = [r for r in responses if r["shadow_of"] and r["shadow_of"] in served]
    if not shadows:
        return {}
    models = sorted({r["model"] for r in shadows})
    return {
        model: {
            "answers": sum(1 for r in shadows if r["model"] == model),
            "errors": sum(1 for r in shadows if r["model"] == model and r["error"]),
        }
        for model in models
    }
