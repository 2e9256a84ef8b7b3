"""Vocabulary projection: the logit lens of residual nodes and the tokens an update promotes.

Residual nodes, in the order information passes them: `embed`, then per layer `resid_mid`
(after attention) and `resid_post` (after the layer). The lens of a node projects it through
the final norm (or not) and the unembedding; for the last `resid_post` through the final norm
this is exactly the model's logits.

Updates (a block's output, a head's output, a neuron's output row) are not residuals, so they are
projected through the final norm *linearised*: centring (LayerNorm) and the norm's weight, divided
by the scale (std or RMS) of the final residual at that position when a position is known. That is
the direct effect of the update on the logits with the norm's scale frozen; without a position the
scale is 1 (the ranking of tokens does not depend on it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmscope.explain.errors import ExplainInputError, check_position
from lmscope.explain.heads import check_head, check_layer, head_label
from lmscope.explain.results import JsonResult
from lmscope.explain.trace import ResidKind, TraceView
from lmscope.model.layers import RMSNorm
from lmscope.model.transformer import Transformer

Decode = Callable[[int], str]


def lens_nodes(n_layers: int) -> list[tuple[ResidKind, int]]:
    """Residual nodes in flow order: embed, then (resid_mid, resid_post) per layer."""
    nodes: list[tuple[ResidKind, int]] = [("embed", -1)]
    for layer in range(n_layers):
        nodes += [("resid_mid", layer), ("resid_post", layer)]
    return nodes


def node_name(kind: str, layer: int) -> str:
    return "embed" if kind == "embed" else f"L{layer}/{kind}"


def parse_node(node: str | tuple[str, int], n_layers: int) -> tuple[ResidKind, int]:
    """`"embed"`, `"L3/resid_mid"`, a route-graph node id, or a (kind, layer) pair."""
    if isinstance(node, tuple):
        kind, layer = node
    else:
        parts = node.split("/")
        if parts[0] == "embed":
            kind, layer = "embed", -1
        elif len(parts) >= 2 and parts[0].startswith("L") and parts[0][1:].isdigit():
            kind, layer = parts[1], int(parts[0][1:])
        else:
            raise ExplainInputError(
                f"unknown residual node {node!r}; use 'embed', 'L<layer>/resid_mid' or "
                "'L<layer>/resid_post'"
            )
    if kind == "embed":
        return "embed", -1
    if kind not in ("resid_mid", "resid_post"):
        raise ExplainInputError(
            f"the lens reads residual nodes (embed, resid_mid, resid_post), not {kind!r}"
        )
    return kind, check_layer(layer, n_layers)  # type: ignore[return-value]


# ---- results -------------------------------------------------------------------------------
@dataclass(slots=True)
class TokenScore:
    token: int
    text: str | None
    logit: float
    prob: float | None = None
    rank: int | None = None  # 0 = top
    prev_rank: int | None = None  # rank at the previous residual node

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "token": self.token,
            "text": self.text,
            "logit": round(self.logit, 5),
        }
        if self.prob is not None:
            out["prob"] = round(self.prob, 7)
        if self.rank is not None:
            out["rank"] = self.rank
        if self.prev_rank is not None:
            out["prev_rank"] = self.prev_rank
            out["rank_change"] = self.prev_rank - (self.rank or 0)
        return out


@dataclass
class LensResult(JsonResult):
    """Top tokens of one residual node at one position."""

    node: str
    position: int
    final_norm: bool
    entropy: float
    top: list[TokenScore] = field(default_factory=list)
    previous: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "position": self.position,
            "final_norm": self.final_norm,
            "entropy": round(self.entropy, 6),
            "previous": self.previous,
            "top": [t.to_dict() for t in self.top],
        }


@dataclass
class Promotion(JsonResult):
    """Tokens an update vector pushes up (promoted) and down (suppressed)."""

    source: str
    position: int | None
    promoted: list[TokenScore] = field(default_factory=list)
    suppressed: list[TokenScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "position": self.position,
            "promoted": [t.to_dict() for t in self.promoted],
            "suppressed": [t.to_dict() for t in self.suppressed],
        }


@dataclass
class Trajectory(JsonResult):
    """Rank, probability and entropy of one token across the residual nodes at a position."""

    position: int
    token: int
    text: str | None
    final_norm: bool
    nodes: list[str]
    ranks: list[int]
    probs: list[float]
    entropies: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "token": self.token,
            "text": self.text,
            "final_norm": self.final_norm,
            "nodes": self.nodes,
            "ranks": self.ranks,
            "probs": [round(p, 7) for p in self.probs],
            "entropies": [round(e, 6) for e in self.entropies],
        }


# ---- projections ---------------------------------------------------------------------------
def project(model: Transformer, x: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
    """Logits of residual vectors x [..., D] (through the final norm unless final_norm=False)."""
    with torch.no_grad():
        x = x.to(device=model.device, dtype=model.dtype)
        h = model.ln_final(x) if final_norm else x
        return model.unembed(h).float().cpu()


def lens_logits(
    model: Transformer,
    view: TraceView,
    node: str | tuple[str, int],
    positions: list[int] | None = None,
    final_norm: bool = True,
) -> torch.Tensor:
    """[T, V] (or [len(positions), V]) lens logits of a residual node.

    With positions=None the whole sequence is projected in the model's own shape [1, T, D], so
    the last resid_post through the final norm reproduces the model's logits bit for bit.
    """
    kind, layer = parse_node(node, view.n_layers)
    x = view.residual(kind, layer)
    if positions is None:
        return project(model, x[None], final_norm)[0]
    return project(model, x[positions], final_norm)


def _ranks_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Rank (0 = top) of each token in each row: how many tokens have a strictly larger logit."""
    chosen = logits.gather(-1, tokens)
    return (logits[..., None, :] > chosen[..., None]).sum(-1)


