"""Causal checks of the routes: do the components a route graph names matter for the target?

- `route_faithfulness`: ablate the heads (and MLP blocks) on a route and, `n_random` times, as
  many components drawn at random off the route (as many heads and as many MLP blocks); report
  the drop of the target's log-probability for both (positive = the target lost probability).
  A faithful route hurts the target far more than random components:
  `score` = route_drop - mean(random_drops).
- `patching_head_importance`: for a clean/corrupted prompt pair of equal length, patch each
  head's output (all positions) from the clean run into the corrupted one and measure how much
  of the clean-minus-corrupted score it restores (1 = all of it); `head_agreement` compares it
  with the ALTI head importance of the route graph by rank correlation.

A head on the route is one whose per-head weight on some attention edge of the route exceeds
the graph's tau; an MLP block is on the route when its node is (at any position).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.explain.errors import ExplainInputError
from lmscope.explain.faithfulness import rank_correlation
from lmscope.explain.interventions import (
    Component,
    Edits,
    ablation_edits,
    intervening,
    record_inputs,
    site,
)
from lmscope.explain.perturb import check_count
from lmscope.explain.perturb_eval import check_token_id
from lmscope.explain.results import JsonResult, rounded
from lmscope.explain.routes import RouteGraph
from lmscope.explain.trace import to_tokens
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer


def route_components(routes: RouteGraph, mlps: bool = True) -> list[Component]:
    """Heads (and MLP blocks) on the route, in layer order."""
    heads: set[tuple[int, int]] = set()
    blocks: set[int] = set()
    for edge in routes.edges:
        if edge.heads is not None:
            heads.update((edge.layer, h) for h, w in enumerate(edge.heads) if w > routes.tau)
    if mlps:
        blocks = {n.layer for n in routes.nodes if n.kind == "mlp"}
    out = [Component("head", layer, h) for layer, h in sorted(heads)]
    return out + [Component("mlp", layer) for layer in sorted(blocks)]


def all_components(model: Transformer, mlps: bool = True) -> list[Component]:
    cfg = model.cfg
    out = [Component("head", layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    return out + ([Component("mlp", layer) for layer in range(cfg.n_layers)] if mlps else [])


def target_logprob(
    model: Transformer,
    tokens: torch.Tensor,
    target: int,
    edits: Edits | None = None,
) -> float:
    with eval_mode(model), torch.no_grad():
        if edits:
            with intervening(model, edits):
                logits = model(tokens, last_only=True)
        else:
            logits = model(tokens, last_only=True)
    return float(torch.log_softmax(logits[0, -1].double(), -1)[target])


@dataclass
class RouteFaithfulness(JsonResult):
    target: int  # the token whose log-probability is watched
    clean_logprob: float
    components: list[str]  # on the route
    route_drop: float  # clean - ablated log-prob (positive: the target lost probability)
    random_drops: list[float]  # the same for each random off-route set of as many components
    mode: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def random_drop(self) -> float:
        return sum(self.random_drops) / len(self.random_drops) if self.random_drops else 0.0

    @property
    def score(self) -> float:
        """Route drop minus the mean random drop: large and positive for a faithful route."""
        return self.route_drop - self.random_drop

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "clean_logprob": self.clean_logprob,
            "components": self.components,
            "route_drop": self.route_drop,
            "random_drops": rounded(self.random_drops),
            "random_drop": self.random_drop,
            "score": self.score,
            "mode": self.mode,
            "meta": self.meta,
        }


def route_faithfulness(
    model: Transformer,
    tokens: torch.Tensor | Sequence[int],
    routes: RouteGraph,
    target: int | None = None,
    *,
    n_random: int = 10,
    seed: int = 0,
    mode: str = "zero",
    mlps: bool = True,
) -> RouteFaithfulness:
    """Ablate the route's components vs random off-route sets of the same size (module doc).

    tokens: the prompt the route graph was built on; routes: a route graph of one target
    position (the prediction there is watched; later tokens are dropped, as they cannot matter).
    target: the token id watched (default: the model's top prediction at that position).
    """
    check_count(n_random, "n_random")
    t = to_tokens(tokens).to(model.device)
    if t.shape[1] != routes.n_tokens:
        raise ExplainInputError(
            f"the route graph was built on {routes.n_tokens} tokens, got {t.shape[1]}; pass the "
            "same prompt"
        )
    if len(routes.targets) != 1:
        raise ExplainInputError(
            f"route faithfulness needs a route graph of one target position, got "
            f"{len(routes.targets)}"
        )
    t = t[:, : routes.targets[0] + 1]
    check_token_id(model, target, "target")
    with eval_mode(model), torch.no_grad():
        if target is None:
            target = int(model(t, last_only=True)[0, -1].argmax())
    clean = record_inputs(model, t, list(range(model.cfg.n_layers))) if mode == "mean" else None
    base = target_logprob(model, t, target)
    on = route_components(routes, mlps)
    on_set = set(on)
    off = [c for c in all_components(model, mlps) if c not in on_set]
    route_value = target_logprob(model, t, target, ablation_edits(model, on, mode, clean))
    gen = torch.Generator().manual_seed(seed)
    drops = []
    # Random sets mirror the route's mix: as many heads and as many MLP blocks, each off-route.
    kinds = {k: [c for c in off if c.kind == k] for k in ("head", "mlp")}
    wanted = {k: sum(1 for c in on if c.kind == k) for k in kinds}
    short = [k for k in kinds if wanted[k] > len(kinds[k])]
    for _ in range(n_random if on else 0):
        pick: list[Component] = []
        for k, pool in kinds.items():
            n = min(wanted[k], len(pool))
            pick += [pool[int(i)] for i in torch.randperm(len(pool), generator=gen)[:n]]
        value = target_logprob(model, t, target, ablation_edits(model, pick, mode, clean))
        drops.append(base - value)
    meta: dict[str, Any] = {
        "n_random": n_random,
        "seed": seed,
        "tau": routes.tau,
        "position": routes.targets[0],
    }
    if short:
        meta["note"] = (
            f"fewer off-route {' and '.join(short)} components than on the route; random sets "
            "use all of them"
        )
    return RouteFaithfulness(
        target, base, [c.label for c in on], base - route_value, drops, mode, meta
    )


@dataclass
class HeadPatching(JsonResult):
    target: int
    foil: int | None
    clean_score: float
    corrupt_score: float
    restored: torch.Tensor  # [L, H] fraction of the clean - corrupt score gap each head restores
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "foil": self.foil,
            "clean_score": self.clean_score,
            "corrupt_score": self.corrupt_score,
            "restored": rounded(self.restored.tolist()),
            "meta": self.meta,
        }


def _score(logits: torch.Tensor, target: int, foil: int | None) -> torch.Tensor:
    logp = torch.log_softmax(logits.double(), -1)
    return logp[:, target] - (logp[:, foil] if foil is not None else 0.0)


def patching_head_importance(
    model: Transformer,
    clean: torch.Tensor | Sequence[int],
    corrupt: torch.Tensor | Sequence[int],
    target: int | None = None,
    foil: int | None = None,
    *,
    batch_size: int = 16,
) -> HeadPatching:
    """Activation patching of every head, clean -> corrupted (see module docstring).

    The score is the target's log-probability at the last position (minus the foil's, if
    given); target defaults to the clean prompt's top prediction. Heads are patched one per batch
    row, `batch_size` rows per forward.
    """
    check_count(batch_size, "batch_size")
    c, x = to_tokens(clean).to(model.device), to_tokens(corrupt).to(model.device)
    if c.shape != x.shape:
        raise ExplainInputError(
            f"clean and corrupted prompts must have the same number of tokens to patch "
            f"position by position; got {c.shape[1]} and {x.shape[1]}"
        )
    check_token_id(model, target, "target")
    check_token_id(model, foil, "foil")
    cfg = model.cfg
    layers = list(range(cfg.n_layers))
    with eval_mode(model), torch.no_grad():
        both = model(torch.cat([c, x]), last_only=True)[:, -1]
        if target is None:
            target = int(both[0].argmax())
        clean_score, corrupt_score = (float(v) for v in _score(both, target, foil))
        clean_acts = record_inputs(model, c, layers)
        heads = [Component("head", layer, h) for layer in layers for h in range(cfg.n_heads)]
        values = torch.empty(len(heads), dtype=torch.float64)
        for start in range(0, len(heads), batch_size):
            chunk = heads[start : start + batch_size]
            edits: Edits = {}
            for row, comp in enumerate(chunk):
                name, cols = site(model, comp)
                edits.setdefault(name, []).append((cols, clean_acts[name][0, :, cols], row))
            with intervening(model, edits):
                logits = model(x.expand(len(chunk), -1), last_only=True)[:, -1]
            values[start : start + len(chunk)] = _score(logits, target, foil).cpu()
    gap = clean_score - corrupt_score
    restored = (values - corrupt_score) / (gap if abs(gap) > 1e-12 else 1.0)
    return HeadPatching(
        target,
        foil,
        clean_score,
        corrupt_score,
        restored.view(cfg.n_layers, cfg.n_heads).float(),
        {"batch_size": batch_size},
    )


def head_agreement(patching: HeadPatching, alti: torch.Tensor) -> float:
    """Rank correlation of patching importance (absolute restored share) and ALTI importance
    ([L, H], e.g. `heads.head_importance(flow, -1)`) over all heads."""
    if alti.shape != patching.restored.shape:
        raise ExplainInputError(
            f"ALTI importance has shape {tuple(alti.shape)}, patching {tuple(patching.restored.shape)}"
        )
    return rank_correlation(patching.restored.abs().flatten(), alti.flatten())
