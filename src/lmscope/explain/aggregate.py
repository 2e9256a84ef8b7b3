"""Data-set level importances: which heads and neurons matter for a task, over a prompt set.

For every prompt, at its last token (the next-token prediction): each head's ALTI importance
(its share in the attention block outputs, `heads.head_importance`), each neuron's share in its
block's output (`neurons.neuron_importances`), and which heads are on the route graph at tau.
`aggregate` keeps running sums, so its result is the mean, the spread (standard deviation over
prompts) and the on-route frequency; prompts of equal length are traced together in one batch.

Sharding: `shard=(rank, world)` takes prompts rank, rank + world, ...; `merge` combines the
shards' results exactly. Under `torchrun` (torch.distributed initialised) `aggregate` shards by
the process group and all-reduces the sums, so every rank returns the whole result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.explain.budget import ShouldStop, check_cancelled
from lmscope.explain.causal import route_components
from lmscope.explain.errors import ExplainInputError, check_tau, check_tokens
from lmscope.explain.flow import compute_flow
from lmscope.explain.heads import head_importance
from lmscope.explain.neurons import neuron_importances
from lmscope.explain.results import JsonResult, rounded
from lmscope.explain.trace import TraceView, keeps
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer


def prompts_digest(texts: Sequence[str]) -> str:
    """sha256 of a prompt set (one prompt a line): what a stored result names its prompts by."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


@dataclass
class PromptImportance:
    heads: torch.Tensor  # [L, H]
    neurons: torch.Tensor  # [L, M]
    on_route: torch.Tensor  # [L, H] bool


