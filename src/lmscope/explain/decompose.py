"""Explicit decompositions of one residual node into the parts that sum to it.

These are the definitions the route graph is built on; `flow` computes the same proximities
without materialising every part. Each decomposition is exact: sum(parts) == whole up to float
rounding (tested to 1e-5 for every model family).

Attention block, layer l, target token i (whole = resid_mid[i]):
    resid_mid[i] = resid_pre[i] + sum_{j<=i} sum_h A^h_ij (v^h_j W_O^h) + b_O
    parts: one per (source j, head h), the incoming residual, and b_O as its own part.
    GQA/MQA: query head h uses key/value head h // (H/K), so v^h_j is that kv head's value.

MLP block, layer l, token i (whole = resid_post[i]):
    resid_post[i] = resid_mid[i] + (a_i @ W_out) + b_out
    parts (default convention "in_mlp", the paper's): the MLP output with its bias and the
    incoming residual resid_mid[i]; with convention "separate", the MLP output without bias,
    resid_mid[i] and b_out (see `lmscope.explain.flow`);
    neuron attribution splits the MLP output into a_ik * W_out[k], one part per neuron.

Parallel attention+MLP blocks (GPT-NeoX: resid_post = x + attn(ln1(x)) + mlp(ln2(x))) use the
same two exact decompositions: resid_mid = x + attn_out is the stream with the attention update
only, and resid_post = resid_mid + mlp_out. The MLP reads x (resid_pre), not resid_mid, so in the
route graph its input edge starts at resid_pre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmscope.explain.flow import check_mlp_bias
from lmscope.explain.proximity import importances, proximities
from lmscope.explain.trace import TraceView


@dataclass
class Decomposition:
    """A whole [D] and the parts [P, D] that sum to it, with a label per part."""

    whole: torch.Tensor
    parts: torch.Tensor
    labels: list[
        tuple[object, ...]
    ]  # ("head", j, h), ("residual",), ("bias",), ("mlp",), ("neuron", k)

    def sum_error(self) -> float:
        """max |sum(parts) - whole|: zero up to float rounding for an exact decomposition."""
        return float((self.parts.sum(0) - self.whole).abs().max())

    def proximities(self, norm: str = "l1") -> torch.Tensor:
        return proximities(self.whole, self.parts, norm)

    def importances(self, norm: str = "l1") -> torch.Tensor:
        return importances(self.whole, self.parts, norm)


def attention_decomposition(view: TraceView, layer: int, target: int) -> Decomposition:
    """resid_mid[target] as (source, head) parts + incoming residual (+ output bias)."""
    pattern = view.pattern(layer)[:, target, : target + 1]  # [H, S]
    u = view.head_vectors(layer)[: target + 1]  # [S, H, D]
    heads = pattern.t()[..., None] * u  # [S, H, D]
    n_src, n_heads = heads.shape[:2]
    parts = [heads.reshape(n_src * n_heads, -1), view.resid_pre(layer)[target][None]]
    labels: list[tuple[object, ...]] = [
        ("head", j, h) for j in range(n_src) for h in range(n_heads)
    ]
    labels.append(("residual",))
    bias = view.attn_bias(layer)
    if bias is not None:
        parts.append(bias[None])
        labels.append(("bias",))
    return Decomposition(view.resid_mid(layer)[target], torch.cat(parts), labels)


def mlp_decomposition(
    view: TraceView, layer: int, target: int, mlp_bias: str = "in_mlp"
) -> Decomposition:
    """resid_post[target] as MLP output + incoming residual resid_mid; with
    mlp_bias="separate", the output without its bias and the bias as a third part."""
    out = view.mlp_out(layer)[target]
    bias = view.mlp_bias(layer) if check_mlp_bias(mlp_bias) == "separate" else None
    parts = [out - bias if bias is not None else out, view.resid_mid(layer)[target]]
    labels: list[tuple[object, ...]] = [("mlp",), ("residual",)]
    if bias is not None:
        parts.append(bias)
        labels.append(("bias",))
    return Decomposition(view.resid_post(layer)[target], torch.stack(parts), labels)


def neuron_decomposition(view: TraceView, layer: int, target: int) -> Decomposition:
    """resid_post[target] as one part per neuron a_k W_out[k] + resid_mid (+ output bias)."""
    hidden = view.mlp_hidden(layer, target)  # [M]
    neurons = hidden[:, None] * view.mlp_weight(layer)  # [M, D]
    parts = [neurons, view.resid_mid(layer)[target][None]]
    labels: list[tuple[object, ...]] = [("neuron", k) for k in range(neurons.shape[0])]
    labels.append(("residual",))
    bias = view.mlp_bias(layer)
    if bias is not None:
        parts.append(bias[None])
        labels.append(("bias",))
    return Decomposition(view.resid_post(layer)[target], torch.cat(parts), labels)
