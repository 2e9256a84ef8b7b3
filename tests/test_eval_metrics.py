"""Evaluation metrics against their references: lm-evaluation-harness's perplexity formulas,
scikit-learn's classification metrics, sacrebleu's CLI, and exact tests for the statistics."""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmscope.evaluate.metrics import (
    PerplexityItems,
    averaged_scores,
    confusion_matrix,
    contains,
    exact_match,
    per_class_scores,
)
from lmscope.evaluate.stats import bootstrap, mcnemar, paired_bootstrap
from lmscope.evaluate.textgen import corpus_scores, paired_tests

DOCS = [
    "The quick brown fox  jumps over the lazy dog.",
    "Naïve café — déjà vu.\nSecond line here",
    "one",
]
LL = [-31.5, -57.25, -4.0]
TOKENS = [11, 19, 1]


def test_perplexity_equals_lm_eval_formulas() -> None:
    """lm-eval: weighted_perplexity = exp(-Σll/Σweights), bits_per_byte = -Σll/Σbytes/ln 2,
    with words from re.split(r"\\s+", doc) and bytes from the UTF-8 encoding (restated here)."""
    items = PerplexityItems.from_docs(LL, TOKENS, DOCS)
    idx = np.arange(len(DOCS))
    words = sum(len(re.split(r"\s+", d)) for d in DOCS)
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    expected = {
        "word_perplexity": math.exp(-sum(LL) / words),
        "byte_perplexity": math.exp(-sum(LL) / n_bytes),
        "bits_per_byte": -sum(LL) / n_bytes / math.log(2),
        "token_perplexity": math.exp(-sum(LL) / sum(TOKENS)),
    }
    for name, fn in items.aggregates().items():
        assert fn(idx) == pytest.approx(expected[name], rel=1e-9), name
    try:  # the reference implementation itself, where installed
        from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    except ImportError:
        return
    pairs_w = list(zip(LL, [len(re.split(r"\s+", d)) for d in DOCS], strict=True))
    pairs_b = list(zip(LL, [len(d.encode()) for d in DOCS], strict=True))
    assert items.word_perplexity(idx) == pytest.approx(weighted_perplexity(pairs_w), rel=1e-6)
    assert items.bits_per_byte(idx) == pytest.approx(bits_per_byte(pairs_b), rel=1e-6)


def _random_labels(seed: int, n: int, k: int, unmatched: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(k, n, p=np.linspace(1, 3, k) / np.linspace(1, 3, k).sum())
    predicted = np.where(rng.random(n) < 0.6, truth, rng.integers(0, k + unmatched, n))
    return truth, predicted


@pytest.mark.parametrize("unmatched", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_equals_scikit_learn(seed: int, unmatched: bool) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    k = 4
    truth, predicted = _random_labels(seed, 200, k, unmatched)
    labels = list(range(k))
    counts = confusion_matrix(truth, predicted, k)
    reference = sklearn_metrics.confusion_matrix(truth, predicted, labels=[*labels, k])
    assert np.array_equal(counts, reference[:k])
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    ours = per_class_scores(counts)
    for mine, theirs in ((ours["precision"], p), (ours["recall"], r), (ours["f1"], f)):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-12)
    assert np.array_equal(ours["support"], s)
    averaged = averaged_scores(counts)
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
            truth, predicted, labels=labels, average=average, zero_division=0
        )
        assert abs(averaged[f"{average}_precision"] - p) < 1e-12, average
        assert abs(averaged[f"{average}_recall"] - r) < 1e-12, average
        assert abs(averaged[f"{average}_f1"] - f) < 1e-12, average
    assert abs(averaged["accuracy"] - sklearn_metrics.accuracy_score(truth, predicted)) < 1e-12


HYPS = [
    "The cat sat on the mat .",
    "A quick brown fox jumped over dogs",
    "in the beginning was the word",
    "to be or not to be",
    "the light was good and God divided it",
    "he went home early",
]
REFS = [
    "The cat is sitting on the mat .",
    "The quick brown fox jumps over the lazy dog",
    "In the beginning was the Word",
    "To be, or not to be",
    "God saw the light, that it was good",
    "he went home late",
]
HYPS_B = [
    "The cat sat on a mat .",
    "The quick brown fox jumps over the dog",
    "In the beginning was the Word",
    "to be or not",
    "God saw the light that was good",
    "he went to his home late",
]


def _sacrebleu_cli(args: list[str], tmp_path: Path) -> str:
    exe = Path(sys.executable).with_name("sacrebleu")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout


def _write(tmp_path: Path) -> None:
    (tmp_path / "ref.txt").write_text("\n".join(REFS) + "\n")
    (tmp_path / "a.txt").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(HYPS_B) + "\n")