@dataclass
class ComponentStats(JsonResult):
    """Sums over prompts (float64), from which the means and spreads are read."""

    model: str
    n_prompts: int
    tau: float
    head_sum: torch.Tensor  # [L, H]
    head_sq: torch.Tensor  # [L, H] sum of squares
    on_route: torch.Tensor  # [L, H] how many prompts had the head on their route
    neuron_sum: torch.Tensor  # [L, M]
    neuron_sq: torch.Tensor  # [L, M]
    meta: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        if self.n_prompts == 0:
            raise ExplainInputError("no prompts were aggregated; give at least one prompt")

    @property
    def head_mean(self) -> torch.Tensor:
        self._check()
        return self.head_sum / self.n_prompts

    @property
    def head_std(self) -> torch.Tensor:
        return _std(self.head_sum, self.head_sq, self.n_prompts)

    @property
    def route_frequency(self) -> torch.Tensor:
        self._check()
        return self.on_route / self.n_prompts

    @property
    def neuron_mean(self) -> torch.Tensor:
        self._check()
        return self.neuron_sum / self.n_prompts

    @property
    def neuron_std(self) -> torch.Tensor:
        return _std(self.neuron_sum, self.neuron_sq, self.n_prompts)

    def top_heads(self, k: int = 10) -> list[dict[str, Any]]:
        mean, n_heads = self.head_mean, self.head_sum.shape[1]
        values, idx = mean.flatten().topk(min(k, mean.numel()))
        out = []
        for v, i in zip(values.tolist(), idx.tolist(), strict=True):
            layer, head = divmod(i, n_heads)
            out.append(
                {
                    "head": f"L{layer}H{head}",
                    "mean": v,
                    "std": float(self.head_std[layer, head]),
                    "on_route": float(self.route_frequency[layer, head]),
                }
            )
        return out

    def top_neurons(self, k: int = 10) -> list[dict[str, Any]]:
        mean, width = self.neuron_mean, self.neuron_sum.shape[1]
        values, idx = mean.flatten().topk(min(k, mean.numel()))
        return [
            {
                "neuron": f"L{i // width}N{i % width}",
                "mean": v,
                "std": float(self.neuron_std.flatten()[i]),
            }
            for v, i in zip(values.tolist(), idx.tolist(), strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_prompts": self.n_prompts,
            "tau": self.tau,
            "head_mean": rounded(self.head_mean.tolist()),
            "head_std": rounded(self.head_std.tolist()),
            "route_frequency": rounded(self.route_frequency.tolist()),
            "top_heads": self.top_heads(),
            "top_neurons": self.top_neurons(),
            "meta": self.meta,
        }


def _std(total: torch.Tensor, sq: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        raise ExplainInputError("no prompts were aggregated; give at least one prompt")
    mean = total / n
    return (sq / n - mean * mean).clamp(min=0.0).sqrt()


def prompt_importances(view: TraceView, tau: float, neurons: bool = True) -> PromptImportance:
    """Head and neuron importances and on-route heads at the last token of one traced prompt."""
    flow = compute_flow(view.model, view)
    heads = head_importance(flow, -1).double()
    on = torch.zeros_like(heads, dtype=torch.bool)
    for c in route_components(flow.routes(-1, tau), mlps=False):
        on[c.layer, c.index] = True
    cfg = view.cfg
    neuron = torch.zeros(cfg.n_layers, cfg.mlp_dim if neurons else 0, dtype=torch.float64)
    if neurons:
        for layer in range(cfg.n_layers):
            neuron[layer] = neuron_importances(view, layer, view.n_tokens - 1)["neurons"].double()
    return PromptImportance(heads, neuron, on)


def _groups(prompts: Sequence[Sequence[int]], batch: int) -> list[list[int]]:
    """Prompt indices batched by equal length, at most `batch` per group."""
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    return [idx[s : s + batch] for idx in by_len.values() for s in range(0, len(idx), batch)]


def aggregate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    tau: float = 0.04,
    neurons: bool = True,
    batch_size: int = 8,
    shard: tuple[int, int] | None = None,
    name: str = "model",
    should_stop: ShouldStop | None = None,
) -> ComponentStats:
    """Head/neuron importance over `prompts` (token id lists); see the module docstring."""
    tau = check_tau(tau)
    if not prompts:
        raise ExplainInputError("the prompt set is empty; give at least one prompt")
    for p in prompts:
        check_tokens(len(p), model.cfg.n_ctx)
    distributed = shard is None and _distributed()
    if distributed:
        import torch.distributed as dist

        shard = (dist.get_rank(), dist.get_world_size())
    rank, world = shard or (0, 1)
    if not 0 <= rank < world:
        raise ExplainInputError(f"shard rank {rank} is outside 0..{world - 1}")
    mine = [list(p) for p in prompts][rank::world]
    cfg = model.cfg
    width = cfg.mlp_dim if neurons else 0
    stats = ComponentStats(
        name,
        0,
        tau,
        torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64),
        torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64),
        torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64),
        torch.zeros(cfg.n_layers, width, dtype=torch.float64),
        torch.zeros(cfg.n_layers, width, dtype=torch.float64),
        {"shard": [rank, world]},
    )
    names = keeps(neurons)
    for group in _groups(mine, batch_size):
        check_cancelled(should_stop, "the aggregation")
        ids = torch.tensor([mine[i] for i in group], device=model.device)
        with eval_mode(model):
            trace = model.run_with_trace(ids, names=names)
        for row in range(len(group)):
            add(stats, prompt_importances(TraceView(model, trace, row), tau, neurons))
    if distributed:
        _all_reduce(stats)
    return stats


def add(stats: ComponentStats, imp: PromptImportance) -> None:
    stats.n_prompts += 1
    stats.head_sum += imp.heads
    stats.head_sq += imp.heads**2
    stats.on_route += imp.on_route
    stats.neuron_sum += imp.neurons
    stats.neuron_sq += imp.neurons**2


def merge(parts: Sequence[ComponentStats]) -> ComponentStats:
    """One result from the shards' results (same model and tau)."""
    if not parts:
        raise ExplainInputError("nothing to merge")
    first = parts[0]
    z = [torch.zeros_like(t) for t in _sums(first)]
    out = ComponentStats(
        first.model, 0, first.tau, z[0], z[1], z[2], z[3], z[4], {"shards": len(parts)}
    )
    for p in parts:
        if p.head_sum.shape != first.head_sum.shape or p.tau != first.tau:
            raise ExplainInputError("merge needs results of one model at one tau")
        out.n_prompts += p.n_prompts
        for acc, t in zip(_sums(out), _sums(p), strict=True):
            acc += t
    return out


def _sums(s: ComponentStats) -> tuple[torch.Tensor, ...]:
    return (s.head_sum, s.head_sq, s.on_route, s.neuron_sum, s.neuron_sq)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(stats: ComponentStats) -> None:
    import torch.distributed as dist

    count = torch.tensor([float(stats.n_prompts)], dtype=torch.float64)
    for t in (*_sums(stats), count):
        dist.all_reduce(t)
    stats.n_prompts = int(count.item())
    stats.meta["shard"] = "all"
