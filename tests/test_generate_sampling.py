"""Sampling filters against brute-force references and Hugging Face's logits processors."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmscope.engine.sampling import (
    GenerationError,
    SamplingParams,
    apply_repetition_penalty,
    next_token,
    processed_logits,
    sample_from_probs,
    top_k_filter,
    top_p_filter,
)


def random_logits(seed: int, n: int = 50, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * scale


def brute_top_k(logits: list[float], k: int) -> set[int]:
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    return set(order[:k])


def brute_top_p(logits: list[float], p: float) -> set[int]:
    z = max(logits)
    weights = [math.exp(v - z) for v in logits]
    total = sum(weights)
    kept: set[int] = set()
    mass = 0.0
    for i in sorted(range(len(logits)), key=lambda i: -logits[i]):
        kept.add(i)
        mass += weights[i] / total
        if mass >= p:
            break
    return kept


def kept(filtered: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(filtered)).flatten().tolist())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 17, 49])
def test_top_k_keeps_the_k_largest(seed: int, k: int) -> None:
    logits = random_logits(seed)
    filtered = top_k_filter(logits, k)
    assert kept(filtered) == brute_top_k(logits.tolist(), k)
    finite = torch.isfinite(filtered)
    assert torch.equal(filtered[finite], logits[finite])  # survivors untouched


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [0.05, 0.3, 0.75, 0.95, 0.999])
def test_top_p_keeps_the_smallest_nucleus_reaching_p(seed: int, p: float) -> None:
    logits = random_logits(seed)
    assert kept(top_p_filter(logits, p)) == brute_top_p(logits.tolist(), p)


@pytest.mark.parametrize("scale", [0.5, 8.0])  # a wide nucleus and one inside the sorted head
@pytest.mark.parametrize("p", [0.5, 0.9])
def test_top_p_on_a_large_vocabulary(scale: float, p: float) -> None:
    logits = random_logits(7, n=2000, scale=scale)
    assert kept(top_p_filter(logits, p)) == brute_top_p(logits.tolist(), p)


def test_filters_that_are_off_change_nothing() -> None:
    logits = random_logits(0)
    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_p_filter(logits, 1.0), logits)


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_matches_hugging_face(penalty: float) -> None:
    logits = random_logits(1)[None]
    history = torch.tensor([[3, 7, 7, 20, 41]])
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[0, history[0]] = True
    ours = apply_repetition_penalty(logits, seen, penalty)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(history, logits.clone())
    torch.testing.assert_close(ours, theirs)
    # sign-aware: a penalty > 1 lowers every seen token's logit
    if penalty > 1:
        assert (ours[seen] < logits[seen]).all()


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(0.7, 0, 1.0), (1.3, 10, 1.0), (0.9, 0, 0.8), (0.5, 12, 0.9)],
)
def test_processing_chain_matches_hugging_face(
    temperature: float, top_k: int, top_p: float
) -> None:
    logits = random_logits(2)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    ours = torch.softmax(processed_logits(logits, params), -1)
    scores = logits[None].clone()
    ids = torch.zeros(1, 1, dtype=torch.long)
    scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    theirs = torch.softmax(scores[0], -1)
    torch.testing.assert_close(ours, theirs)


def test_inverse_cdf_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    g = torch.Generator().manual_seed(0)
    n = 6000
    counts = torch.zeros(6)
    for _ in range(n):
        counts[sample_from_probs(probs, g)] += 1
    assert counts[1] == 0 and counts[5] == 0  # zero-probability tokens never come up
    expected = probs * n
    nonzero = probs > 0
    chi2 = (((counts - expected)[nonzero]) ** 2 / expected[nonzero]).sum()
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


def test_unnormalised_and_edge_probabilities() -> None:
    g = torch.Generator().manual_seed(0)
    assert sample_from_probs(torch.tensor([0.0, 0.0, 2.0, 0.0]), g) == 2
    draws = {sample_from_probs(torch.tensor([3.0, 1.0]), g) for _ in range(200)}
    assert draws == {0, 1}


def test_seeded_draws_repeat_and_greedy_needs_no_generator() -> None:
    logits = random_logits(3)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    first = [next_token(logits, params, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert len(set(first)) == 1
    g = torch.Generator().manual_seed(5)
    run_a = [next_token(logits, params, g) for _ in range(20)]
    g = torch.Generator().manual_seed(5)
    assert [next_token(logits, params, g) for _ in range(20)] == run_a
    assert next_token(logits, SamplingParams(temperature=0)) == int(logits.argmax())


def test_sampled_tokens_stay_inside_the_filters() -> None:
    logits = random_logits(4)
    params = SamplingParams(temperature=2.0, top_k=5, top_p=0.9)
    allowed = kept(processed_logits(logits, params))
    assert allowed <= brute_top_k(logits.tolist(), 5)
    g = torch.Generator().manual_seed(1)
    assert {next_token(logits, params, g) for _ in range(300)} <= allowed


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_new_tokens=-1),
        dict(temperature=-0.1),
        dict(top_k=-2),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(repetition_penalty=0.0),
        dict(logprobs=-1),
        dict(stop=("",)),
    ],
)
def test_impossible_params_are_user_errors(bad: dict[str, object]) -> None:
    with pytest.raises(GenerationError):
        SamplingParams(**bad)  # type: ignore[arg-type]


def test_a_single_stop_string_is_accepted() -> None:
    assert SamplingParams(stop="\n").stop == ("\n",)  # type: ignore[arg-type]
