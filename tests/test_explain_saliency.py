"""Input attribution: gradient x input, integrated gradients, attention rollout."""

from __future__ import annotations

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
from test_explain_support import tiny_model, tokens

T = 8


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa", "neox_parallel"])
def model(request):  # type: ignore[no-untyped-def]
    return tiny_model(request.param, n_layers=2)


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
    assert abs(logprob.meta["delta"]) >= 0  # reported for the zero baseline too


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
