"""Drift monitoring: cheap per-request signals in rolling windows, compared with a reference.

Signals per finished request (from the engine's RequestRecord, see lmscope.engine.observer):
prompt length, the model's mean log-likelihood per prompt token (from the prefill it does
anyway), the share of prompt tokens never seen in the reference (or unknown), completion length
and finish reason. Prompt signals are compared with a reference profile built at start-up from a
calibration text or a prepared data directory (`drift_reference`); output signals have no
reference in a corpus, so they are compared with the server's first `window` requests (its
baseline). Each signal gets a PSI and, when numeric, a KS statistic and p-value; a signal drifts
when the window holds at least `min_samples` requests, PSI >= `psi_threshold` and (numeric
signals) the KS p-value < `ks_alpha`.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any

from lmscope.engine.observer import RequestRecord
from lmscope.serve import drift_stats
from lmscope.serve.drift_reference import ReferenceProfile, build_profile

PROMPT_SIGNALS = ("prompt_tokens", "prompt_logprob", "rare_token_share")
OUTPUT_SIGNALS = ("completion_tokens", "finish_reason")
SIGNALS = PROMPT_SIGNALS + OUTPUT_SIGNALS
CATEGORICAL = frozenset({"finish_reason"})


@dataclass
class DriftSettings:
    """`lmscope serve --drift-reference`: where the reference comes from and how to judge."""

    reference: str
    window: int = 200
    min_samples: int = 30
    psi_threshold: float = 0.25
    ks_alpha: float = 0.01
    bins: int = 10
    max_samples: int = 200  # reference samples scored at start-up
    max_tokens: int = 128  # context kept before a reference sample's scored end

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.window < 2:
            raise ValueError("the drift window must hold at least 2 requests")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError("drift min_samples must be between 1 and the window")
        if self.psi_threshold <= 0 or not 0 < self.ks_alpha < 1:
            raise ValueError("the drift PSI threshold must be > 0 and the KS alpha in (0, 1)")
        if self.bins < 2 or self.max_samples < 2 or self.max_tokens < 2:
            raise ValueError("drift bins, max_samples and max_tokens must be at least 2")


def bins_for(settings: DriftSettings, n_current: int) -> int:
    """Fewer bins for small windows: PSI's noise under no drift grows like bins / n."""
    return max(2, min(settings.bins, n_current // 8))


def compare(name: str, reference: list[Any], current: list[Any], bins: int) -> dict[str, Any]:
    """PSI (and KS for numeric signals) of one signal, with both histograms for reports."""
    out: dict[str, Any] = {"n_reference": len(reference), "n_current": len(current)}
    if not reference or not current:
        return out | {"psi": None, "ks": None, "ks_pvalue": None}
    if name in CATEGORICAL:
        names, ref, cur = drift_stats.category_shares(reference, current)
        hist = {"categories": names, "reference": ref.tolist(), "current": cur.tolist()}
        psi = drift_stats.psi_from_shares(ref, cur)
        return out | {"psi": psi, "ks": None, "ks_pvalue": None, "histogram": hist}
    edges = drift_stats.quantile_edges(reference, bins)
    ref_shares = drift_stats.bin_shares(reference, edges)
    cur_shares = drift_stats.bin_shares(current, edges)
    d = drift_stats.ks_statistic(reference, current)
    return out | {
        "psi": drift_stats.psi_from_shares(ref_shares, cur_shares),
        "ks": d,
        "ks_pvalue": drift_stats.ks_pvalue(d, len(reference), len(current)),
        "mean_reference": sum(reference) / len(reference),
        "mean_current": sum(current) / len(current),
        "histogram": {
            "edges": edges.tolist(),
            "min": float(min(min(reference), min(current))),
            "max": float(max(max(reference), max(current))),
            "reference": ref_shares.tolist(),
            "current": cur_shares.tolist(),
        },
    }


class DriftMonitor:
    """One served model's signals (an engine RequestMonitor); thread-safe."""

    def __init__(self, model_id: str, profile: ReferenceProfile, settings: DriftSettings) -> None:
        self.model_id = model_id
        self.profile = profile
        self.settings = settings
        self.requests = 0
        self._lock = threading.Lock()
        self._window: dict[str, collections.deque[Any]] = {
            name: collections.deque(maxlen=settings.window) for name in SIGNALS
        }
        self._baseline: dict[str, list[Any]] = {name: [] for name in OUTPUT_SIGNALS}

    def on_request(self, model: str, record: RequestRecord) -> None:
        values: dict[str, Any] = {
            "prompt_tokens": float(len(record.prompt_ids)),
            "prompt_logprob": record.prompt_logprob,
            "rare_token_share": self.profile.rare_share(record.prompt_ids),
            "completion_tokens": float(record.completion_tokens),
            "finish_reason": record.finish_reason,
        }
        with self._lock:
            self.requests += 1
            for name, value in values.items():
                if value is None:
                    continue
                self._window[name].append(value)
                baseline = self._baseline.get(name)
                if baseline is not None and len(baseline) < self.settings.window:
                    baseline.append(value)

    def reference(self, name: str) -> list[Any]:
        if name in PROMPT_SIGNALS:
            return list(getattr(self.profile, name))
        return list(self._baseline[name])

    def snapshot(self) -> dict[str, Any]:
        """Every signal's statistics over the current window, and whether it drifts."""
        s = self.settings
        with self._lock:
            current = {name: list(window) for name, window in self._window.items()}
            references = {name: self.reference(name) for name in SIGNALS}
            requests = self.requests
        signals = []
        for name in SIGNALS:
            stats = compare(name, references[name], current[name], bins_for(s, len(current[name])))
            enough = len(current[name]) >= s.min_samples and len(references[name]) >= s.min_samples
            if name in OUTPUT_SIGNALS:  # the baseline is the window's own past, not yet a change
                enough = enough and requests > s.window
            psi_high = stats["psi"] is not None and stats["psi"] >= s.psi_threshold
            ks_low = stats["ks_pvalue"] is None or stats["ks_pvalue"] < s.ks_alpha
            signals.append(
                {
                    "name": name,
                    "reference": "data" if name in PROMPT_SIGNALS else "baseline",
                    **stats,
                    "drift": bool(enough and psi_high and ks_low),
                }
            )
        return {
            "model": self.model_id,
            "drift": any(sig["drift"] for sig in signals),
            "requests": requests,
            "reference": {"source": self.profile.source, "samples": self.profile.samples},
            "signals": signals,
        }


class DriftHub:
    """The server's drift monitors, one per served model."""

    def __init__(self, settings: DriftSettings) -> None:
        settings.check()
        self.settings = settings
        self.monitors: dict[str, DriftMonitor] = {}

    def attach(self, model_id: str, model: Any, tokenizer: Any) -> DriftMonitor:
        """Build the model's reference profile (scoring the reference with it) and its monitor;
        raises DriftReferenceError when the reference cannot be used."""
        s = self.settings
        profile = build_profile(
            s.reference, model, tokenizer, max_samples=s.max_samples, max_tokens=s.max_tokens
        )
        monitor = DriftMonitor(model_id, profile, s)
        self.monitors[model_id] = monitor
        return monitor

    def snapshot(self) -> dict[str, Any]:
        s = self.settings
        models = [monitor.snapshot() for monitor in self.monitors.values()]
        return {
            "object": "drift",
            "drift": any(m["drift"] for m in models),
            "window": s.window,
            "thresholds": {
                "psi": s.psi_threshold,
                "ks_alpha": s.ks_alpha,
                "min_samples": s.min_samples,
            },
            "models": models,
        }
