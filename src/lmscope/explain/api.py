"""One call that explains a prompt: the route graph, lens, heads, neurons and saliency together.

from lmscope.explain import explain
result = explain(model, "The capital of France is", tokenizer=tok, tau=0.04)
result.routes.to_json("graph.json"); result.save("report.html")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lmscope.explain.budget import ShouldStop, check_cancelled
from lmscope.explain.errors import (
    EmptyPromptError,
    ExplainInputError,
    check_model,
    check_position,
    check_tau,
    check_tokens,
)
from lmscope.explain.flow import FlowGraph, compute_flow
from lmscope.explain.heads import head_importance, top_heads
from lmscope.explain.lens import (
    LensResult,
    Promotion,
    TokenScore,
    Trajectory,
    lens_table,
    promotions_at,
    trajectory,
)
from lmscope.explain.neurons import NeuronContributions, top_neurons
from lmscope.explain.proximity import norm_order
from lmscope.explain.results import JsonResult, rounded
from lmscope.explain.routes import RouteGraph
from lmscope.explain.saliency import Attribution, RolloutRow, gradient_x_input
from lmscope.explain.trace import TraceView, record, to_tokens
from lmscope.model.transformer import Transformer

# Above this many tokens the report keeps only the target's lens rows and attention rows.
FULL_DETAIL_TOKENS = 128


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class Explanation(JsonResult):
    """Everything `explain` found about one prompt and one target position."""

    model: str
    tokens: list[int]
    token_strs: list[str]
    target: int
    tau: float
    renormalise: bool
    norm: str
    n_layers: int
    n_heads: int
    prediction: list[TokenScore]
    routes: RouteGraph
    lens: list[LensResult]  # every residual node at the target position
    trajectory: Trajectory
    top_heads: list[tuple[str, float]]
    head_importance: list[list[float]]  # [L][H] at the target position
    neurons: list[NeuronContributions]  # top neurons of every MLP at the target position
    promotions: list[Promotion]  # block updates and top heads at the target position
    saliency: list[Attribution]
    prompt: str | None = None
    flow: FlowGraph | None = None
    view: TraceView | None = None
    model_ref: Transformer | None = None
    decoder: Callable[[int], str] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    route_check: Any = None  # causal.RouteFaithfulness when asked for (explain(route_check=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "tokens": self.tokens,
            "token_strs": self.token_strs,
            "target": self.target,
            "tau": self.tau,
            "renormalise": self.renormalise,
            "norm": self.norm,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "prediction": [t.to_dict() for t in self.prediction],
            "routes": self.routes.to_dict(),
            "lens": [r.to_dict() for r in self.lens],
            "trajectory": self.trajectory.to_dict(),
            "top_heads": [[h, round(w, 7)] for h, w in self.top_heads],
            "head_importance": rounded(self.head_importance, 6),
            "neurons": [n.to_dict() for n in self.neurons],
            "promotions": [p.to_dict() for p in self.promotions],
            "saliency": [s.to_dict() for s in self.saliency],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            **({"route_check": self.route_check.to_dict()} if self.route_check else {}),
        }

    def decode(self, token: int) -> str:
        return self.decoder(token) if self.decoder is not None else f"<{token}>"

    def save(self, path: str | Path) -> Path:
        """Write by suffix: .json (route graph), .graphml (route graph) or .html (report)."""
        from lmscope.explain.export import save

        return save(self, path)


def encode(tokenizer: Tokenizer | None, prompt: str | Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ExplainInputError("a text prompt needs a tokenizer; pass tokenizer= or token ids")
        if not prompt:
            raise EmptyPromptError("the prompt is empty; give some text to explain")
        return list(tokenizer.encode(prompt))
    return to_tokens(prompt)[0].tolist()


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, key: str) -> None:
        now = time.perf_counter()
        self.timings[key] = now - self.last
        self.last = now


def explain(
    model: Transformer | Any,
    prompt: str | Sequence[int] | torch.Tensor,
    *,
    tokenizer: Tokenizer | None = None,
    target: int = -1,
    tau: float = 0.04,
    renormalise: bool = False,
    norm: str = "l1",
    k: int = 10,
    saliency: bool = True,
    route_check: bool = False,
    name: str | None = None,
    should_stop: ShouldStop | None = None,
) -> Explanation:
    """Trace the prompt once and explain the prediction at position `target`.

    model: a canonical Transformer, or a loaded model with `.model` and `.tokenizer` (a Hugging
        Face model must be converted first with `lmscope.zoo.hf.from_hf`).
    target: the token position whose final residual (and next-token prediction) is explained.
    tau: route threshold in [0, 1]; renormalise: see `lmscope.explain.routes`.
    route_check: also ablate the route's heads and MLPs against random ones
        (`causal.route_faithfulness`, 11 more forward passes) and report it as `route_check`.
    should_stop: checked between stages; True raises ExplanationCancelled.
    """
    if isinstance(getattr(model, "model", None), Transformer) and hasattr(model, "tokenizer"):
        loaded: Any = model
        tokenizer = tokenizer or loaded.tokenizer
        name = name or getattr(loaded, "name", None)
        model = loaded.model
    check_model(model, Transformer)
    tau = check_tau(tau)
    norm_order(norm)
    ids = encode(tokenizer, prompt)
    check_tokens(len(ids), model.cfg.n_ctx)
    target = check_position(target, len(ids))

    def decode(token: int) -> str:
        return tokenizer.decode([token]) if tokenizer is not None else f"<{token}>"

    timings: dict[str, float] = {}
    clock = _Clock(timings)
    view = TraceView(model, record(model, ids, should_stop=should_stop))
    clock.lap("trace")
    return explain_view(
        view,
        target=target,
        tau=tau,
        renormalise=renormalise,
        norm=norm,
        k=k,
        saliency=saliency,
        route_check=route_check,
        decode=decode,
        prompt=prompt if isinstance(prompt, str) else None,
        name=name,
        timings=timings,
        should_stop=should_stop,
    )


def explain_view(
    view: TraceView,
    flow: FlowGraph | None = None,
    *,
    target: int = -1,
    tau: float = 0.04,
    renormalise: bool = False,
    norm: str = "l1",
    k: int = 10,
    saliency: bool = True,
    saliency_token: int | None = None,
    route_check: bool = False,
    decode: Callable[[int], str] | None = None,
    prompt: str | None = None,
    name: str | None = None,
    timings: dict[str, float] | None = None,
    should_stop: ShouldStop | None = None,
) -> Explanation:
    """`explain` from an existing trace (a `record` run) and, optionally, its flow for `norm`:
    what a server that caches traces calls for every click.

    saliency_token: the token gradient x input explains (default: the top prediction).
    should_stop: checked between stages; True raises ExplanationCancelled.
    """
    tau = check_tau(tau)
    norm_order(norm)
    model = view.model
    ids = view.tokens
    target = check_position(target, len(ids))
    decoder: Callable[[int], str] = decode if decode is not None else (lambda t: f"<{t}>")
    timings = {} if timings is None else timings
    clock = _Clock(timings)
    strs = [decoder(t) for t in ids]
    rollout = RolloutRow(view, target)  # fed the patterns the flow computes anyway
    if flow is None:
        flow = compute_flow(
            model, view, norm=norm, token_strs=strs, should_stop=should_stop, on_pattern=rollout.add
        )
    elif flow.norm != norm:
        raise ExplainInputError(
            f"the flow given was computed with norm {flow.norm!r}, not {norm!r}"
        )
    elif flow.token_strs is None:
        flow.token_strs = strs  # label the route nodes
    clock.lap("flow")
    routes = flow.routes(target, tau, renormalise=renormalise)
    clock.lap("routes")
    check_cancelled(should_stop, "the explanation")

    logits = view.trace.logits[view.batch, target].float().cpu()
    probs = torch.softmax(logits.double(), -1).float()
    top_v, top_i = logits.topk(min(k, logits.numel()))
    prediction = [
        TokenScore(int(t), decoder(int(t)), float(v), float(probs[t]), r)
        for r, (v, t) in enumerate(zip(top_v, top_i, strict=True))
    ]
    lens = lens_table(model, view, target, k=k, decode=decoder)
    traj = trajectory(model, view, target, decode=decoder)
    heads = top_heads(flow, target, k)
    neurons = [top_neurons(view, layer, target, k=5, norm=norm) for layer in range(view.n_layers)]
    head_ids = [(int(a), int(b)) for a, b in (lab[1:].split("H") for lab, _ in heads[:5])]
    promotions = promotions_at(model, view, target, head_ids, 5, decoder)
    clock.lap("lens_heads_neurons")

    attributions = [rollout.attribution()]
    if saliency:
        token = prediction[0].token if saliency_token is None else saliency_token
        attributions.insert(0, gradient_x_input(model, ids, target, token, should_stop=should_stop))
    clock.lap("saliency")
    check = None
    if route_check:
        from lmscope.explain.causal import route_faithfulness

        check = route_faithfulness(model, ids, routes, prediction[0].token)
        clock.lap("route_check")
    return Explanation(
        model=name or "model",
        tokens=list(ids),
        token_strs=strs,
        target=target,
        tau=tau,
        renormalise=renormalise,
        norm=norm,
        n_layers=view.n_layers,
        n_heads=view.n_heads,
        prediction=prediction,
        routes=routes,
        lens=lens,
        trajectory=traj,
        top_heads=heads,
        head_importance=head_importance(flow, target).tolist(),
        neurons=neurons,
        promotions=promotions,
        saliency=attributions,
        route_check=check,
        prompt=prompt,
        flow=flow,
        view=view,
        model_ref=model,
        decoder=decoder,
        timings=timings,
    )
