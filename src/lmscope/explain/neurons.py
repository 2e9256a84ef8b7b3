"""MLP neurons: which neurons of a block contribute most to the residual at a position."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.explain.errors import check_position
from lmscope.explain.heads import check_layer
from lmscope.explain.proximity import norm_order, normalise, proximity
from lmscope.explain.results import JsonResult
from lmscope.explain.trace import TraceView


@dataclass(slots=True)
class NeuronScore:
    neuron: int
    activation: float  # a_k, the hidden activation (input of W_out)
    importance: float  # share of a_k * W_out[k] in resid_post (see decompose.neuron_decomposition)
    proximity: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "neuron": self.neuron,
            "activation": round(self.activation, 6),
            "importance": round(self.importance, 7),
            "proximity": round(self.proximity, 7),
        }


@dataclass
class NeuronContributions(JsonResult):
    layer: int
    position: int
    norm: str
    neurons: list[NeuronScore] = field(default_factory=list)
    residual: float = 0.0  # share of the incoming residual (resid_mid)
    bias: float = 0.0  # share of the output bias

    def to_dict(self) -> dict[str, Any]:
        rows = [{"label": f"L{self.layer}N{n.neuron}", **n.to_dict()} for n in self.neurons]
        return {
            "layer": self.layer,
            "position": self.position,
            "norm": self.norm,
            "residual": round(self.residual, 7),
            "bias": round(self.bias, 7),
            "neurons": rows,
        }


def neuron_importances(
    view: TraceView, layer: int, position: int, norm: str = "l1"
) -> dict[str, torch.Tensor]:
    """Shares of every neuron part, the residual and the bias in resid_post[layer, position]."""
    norm_order(norm)
    hidden = view.mlp_hidden(layer, position)  # [M]
    w_out = view.mlp_weight(layer)  # [M, D]
    whole = view.resid_post(layer)[position]
    prox = proximity(whole[None], hidden[:, None] * w_out, norm)
    prox = prox.masked_fill(hidden == 0, 0.0)
    resid = proximity(whole, view.resid_mid(layer)[position], norm)
    b_out = view.mlp_bias(layer)
    bias = proximity(whole, b_out, norm) if b_out is not None else torch.zeros(())
    total = prox.sum() + resid + bias
    return {
        "neurons": normalise(prox, total),
        "proximity": prox,
        "residual": normalise(resid, total),
        "bias": normalise(bias, total),
        "activation": hidden,
    }


def top_neurons(
    view: TraceView, layer: int, position: int = -1, k: int = 10, norm: str = "l1"
) -> NeuronContributions:
    """The k neurons of the MLP at `layer` with the largest contribution at `position`."""
    layer = check_layer(layer, view.n_layers)
    position = check_position(position, view.n_tokens, "position")
    parts = neuron_importances(view, layer, position, norm)
    imp = parts["neurons"]
    values, idx = imp.topk(min(k, imp.numel()))
    rows = [
        NeuronScore(int(i), float(parts["activation"][i]), float(v), float(parts["proximity"][i]))
        for v, i in zip(values, idx, strict=True)
    ]
    return NeuronContributions(
        layer, position, norm, rows, float(parts["residual"]), float(parts["bias"])
    )
