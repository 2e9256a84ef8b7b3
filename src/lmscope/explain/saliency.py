"""Input attribution: gradient x input, integrated gradients and attention rollout.

The score explained is the logit (or log-probability) of a target token at a position, or a
contrast: score(target) - score(foil). The inputs are the token embeddings (positions, where
learned, are added inside the model and are not attributed). A token's attribution is the sum over
d_model of (gradient x input), so attributions are signed.

Integrated gradients uses the midpoint rule over n_steps points between a baseline (zeros by
default) and the input, batched `batch_size` points at a time; `delta` reports the completeness
gap sum(attributions) - (score(input) - score(baseline)), which shrinks as n_steps grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

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
) -> Attribution:
    """Gradient x input of the score at `position` w.r.t. each input token embedding."""
    t, position = _setup(model, tokens, position)
    _check_token(model, target, "target")
    _check_token(model, foil, "foil")
    with eval_mode(model):
        if target is None:
            target = _default_target(model, t)
        with torch.enable_grad():
            embeds = model.embed_tokens(t).detach().requires_grad_(True)
            value = _forward_scores(model, embeds, target, foil, score)
            (grad,) = torch.autograd.grad(value.sum(), embeds)
        attr = (grad * embeds.detach())[0].sum(-1)
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
    batch_size: int = 16,
    baseline: torch.Tensor | int | None = None,
) -> Attribution:
    """Integrated gradients (midpoint rule, `n_steps` points, batched) from a baseline.

    baseline: None for zero embeddings, a token id (its embedding at every position, e.g. a pad
    token), or a tensor of embeddings [T, D]. With RMSNorm and no learned positions, the zero
    baseline puts the steepest change of the path near zero and needs more steps: check `delta`.
    """
    if n_steps < 1 or batch_size < 1:
        raise ExplainInputError("n_steps and batch_size must be at least 1")
    t, position = _setup(model, tokens, position)
    _check_token(model, target, "target")
    _check_token(model, foil, "foil")
    with eval_mode(model):
        if target is None:
            target = _default_target(model, t)
        x = model.embed_tokens(t).detach()  # [1, T, D]
        if baseline is None:
            x0 = torch.zeros_like(x)
        elif isinstance(baseline, int):
            _check_token(model, baseline, "baseline")
            x0 = model.embed_tokens(torch.full_like(t, baseline)).detach()
        else:
            x0 = baseline.to(x)[..., : t.shape[1], :].reshape(x.shape)
        delta_x = x - x0
        alphas = (torch.arange(n_steps, dtype=x.dtype, device=x.device) + 0.5) / n_steps
        total_grad = torch.zeros_like(x[0])
        with torch.enable_grad():
            for a in alphas.split(batch_size):
                points = (x0 + a[:, None, None] * delta_x).requires_grad_(True)  # [b, T, D]
                value = _forward_scores(model, points, target, foil, score)
                (grad,) = torch.autograd.grad(value.sum(), points)
                total_grad += grad.sum(0)
        attr = (delta_x[0] * total_grad / n_steps).sum(-1)
        with torch.no_grad():
            ends = _forward_scores(model, torch.cat([x, x0]), target, foil, score)
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


def attention_rollout(view: TraceView, position: int = -1, residual: float = 0.5) -> Attribution:
    """Attention rollout (Abnar & Zuidema 2020): head-averaged patterns mixed with the identity
    (weight `residual`), multiplied through the layers; the row of `position`."""
    position = check_position(position, view.n_tokens, "position")
    if not 0.0 <= residual <= 1.0:
        raise ExplainInputError(f"residual must be in [0, 1], got {residual}")
    n = position + 1
    eye = torch.eye(n)
    rollout = eye
    for layer in range(view.n_layers):
        a = view.pattern(layer)[:, :n, :n].mean(0)
        a = residual * eye + (1.0 - residual) * a
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    return Attribution(
        "attention_rollout",
        position,
        None,
        None,
        rollout[position].tolist(),
        view.tokens[:n],
        "attention",
        {"residual": residual},
    )