def test_generation_metrics_equal_sacrebleu_cli(tmp_path: Path) -> None:
    _write(tmp_path)
    ours = corpus_scores(["bleu", "chrf", "ter"], HYPS, REFS)
    out = _sacrebleu_cli(
        ["ref.txt", "-i", "a.txt", "-m", "bleu", "chrf", "ter", "-w", "4", "-f", "json"], tmp_path
    )
    theirs = json.loads(out)
    by_name = {entry["name"].lower().rstrip("2"): entry for entry in theirs}
    for name in ("bleu", "chrf", "ter"):
        assert abs(ours[name]["value"] - by_name[name]["score"]) <= 0.01, name
        assert ours[name]["n"] == len(HYPS)
        assert "version:" in ours[name]["signature"]


def test_paired_bootstrap_p_values_equal_sacrebleu_cli(tmp_path: Path) -> None:
    _write(tmp_path)
    ours = paired_tests(["bleu", "chrf"], HYPS, HYPS_B, REFS, test="bs", resamples=200, seed=12345)
    out = _sacrebleu_cli(
        ["ref.txt", "-i", "a.txt", "b.txt", "-m", "bleu", "chrf", "--paired-bs",
         "--paired-bs-n", "200", "-w", "4", "-f", "text"],
        tmp_path,
    )  # fmt: skip
    # (sacrebleu 2.6's JSON output cannot serialise paired results, so read its table)
    p_values = [float(v) for v in re.findall(r"\(p = ([0-9.]+)\)", out)]
    assert len(p_values) == 2, out
    # identical to the 4 decimals the CLI prints
    assert [d.p_value for d in ours] == pytest.approx(p_values, abs=5e-5)


def test_mcnemar_is_the_exact_binomial_test() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a = rng.random(120) < 0.6
    b = np.where(rng.random(120) < 0.8, a, ~a)
    result = mcnemar("accuracy", list(a), list(b))
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-9)
    assert result.difference == pytest.approx(b.mean() - a.mean())


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = np.random.default_rng(0).normal(2.0, 1.0, 400)
    estimate = bootstrap(lambda idx: float(values[idx].mean()), len(values))
    again = bootstrap(lambda idx: float(values[idx].mean()), len(values))
    assert estimate == again
    assert estimate.low < estimate.value < estimate.high
    # the percentile interval of a mean is close to the normal-theory one
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert (estimate.high - estimate.low) / 2 == pytest.approx(half, rel=0.15)


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 300)
    better = base + 0.3 + rng.normal(0, 0.1, 300)
    same = base + rng.normal(0, 0.1, 300)

    def mean(v: np.ndarray):  # type: ignore[no-untyped-def]
        return lambda idx: float(v[idx].mean())

    real = paired_bootstrap("m", mean(base), mean(better), 300)
    assert real.significant and real.low > 0.25 and real.high < 0.35
    null = paired_bootstrap("m", mean(base), mean(same), 300)
    assert null.low < 0 < null.high


def test_answer_matching() -> None:
    assert exact_match("The Fox!", "fox") == 1.0
    assert exact_match("a fox jumps", "fox") == 0.0
    assert contains("I think a fox jumps", "the fox") == 1.0
    assert contains("a dog", "fox") == 0.0


def test_paired_bootstrap_p_is_not_below_the_exact_sign_flip_p_on_few_items() -> None:
    """3 documents that all favour B: the bootstrap alone says p = 0.002 (every resample favours
    B), but a random relabelling of A/B within each pair is as extreme 2 times in 8."""
    a = np.array([5.3, 5.1, 5.4])
    b = a - np.array([0.004, 0.010, 0.006])
    result = paired_bootstrap("m", lambda i: float(a[i].mean()), lambda i: float(b[i].mean()), 3)
    diffs = b - a
    flips = [np.mean(np.array(signs) * diffs) for signs in itertools.product((1, -1), repeat=3)]
    exact = np.mean([abs(f) >= abs(diffs.mean()) - 1e-12 for f in flips])
    assert exact == 0.25
    assert result.p_value >= exact
    assert not result.significant


def test_metric_line_keeps_a_negative_interval_bound_readable() -> None:
    """BLEU on 3 sentences: sacrebleu's interval starts below zero; `-0.8811-5.078` read as one
    number range from -0.88 to -5.08 or worse."""
    from lmscope.evaluate.report import metric_line

    line = metric_line("bleu", {"value": 1.904, "ci95": [-0.8811, 5.078], "n": 3})
    assert line == "bleu = 1.904 (95% CI -0.8811 to 5.078, n=3)"
