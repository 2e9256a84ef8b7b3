"""Generation metrics through sacrebleu: BLEU, chrF and TER with their signatures, bootstrap
intervals (sacrebleu's own resampling of corpus statistics) and sacrebleu's paired tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric
from sacrebleu.significance import PairedTest

from lmscope.evaluate.stats import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PairedDifference,
    paired_bootstrap,
)

METRIC_CLASSES: dict[str, type[Metric]] = {"bleu": BLEU, "chrf": CHRF, "ter": TER}


def _metric(name: str) -> Metric:
    return METRIC_CLASSES[name]()


def corpus_scores(
    names: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, dict[str, Any]]:
    """Each metric's corpus score, 95% bootstrap interval over sentences and signature, as
    sacrebleu's CLI computes them (`--confidence`)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        metric = _metric(name)
        score = metric.corpus_score(list(hypotheses), [list(references)], n_bootstrap=resamples)
        half = float(getattr(score, "_ci", 0.0) or 0.0)
        mean = float(getattr(score, "_mean", score.score) or score.score)
        out[name] = {
            "value": float(score.score),
            "ci95": [mean - half, mean + half] if half else [score.score, score.score],
            "n": len(hypotheses),
            "signature": str(metric.get_signature()),
        }
    return out


def paired_tests(
    names: Sequence[str],
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    references: Sequence[str],
    *,
    test: str = "bs",
    resamples: int = 0,
    seed: int = DEFAULT_SEED,
) -> list[PairedDifference]:
    """sacrebleu's paired bootstrap (`bs`) or approximate randomisation (`ar`) of B against
    baseline A; identical to `sacrebleu --paired-bs` at the same seed and sample count."""
    metrics = {name: _metric(name) for name in names}
    previous = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        tester = PairedTest(
            [("A", list(hyps_a)), ("B", list(hyps_b))],
            metrics,
            [list(references)],
            test_type=test,
            n_samples=resamples,
        )
        _, scores = tester()
    finally:
        if previous is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = previous
    out = []
    n_samples = resamples or (1000 if test == "bs" else 10000)
    label = "bootstrap" if test == "bs" else "approximate randomisation"
    keys = [key for key in scores if key != "System"]  # sacrebleu renames (chrf -> chrF2)
    for name, key in zip(names, keys, strict=True):
        p = scores[key][1].p_value  # type: ignore[union-attr]
        interval = paired_bootstrap(
            name,
            sentence_aggregate(name, hyps_a, references),
            sentence_aggregate(name, hyps_b, references),
            len(references),
            seed=seed,
        )
        out.append(
            PairedDifference(
                name,
                interval.a,
                interval.b,
                interval.difference,
                interval.low,
                interval.high,
                float(p) if p is not None else 1.0,
                len(references),
                f"sacrebleu paired {label} ({n_samples} samples, seed {seed}); "
                "interval: paired bootstrap of corpus statistics",
            )
        )
    return out


def sentence_aggregate(
    name: str, hypotheses: Sequence[str], references: Sequence[str]
) -> Callable[[np.ndarray], float]:
    """metric(items) from sacrebleu's per-sentence sufficient statistics, so a resample costs a
    sum rather than a re-tokenisation (the way sacrebleu's own bootstrap works)."""
    metric = _metric(name)
    stats = np.asarray(metric._extract_corpus_statistics(list(hypotheses), [list(references)]))

    def aggregate(idx: np.ndarray) -> float:
        return float(metric._compute_score_from_stats(list(stats[idx].sum(0))).score)

    return aggregate
