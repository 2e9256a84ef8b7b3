"""Attention heads: per-head shares of an edge, a head's T x T contribution map, patterns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmscope.explain.errors import ExplainInputError, check_position
from lmscope.explain.flow import FlowGraph
from lmscope.explain.results import JsonResult, rounded
from lmscope.explain.trace import TraceView


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def check_layer(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise ExplainInputError(
            f"layer {layer} is out of range for a model with {n_layers} layers; use 0..{n_layers - 1}"
        )
    return layer % n_layers


def check_head(head: int, n_heads: int) -> int:
    if not 0 <= head < n_heads:
        raise ExplainInputError(
            f"head {head} is out of range; this model has heads 0..{n_heads - 1}"
        )
    return head


@dataclass
class HeadContributions(JsonResult):
    """The share of each head in the attention edge source -> target at one layer."""

    layer: int
    target: int
    source: int
    weights: list[float]  # one per head; they sum to the edge weight

    @property
    def edge_weight(self) -> float:
        return float(sum(self.weights))

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = sorted(range(len(self.weights)), key=lambda h: -self.weights[h])[:k]
        return [(head_label(self.layer, h), self.weights[h]) for h in order]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "target": self.target,
            "source": self.source,
            "edge_weight": round(self.edge_weight, 7),
            "heads": {head_label(self.layer, h): round(w, 7) for h, w in enumerate(self.weights)},
        }


@dataclass
class HeadMap(JsonResult):
    """A T x T map for one head: `values[i][j]` for target (query) i and source (key) j."""

    layer: int
    head: int
    kind: str  # "contribution" (share of head h's part j in resid_mid[i]) or "attention"
    values: list[list[float]]

    @property
    def label(self) -> str:
        return head_label(self.layer, self.head)

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "head": self.head,
            "label": self.label,
            "kind": self.kind,
            "values": rounded(self.values, 6),
        }


def head_contributions(flow: FlowGraph, layer: int, target: int, source: int) -> HeadContributions:
    """Per-head contribution to the attention edge source -> target (resid_mid) at `layer`."""
    layer = check_layer(layer, flow.n_layers)
    target = check_position(target, flow.n_tokens)
    source = check_position(source, flow.n_tokens, "source")
    weights = flow.head_weights(layer, target, source).tolist()
    return HeadContributions(layer, target, source, weights)


def head_contribution_map(flow: FlowGraph, layer: int, head: int) -> HeadMap:
    """The T x T contribution map of one head: share of its (source j) part in resid_mid[i]."""
    layer = check_layer(layer, flow.n_layers)
    head = check_head(head, flow.n_heads)
    return HeadMap(layer, head, "contribution", flow.attn_heads[layer, :, :, head].float().tolist())


def attention_pattern(view: TraceView, layer: int, head: int) -> HeadMap:
    """The attention probabilities of one head, [query, key]."""
    layer = check_layer(layer, view.n_layers)
    head = check_head(head, view.n_heads)
    return HeadMap(layer, head, "attention", view.pattern(layer)[head].tolist())


def head_importance(flow: FlowGraph, target: int) -> torch.Tensor:
    """[L, H]: each head's total share (over all sources) in resid_mid at `target`."""
    target = check_position(target, flow.n_tokens)
    return flow.attn_heads[:, target].float().sum(1)


def top_heads(flow: FlowGraph, target: int, k: int = 10) -> list[tuple[str, float]]:
    """The k heads with the largest share in the attention block outputs at `target`."""
    imp = head_importance(flow, target)
    values, idx = imp.flatten().topk(min(k, imp.numel()))
    n_heads = imp.shape[1]
    return [
        (head_label(int(i) // n_heads, int(i) % n_heads), float(v))
        for v, i in zip(values, idx, strict=True)
    ]
