"""Input attribution: gradient x input, integrated gradients and attention rollout.

The score explained is the logit (or log-probability) of a target token at a position, or a
contrast: score(target) - score(foil). The inputs are the token embeddings (positions, where
learned, are added inside the model and are not attributed). A token's attribution is the sum over
d_model of (gradient x input), so attributions are signed.

Integrated gradients uses the midpoint rule over n_steps points between a baseline (zeros by
default) and the input, a few points per forward/backward pass: as many as fit `memory_budget`
bytes of activations (see `lmscope.explain.budget`), at most `batch_size`. `delta` reports the
completeness gap sum(attributions) - (score(input) - score(baseline)), which shrinks as n_steps
grows. `should_stop` is checked before every pass; returning True raises ExplanationCancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lmscope.explain.budget import (
    DEFAULT_MEMORY_BUDGET,
    RELEASE_ABOVE,
    ShouldStop,
    bytes_per_point,
    check_cancelled,
    points_per_batch,
    release_memory,
)
from lmscope.explain.errors import ExplainInputError, check_position, check_tokens
from lmscope.explain.results import JsonResult
from lmscope.explain.trace import TraceView, to_tokens
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer

Score = Literal["logit", "logprob"]


@dataclass
class Attribution(JsonResult):
    method: str
    position: int
    target: int | None  # token id explained (None for attention rollout)
    foil: int | None
    scores: list[float]  # one per input token 0..position
    tokens: list[int]
    score: str = "logit"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "position": self.position,
            "target": self.target,
            "foil": self.foil,
            "score": self.score,
            "tokens": self.tokens,
            "scores": [round(s, 7) for s in self.scores],
            "meta": self.meta,
        }


def _setup(
    model: Transformer, tokens: torch.Tensor | Sequence[int], position: int
) -> tuple[torch.Tensor, int]:
    t = to_tokens(tokens)
    check_tokens(t.shape[1], model.cfg.n_ctx)
    position = check_position(position, t.shape[1], "position")
    # Causality: the prediction at `position` only depends on tokens 0..position.
    return t[:, : position + 1].to(model.device), position


def _check_token(model: Transformer, token: int | None, what: str) -> None:
    if token is not None and not 0 <= token < model.cfg.vocab_size:
        raise ExplainInputError(
            f"{what} token id {token} is outside the vocabulary (0..{model.cfg.vocab_size - 1})"
        )


def _score(logits: torch.Tensor, target: int, foil: int | None, score: str) -> torch.Tensor:
    """logits [B, V] -> [B]."""
    if score == "logprob":
        logits = torch.log_softmax(logits.float(), dim=-1)
    elif score != "logit":
        raise ExplainInputError(f"score must be 'logit' or 'logprob', got {score!r}")
    out = logits[:, target]
    if foil is not None:
        out = out - logits[:, foil]
    return out


def _default_target(model: Transformer, tokens: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(tokens, last_only=True)[0, -1].argmax())


def _forward_scores(
    model: Transformer, embeds: torch.Tensor, target: int, foil: int | None, score: str
) -> torch.Tensor:
    logits = model(input_embeds=embeds, last_only=True)[:, -1]
    return _score(logits, target, foil, score)


def gradient_x_input(
    model: Transformer,
    tokens: torch.Tensor | Sequence[int],
    position: int = -1,
    target: int | None = None,
    foil: int | None = None,
    score: Score = "logit",
    *,
    should_stop: ShouldStop | None = None,
) -> Attribution:
    """Gradient x input of the score at `position` w.r.t. each input token embedding."""
    t, position = _setup(model, tokens, position)
    _check_token(model, target, "target")
    _check_token(model, foil, "foil")
    check_cancelled(should_stop, "gradient x input")
    with eval_mode(model):
        if target is None:
            target = _default_target(model, t)
        with torch.enable_grad():
            embeds = model.embed_tokens(t).detach().requires_grad_(True)
            value = _forward_scores(model, embeds, target, foil, score)
            (grad,) = torch.autograd.grad(value.sum(), embeds)
        attr = (grad * embeds.detach())[0].sum(-1)
    del embeds, grad
    if bytes_per_point(model.cfg, t.shape[1], model.dtype) > RELEASE_ABOVE:
        release_memory()  # a long prompt's activations; a short one is not worth a collection
    return Attribution(
        "gradient_x_input",
        position,
        target,
        foil,
        attr.float().tolist(),
        t[0].tolist(),
        score,
        {"value": float(value.detach()[0])},
    )


def integrated_gradients(
    model: Transformer,
    tokens: torch.Tensor | Sequence[int],
    position: int = -1,
    target: int | None = None,
    foil: int | None = None,
    score: Score = "logit",
    n_steps: int = 32,
    batch_size: int | None = None,
    baseline: torch.Tensor | int | None = None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    should_stop: ShouldStop | None = None,
) -> Attribution:
    """Integrated gradients (midpoint rule, `n_steps` points) from a baseline.

    baseline: None for zero embeddings, a token id (its embedding at every position, e.g. a pad
    token), or a tensor of embeddings [T, D]. With RMSNorm and no learned positions, the zero
    baseline puts the steepest change of the path near zero and needs more steps: check `delta`.
    batch_size: the most points per pass (default: as many as `memory_budget` bytes allow; one
    point is always allowed). should_stop: checked before every pass (see module docstring).
    """
    if n_steps < 1 or (batch_size is not None and batch_size < 1):
        raise ExplainInputError("n_steps and batch_size must be at least 1")
    if memory_budget < 1:
        raise ExplainInputError(
            f"memory_budget must be a positive number of bytes, got {memory_budget}"
        )
    t, position = _setup(model, tokens, position)
    _check_token(model, target, "target")
    _check_token(model, foil, "foil")
    if isinstance(baseline, int):
        _check_token(model, baseline, "baseline")
    check_cancelled(should_stop, "integrated gradients")
    batch = points_per_batch(model.cfg, t.shape[1], model.dtype, memory_budget, batch_size)
    try:
        with eval_mode(model):
            if target is None:
                target = _default_target(model, t)
            x = model.embed_tokens(t).detach()  # [1, T, D]
            if baseline is None:
                x0 = torch.zeros_like(x)
            elif isinstance(baseline, int):
                x0 = model.embed_tokens(torch.full_like(t, baseline)).detach()
            else:
                x0 = baseline.to(x)[..., : t.shape[1], :].reshape(x.shape)
            score_of = _scorer(model, target, foil, score)
            total_grad = _path_gradient(score_of, x0, x - x0, n_steps, batch, should_stop)
            attr = ((x - x0)[0] * total_grad / n_steps).sum(-1)
            with torch.no_grad():
                ends = score_of(torch.cat([x, x0]))
    finally:
        release_memory()
    gap = float(ends[0] - ends[1])
    return Attribution(
        "integrated_gradients",
        position,
        target,
        foil,
        attr.float().tolist(),
        t[0].tolist(),
        score,
        {
            "n_steps": n_steps,
            "batch_size": batch,
            "baseline": "zeros"
            if baseline is None
            else f"token {baseline}"
            if isinstance(baseline, int)
            else "custom",
            "value": float(ends[0]),
            "baseline_value": float(ends[1]),
            "delta": float(attr.sum()) - gap,
        },
    )


def _scorer(
    model: Transformer, target: int, foil: int | None, score: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda embeds: _forward_scores(model, embeds, target, foil, score)


def _path_gradient(
    score_of: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    delta_x: torch.Tensor,
    n_steps: int,
    batch: int,
    should_stop: ShouldStop | None,
) -> torch.Tensor:
    """Sum over the midpoints x0 + a * delta_x of the score's gradient, `batch` points per pass;
    nothing but the running sum outlives a pass, so a cancellation frees everything."""
    alphas = (torch.arange(n_steps, dtype=x0.dtype, device=x0.device) + 0.5) / n_steps
    total = torch.zeros_like(x0[0])
    with torch.enable_grad():
        for a in alphas.split(batch):
            check_cancelled(should_stop, "integrated gradients")
            points = (x0 + a[:, None, None] * delta_x).requires_grad_(True)  # [b, T, D]
            (grad,) = torch.autograd.grad(score_of(points).sum(), points)
            total += grad.sum(0)
            del points, grad
    return total


class RolloutRow:
    """Attention rollout (Abnar & Zuidema 2020) of one position: row `position` of
    M_{L-1} ... M_1 M_0, with M_l = residual I + (1 - residual) mean_h A_l (rows renormalised).

    Built as a row vector from the last layer to the first (r <- r M_l), so it needs one
    pattern at a time and no n x n product: `add` takes the layers in that order (as
    `compute_flow(on_pattern=...)` hands them out), `attribution` computes any not yet given.
    """

    def __init__(self, view: TraceView, position: int = -1, residual: float = 0.5) -> None:
        self.position = check_position(position, view.n_tokens, "position")
        if not 0.0 <= residual <= 1.0:
            raise ExplainInputError(f"residual must be in [0, 1], got {residual}")
        self.view, self.residual = view, residual
        self.next_layer = view.n_layers - 1
        self.row = torch.zeros(self.position + 1, dtype=torch.float64)
        self.row[self.position] = 1.0

    def add(self, layer: int, pattern: torch.Tensor) -> None:
        """r <- r M_layer, from the [H, T, S] pattern; layers must come last to first."""
        if layer != self.next_layer:
            raise ValueError(f"rollout expects layer {self.next_layer} next, got {layer}")
        n, mix = self.position + 1, self.residual
        a = pattern[:, :n, :n]  # [H, n, n], in its own dtype: a float64 copy would be 8 H n^2 B
        row_sums = mix + (1.0 - mix) * a.sum(-1).double().mean(0)  # [n]
        w = self.row / row_sums
        spread = torch.matmul(w.to(a.dtype), a).sum(0).double() / a.shape[0]  # w M_heads-mean
        self.row = mix * w + (1.0 - mix) * spread
        self.next_layer -= 1

    def attribution(self) -> Attribution:
        for layer in range(self.next_layer, -1, -1):
            self.add(layer, self.view.pattern(layer))
        return Attribution(
            "attention_rollout",
            self.position,
            None,
            None,
            self.row.float().tolist(),
            self.view.tokens[: self.position + 1],
            "attention",
            {"residual": self.residual},
        )


def attention_rollout(view: TraceView, position: int = -1, residual: float = 0.5) -> Attribution:
    """Attention rollout (Abnar & Zuidema 2020) of `position`; see `RolloutRow`."""
    return RolloutRow(view, position, residual).attribution()
