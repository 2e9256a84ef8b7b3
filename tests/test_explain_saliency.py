"""Input attribution: gradient x input, integrated gradients, attention rollout."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from lmscope.explain import (
    TraceView,
    attention_rollout,
    gradient_x_input,
    integrated_gradients,
    record,
)
from lmscope.explain.errors import ExplainInputError, TargetOutOfRangeError
from lmscope.model.layers import RMSNorm
from test_explain_support import tiny_model, tokens

T = 8


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa", "neox_parallel"])
def model(request):  # type: ignore[no-untyped-def]
    return tiny_model(request.param, n_layers=2)


@pytest.fixture
def model64(model, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A float64 copy of `model` that computes in float64 throughout (the library's RMSNorm
    normalises in float32 for non-float32 inputs, which would limit the reference's precision)."""

    def rms64(self: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    monkeypatch.setattr(RMSNorm, "forward", rms64)
    yield copy.deepcopy(model).double()


def _score(model, embeds: torch.Tensor, pos: int, target: int, foil: int | None = None) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        logits = model(input_embeds=embeds)[0, pos]
    value = logits[target] - (logits[foil] if foil is not None else 0.0)
    return float(value)


def test_gradient_x_input_matches_a_finite_difference(model) -> None:  # type: ignore[no-untyped-def]
    """sum_t attr_t = grad . x = d/de score(x * (1 + e)) at e = 0, checked numerically."""
    ids = tokens(T)
    attr = gradient_x_input(model, ids, position=5, target=3)
    assert len(attr.scores) == 6 and attr.tokens == ids[:6].tolist()
    x = model.embed_tokens(ids[None]).detach().double()
    model64 = model.double()
    try:
        eps = 3e-3  # RMSNorm computes in float32, so not smaller
        up = _score(model64, x * (1 + eps), 5, 3)
        down = _score(model64, x * (1 - eps), 5, 3)
    finally:
        model.float()
    assert sum(attr.scores) == pytest.approx((up - down) / (2 * eps), rel=1e-3, abs=1e-4)


def test_attribution_only_sees_tokens_up_to_the_position(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)
    a = gradient_x_input(model, ids, position=4, target=7)
    b = gradient_x_input(model, ids[:5], position=-1, target=7)
    assert a.scores == pytest.approx(b.scores, abs=1e-6)


def test_contrast_is_target_minus_foil(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)
    t, f = gradient_x_input(model, ids, target=3), gradient_x_input(model, ids, target=9)
    c = gradient_x_input(model, ids, target=3, foil=9)
    assert c.scores == pytest.approx(
        [x - y for x, y in zip(t.scores, f.scores, strict=True)], abs=1e-5
    )
    ig_t = integrated_gradients(model, ids, target=3, n_steps=8)
    ig_f = integrated_gradients(model, ids, target=9, n_steps=8)
    ig_c = integrated_gradients(model, ids, target=3, foil=9, n_steps=8)
    diff = [x - y for x, y in zip(ig_t.scores, ig_f.scores, strict=True)]
    assert ig_c.scores == pytest.approx(diff, abs=1e-5)


def test_integrated_gradients_completeness_and_batching(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)
    # A token baseline keeps the path away from 0, where RMSNorm/LayerNorm change steeply.
    coarse = integrated_gradients(model, ids, target=3, n_steps=2, batch_size=2, baseline=0)
    fine = integrated_gradients(model, ids, target=3, n_steps=128, batch_size=32, baseline=0)
    gap = fine.meta["value"] - fine.meta["baseline_value"]
    assert sum(fine.scores) == pytest.approx(gap, abs=2e-3 * max(1.0, abs(gap)))
    assert abs(fine.meta["delta"]) <= abs(coarse.meta["delta"]) + 1e-6
    x = model.embed_tokens(ids[None]).detach()
    assert fine.meta["value"] == pytest.approx(_score(model, x, T - 1, 3), abs=1e-5)
    one = integrated_gradients(model, ids, target=3, n_steps=6, batch_size=1)
    many = integrated_gradients(model, ids, target=3, n_steps=6, batch_size=4)
    assert one.scores == pytest.approx(many.scores, abs=1e-5)
    logprob = integrated_gradients(model, ids, target=3, n_steps=4, score="logprob")
    assert logprob.score == "logprob" and logprob.meta["baseline"] == "zeros"
    # The zero baseline's delta is the completeness gap against independently computed ends.
    with torch.no_grad():
        ends = torch.log_softmax(model(input_embeds=torch.cat([x, torch.zeros_like(x)])), -1)
    value, base = float(ends[0, -1, 3]), float(ends[1, -1, 3])
    assert logprob.meta["value"] == pytest.approx(value, abs=1e-5)
    assert logprob.meta["baseline_value"] == pytest.approx(base, abs=1e-5)
    gap = sum(logprob.scores) - (value - base)
    assert logprob.meta["delta"] == pytest.approx(gap, abs=1e-4)


def test_gradient_x_input_per_token_matches_float64_finite_differences(model, model64) -> None:  # type: ignore[no-untyped-def]
    """attr_t = grad_t . x_t = d/de score(x with row t scaled by 1 + e) at e = 0, each token."""
    ids = tokens(T)
    attr = gradient_x_input(model, ids, position=6, target=5, foil=2)
    x = model64.embed_tokens(ids[None, :7]).detach()
    eps = 1e-5
    expected = []
    for t in range(7):
        scale = torch.ones(1, 7, 1, dtype=torch.float64)
        up, down = scale.clone(), scale.clone()
        up[0, t], down[0, t] = 1 + eps, 1 - eps
        diff = _score(model64, x * up, 6, 5, 2) - _score(model64, x * down, 6, 5, 2)
        expected.append(diff / (2 * eps))
    size = max(abs(e) for e in expected)
    assert attr.scores == pytest.approx(expected, rel=1e-4, abs=1e-5 * size)


def test_integrated_gradients_per_token_matches_a_float64_path_sum(model, model64) -> None:  # type: ignore[no-untyped-def]
    """Every token's IG equals an explicit float64 midpoint sum over the straight path, whatever
    the batching (one point per pass under a tiny memory budget, or all points at once)."""
    ids = tokens(T)
    n, base_token = 5, 7
    x = model64.embed_tokens(ids[None]).detach()
    x0 = model64.embed_tokens(torch.full_like(ids[None], base_token)).detach()
    total = torch.zeros_like(x)
    for k in range(n):
        point = (x0 + (k + 0.5) / n * (x - x0)).requires_grad_(True)
        logits = model64(input_embeds=point)[0, -1]
        (grad,) = torch.autograd.grad(logits[4] - logits[1], point)
        total += grad
    expected = ((x - x0) * total / n)[0].sum(-1).tolist()
    size = max(abs(e) for e in expected)
    for kwargs in ({"memory_budget": 1}, {"batch_size": n}, {"batch_size": 2}):
        ig = integrated_gradients(
            model, ids, target=4, foil=1, n_steps=n, baseline=base_token, **kwargs
        )
        assert ig.scores == pytest.approx(expected, rel=1e-4, abs=1e-5 * size)
    assert integrated_gradients(model, ids, n_steps=n, memory_budget=1).meta["batch_size"] == 1


def test_default_target_is_the_prediction(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)
    attr = gradient_x_input(model, ids)
    with torch.no_grad():
        assert attr.target == int(model(ids[None])[0, -1].argmax())
    assert attr.to_dict()["method"] == "gradient_x_input"


def test_attention_rollout(model) -> None:  # type: ignore[no-untyped-def]
    view = TraceView(model, record(model, tokens(T)))
    roll = attention_rollout(view, position=5)
    assert len(roll.scores) == 6
    assert sum(roll.scores) == pytest.approx(1.0, abs=1e-5)
    assert min(roll.scores) >= 0
    first = attention_rollout(view, position=0)
    assert first.scores == pytest.approx([1.0])
    pure = attention_rollout(view, position=5, residual=1.0)  # identity only
    assert pure.scores == pytest.approx([0, 0, 0, 0, 0, 1.0])


def test_attention_rollout_is_the_explicit_product(model) -> None:  # type: ignore[no-untyped-def]
    """Rollout row i = row i of M_{L-1} ... M_1 M_0, with M_l = r I + (1 - r) mean_h A_l
    (rows renormalised), written out with scalar loops in float64."""
    trace = model.run_with_trace(tokens(T)[None], names=lambda n: True)  # keeps the patterns
    view = TraceView(model, trace)
    n, r = 6, 0.3
    rollout = [[float(i == j) for j in range(n)] for i in range(n)]
    for layer in range(model.cfg.n_layers):
        pattern = trace[f"blocks.{layer}.attn.hook_pattern"][0].double()  # [H, T, T]
        heads = pattern.shape[0]
        mix = [
            [
                r * (i == j) + (1 - r) * sum(float(pattern[h, i, j]) for h in range(heads)) / heads
                for j in range(n)
            ]
            for i in range(n)
        ]
        mix = [[v / sum(row) for v in row] for row in mix]
        rollout = [
            [sum(mix[i][k] * rollout[k][j] for k in range(n)) for j in range(n)] for i in range(n)
        ]
    for position in (0, 3, 5):
        got = attention_rollout(view, position=position, residual=r).scores
        assert got == pytest.approx(rollout[position][: position + 1], abs=1e-6)


def test_saliency_errors(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)
    with pytest.raises(TargetOutOfRangeError):
        gradient_x_input(model, ids, position=T)
    with pytest.raises(ExplainInputError, match="vocabulary"):
        gradient_x_input(model, ids, target=10_000)
    with pytest.raises(ExplainInputError, match="vocabulary"):
        integrated_gradients(model, ids, foil=-1)
    with pytest.raises(ExplainInputError, match="n_steps"):
        integrated_gradients(model, ids, n_steps=0)
    with pytest.raises(ExplainInputError, match="score"):
        gradient_x_input(model, ids, target=1, score="prob")  # type: ignore[arg-type]
    with pytest.raises(ExplainInputError, match="empty"):
        gradient_x_input(model, [])
