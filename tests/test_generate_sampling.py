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
    SequenceSampler,
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
        dict(temperature=float("nan")),
        dict(presence_penalty=2.5),
        dict(frequency_penalty=-3.0),
        dict(logit_bias={5: 101.0}),
        dict(logit_bias={5: float("nan")}),
        dict(logit_bias={True: 1.0}),
        dict(logit_bias={"five": 1.0}),
        dict(stop_token_ids=(True,)),
        dict(logits_processors=("not callable",)),
    ],
)
def test_impossible_params_are_user_errors(bad: dict[str, object]) -> None:
    with pytest.raises(GenerationError):
        SamplingParams(**bad)  # type: ignore[arg-type]


def test_a_single_stop_string_is_accepted() -> None:
    assert SamplingParams(stop="\n").stop == ("\n",)  # type: ignore[arg-type]


def test_nan_is_named_as_not_a_number() -> None:
    with pytest.raises(GenerationError, match="temperature is not a number"):
        SamplingParams(temperature=float("nan"))


# ---- OpenAI's presence/frequency penalties, logit_bias, custom processors ----------------------


def brute_openai_penalties(
    logits: list[float], generated: list[int], presence: float, frequency: float
) -> list[float]:
    """OpenAI's documented formula, token by token: mu[j] - c[j] * frequency - (c[j] > 0) * presence,
    with c[j] the count of token j in the completion so far."""
    out = []
    for j, mu in enumerate(logits):
        c = generated.count(j)
        out.append(mu - c * frequency - (1.0 if c > 0 else 0.0) * presence)
    return out


@pytest.mark.parametrize(("presence", "frequency"), [(0.5, 0.0), (0.0, 0.8), (1.5, -0.7), (-2, 2)])
def test_presence_and_frequency_penalties_follow_openai(presence: float, frequency: float) -> None:
    logits = random_logits(5)
    generated = [3, 7, 7, 7, 20, 41, 3]
    params = SamplingParams(temperature=0, presence_penalty=presence, frequency_penalty=frequency)
    expected = brute_openai_penalties(logits.tolist(), generated, presence, frequency)
    got = processed_logits(logits, params, generated=generated)
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    # the sampler's running counts give the same as counting the list from scratch
    sampler = SequenceSampler(params, [1, 2, 3], vocab_size=50, device=torch.device("cpu"))
    for token in generated:
        sampler.observe(token)
    running = processed_logits(logits, params, counts=sampler.counts, generated=generated)
    assert running.tolist() == pytest.approx(expected, abs=1e-5)
    assert not params.plain_greedy


def test_penalties_count_the_completion_not_the_prompt() -> None:
    logits = torch.zeros(10)
    params = SamplingParams(temperature=0, presence_penalty=1.0)
    sampler = SequenceSampler(params, [4, 4, 4], vocab_size=10, device=torch.device("cpu"))
    assert sampler.choose(logits, []) == 0  # nothing generated: every logit still 0
    sampler.observe(0)
    assert sampler.choose(logits, [0]) == 1  # token 0 now penalised, the prompt's 4 is not


def test_logit_bias_adds_to_the_named_tokens() -> None:
    logits = random_logits(6)
    bias = {0: -100.0, 7: 3.5, "12": 100}  # JSON object keys arrive as strings
    params = SamplingParams(temperature=0.8, logit_bias=bias)  # type: ignore[arg-type]
    assert params.logit_bias == {0: -100.0, 7: 3.5, 12: 100.0}
    expected = logits.tolist()
    for token, value in params.logit_bias.items():
        expected[token] += value
    expected = [v / 0.8 for v in expected]
    assert processed_logits(logits, params).tolist() == pytest.approx(expected, abs=1e-5)
    banned = SamplingParams(temperature=0, logit_bias={int(logits.argmax()): -100})
    assert next_token(logits, banned) != int(logits.argmax())
    g = torch.Generator().manual_seed(0)
    forced = SamplingParams(temperature=1.0, logit_bias={13: 100})
    assert {next_token(logits, forced, g) for _ in range(50)} == {13}
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        SequenceSampler(forced, [1], vocab_size=13, device=torch.device("cpu"))


def test_logits_processors_run_first_with_the_generated_ids() -> None:
    logits = random_logits(8)
    calls: list[list[int]] = []

    def only_even(generated, row):  # type: ignore[no-untyped-def]
        calls.append(list(generated))
        masked = row.clone()
        masked[1::2] = float("-inf")
        return masked

    params = SamplingParams(temperature=1.0, top_k=3, logits_processors=(only_even,))
    out = processed_logits(logits, params, generated=[4, 2])
    assert calls == [[4, 2]]
    evens = logits.clone()
    evens[1::2] = float("-inf")
    # top-k applies after the mask: the three best even tokens survive, unchanged
    assert kept(out) == brute_top_k(evens.tolist(), 3)
    g = torch.Generator().manual_seed(2)
    assert all(next_token(logits, params, g) % 2 == 0 for _ in range(100))
    assert not params.plain_greedy