def _softmax_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, entropy) of each row's softmax, in float64 a few rows at a time (a
    [61, 49152] float64 block would be 24 MB per temporary)."""
    probs, entropy = [], []
    for rows in logits.split(8):
        logp = torch.log_softmax(rows.double(), dim=-1)
        p = logp.exp()
        probs.append(p.float())
        entropy.append(-(p * logp).sum(-1))
    return torch.cat(probs), torch.cat(entropy).float()


def _text(decode: Decode | None, token: int) -> str | None:
    return decode(token) if decode is not None else None


def lens_table(
    model: Transformer,
    view: TraceView,
    position: int = -1,
    k: int = 10,
    final_norm: bool = True,
    decode: Decode | None = None,
) -> list[LensResult]:
    """The logit lens of every residual node at one position, with rank changes."""
    position = check_position(position, view.n_tokens, "position")
    nodes = lens_nodes(view.n_layers)
    x = torch.stack([view.residual(kind, layer, position) for kind, layer in nodes])
    logits = project(model, x, final_norm)  # [N, V]
    return _lens_rows(logits, nodes, position, k, final_norm, decode)


def _lens_rows(
    logits: torch.Tensor,
    nodes: list[tuple[ResidKind, int]],
    position: int,
    k: int,
    final_norm: bool,
    decode: Decode | None,
) -> list[LensResult]:
    k = min(k, logits.shape[-1])
    probs, entropy = _softmax_stats(logits)
    top_logit, top_idx = logits.topk(k, dim=-1)
    rows = []
    for n, (kind, layer) in enumerate(nodes):
        prev = _ranks_of(logits[n - 1 : n], top_idx[n : n + 1])[0] if n > 0 else None
        top = [
            TokenScore(
                token=int(tok),
                text=_text(decode, int(tok)),
                logit=float(top_logit[n, r]),
                prob=float(probs[n, tok]),
                rank=r,
                prev_rank=int(prev[r]) if prev is not None else None,
            )
            for r, tok in enumerate(top_idx[n].tolist())
        ]
        previous = node_name(*nodes[n - 1]) if n > 0 else None
        rows.append(
            LensResult(
                node_name(kind, layer), position, final_norm, float(entropy[n]), top, previous
            )
        )
    return rows


def logit_lens(
    model: Transformer,
    view: TraceView,
    node: str | tuple[str, int],
    position: int = -1,
    k: int = 10,
    final_norm: bool = True,
    decode: Decode | None = None,
) -> LensResult:
    """Top-k tokens of one residual node at one position, with ranks at the previous node."""
    position = check_position(position, view.n_tokens, "position")
    kind, layer = parse_node(node, view.n_layers)
    chain = lens_nodes(view.n_layers)
    index = chain.index((kind, layer))
    nodes = chain[max(0, index - 1) : index + 1]
    x = torch.stack([view.residual(kd, ly, position) for kd, ly in nodes])
    rows = _lens_rows(project(model, x, final_norm), nodes, position, k, final_norm, decode)
    return rows[-1]


def trajectory(
    model: Transformer,
    view: TraceView,
    position: int = -1,
    token: int | None = None,
    final_norm: bool = True,
    decode: Decode | None = None,
) -> Trajectory:
    """Rank, probability and entropy of `token` (default: the model's prediction) at every node."""
    position = check_position(position, view.n_tokens, "position")
    nodes = lens_nodes(view.n_layers)
    x = torch.stack([view.residual(kind, layer, position) for kind, layer in nodes])
    logits = project(model, x, final_norm)
    if token is None:
        token = int(logits[-1].argmax())
    if not 0 <= token < logits.shape[-1]:
        raise ExplainInputError(
            f"token id {token} is outside the vocabulary (0..{logits.shape[-1] - 1})"
        )
    index = torch.full((len(nodes), 1), token)
    ranks = _ranks_of(logits, index)[:, 0]
    all_probs, entropy = _softmax_stats(logits)
    probs = all_probs[:, token]
    return Trajectory(
        position=position,
        token=token,
        text=_text(decode, token),
        final_norm=final_norm,
        nodes=[node_name(kind, layer) for kind, layer in nodes],
        ranks=ranks.tolist(),
        probs=probs.tolist(),
        entropies=entropy.tolist(),
    )


# ---- updates -------------------------------------------------------------------------------
def update_logits(
    model: Transformer, vectors: torch.Tensor, references: torch.Tensor | None = None
) -> torch.Tensor:
    """Direct logit effect [..., V] of update vectors [..., D] through the linearised final norm.

    references: the final residual at each update's position, [..., D] (its std / RMS is the
    frozen norm scale); None for scale 1.
    """
    ln = model.ln_final
    with torch.no_grad():
        v = vectors.float().cpu()
        scale = torch.ones((*v.shape[:-1], 1))
        if isinstance(ln, nn.LayerNorm):
            v = v - v.mean(-1, keepdim=True)
            if references is not None:
                ref = references.float().cpu()
                scale = torch.sqrt(ref.var(-1, unbiased=False, keepdim=True) + ln.eps)
        elif isinstance(ln, RMSNorm):
            if references is not None:
                ref = references.float().cpu()
                scale = torch.sqrt(ref.pow(2).mean(-1, keepdim=True) + ln.eps)
        else:  # pragma: no cover - the canonical model has only these two norms
            raise TypeError(f"unsupported final norm {type(ln).__name__}")
        if ln.weight is not None:
            v = v * ln.weight.detach().float().cpu()
        w_u = model.unembed.weight.detach().float().cpu()  # [V, D]
        return (v / scale) @ w_u.t()


def _promotion(
    logits: torch.Tensor, source: str, position: int | None, k: int, decode: Decode | None
) -> Promotion:
    k = min(k, logits.numel())
    up_v, up_i = logits.topk(k)
    down_v, down_i = (-logits).topk(k)
    promoted = [
        TokenScore(int(t), _text(decode, int(t)), float(v)) for v, t in zip(up_v, up_i, strict=True)
    ]
    suppressed = [
        TokenScore(int(t), _text(decode, int(t)), -float(v))
        for v, t in zip(down_v, down_i, strict=True)
    ]
    return Promotion(source, position, promoted, suppressed)


def block_update(view: TraceView, block: str, layer: int, position: int) -> torch.Tensor:
    """[D] what a block added to the residual: 'attn' (attn_out incl. bias) or 'mlp'."""
    layer = check_layer(layer, view.n_layers)
    if block == "attn":
        return view.resid_mid(layer)[position] - view.resid_pre(layer)[position]
    if block == "mlp":
        return view.mlp_out(layer)[position]
    raise ExplainInputError(f"block must be 'attn' or 'mlp', got {block!r}")


def head_output(view: TraceView, layer: int, head: int, position: int) -> torch.Tensor:
    """[D] head h's output at `position`: sum_j A^h_ij v^h_j W_O^h (hook_result, no bias)."""
    layer = check_layer(layer, view.n_layers)
    head = check_head(head, view.n_heads)
    weights = view.pattern(layer, position)[head]  # [S]
    return weights @ view.head_vectors(layer)[:, head]


def promoted_by_block(
    model: Transformer,
    view: TraceView,
    block: str,
    layer: int,
    position: int = -1,
    k: int = 10,
    decode: Decode | None = None,
) -> Promotion:
    """Tokens promoted/suppressed by the attention or MLP block update at a position."""
    position = check_position(position, view.n_tokens, "position")
    vec = block_update(view, block, layer, position)
    ref = view.resid_post(view.n_layers - 1)[position]
    source = f"L{layer % view.n_layers}/{block}"
    return _promotion(update_logits(model, vec, ref), source, position, k, decode)


def promoted_by_head(
    model: Transformer,
    view: TraceView,
    layer: int,
    head: int,
    position: int = -1,
    k: int = 10,
    decode: Decode | None = None,
) -> Promotion:
    """Tokens promoted/suppressed by one head's output at a position."""
    position = check_position(position, view.n_tokens, "position")
    vec = head_output(view, layer, head, position)
    ref = view.resid_post(view.n_layers - 1)[position]
    source = head_label(layer % view.n_layers, head)
    return _promotion(update_logits(model, vec, ref), source, position, k, decode)


def promoted_by_neuron(
    model: Transformer,
    view: TraceView,
    layer: int,
    neuron: int,
    k: int = 10,
    decode: Decode | None = None,
) -> Promotion:
    """Tokens a neuron's output row W_out[neuron] promotes/suppresses (position-free)."""
    return promoted_by_neurons(model, view, [(layer, neuron)], k, decode)[0]


def promoted_by_neurons(
    model: Transformer,
    view: TraceView,
    neurons: Sequence[tuple[int, int]],
    k: int = 10,
    decode: Decode | None = None,
) -> list[Promotion]:
    """promoted_by_neuron for many (layer, neuron) pairs, projected in batches (one projection
    of a single row reads the whole unembedding: slow when repeated)."""
    rows: list[torch.Tensor] = []
    sources: list[str] = []
    for layer, neuron in neurons:
        layer = check_layer(layer, view.n_layers)
        w_out = view.mlp_weight(layer)
        if not 0 <= neuron < w_out.shape[0]:
            raise ExplainInputError(
                f"neuron {neuron} is out of range; layer {layer} has 0..{w_out.shape[0] - 1}"
            )
        rows.append(w_out[neuron])
        sources.append(f"L{layer}N{neuron}")
    out: list[Promotion] = []
    for start in range(0, len(rows), 256):
        logits = update_logits(model, torch.stack(rows[start : start + 256]))
        for row, source in zip(logits, sources[start : start + 256], strict=True):
            out.append(_promotion(row, source, None, k, decode))
    return out


def promotions_at(
    model: Transformer,
    view: TraceView,
    position: int = -1,
    heads: Sequence[tuple[int, int]] = (),
    k: int = 10,
    decode: Decode | None = None,
) -> list[Promotion]:
    """Promotions of every block update (L{l}/attn, L{l}/mlp) and of the given (layer, head)
    outputs at one position, projected in one batch."""
    position = check_position(position, view.n_tokens, "position")
    sources: list[str] = []
    vectors: list[torch.Tensor] = []
    for layer in range(view.n_layers):
        for block in ("attn", "mlp"):
            sources.append(f"L{layer}/{block}")
            vectors.append(block_update(view, block, layer, position))
    for layer, head in heads:
        sources.append(head_label(layer, head))
        vectors.append(head_output(view, layer, head, position))
    ref = view.resid_post(view.n_layers - 1)[position]
    logits = update_logits(model, torch.stack(vectors), ref.expand(len(vectors), -1))
    return [
        _promotion(row, source, position, k, decode)
        for row, source in zip(logits, sources, strict=True)
    ]
