"""Information-flow importances for every block, token and head of one traced prompt.

`compute_flow` applies the decompositions of `lmscope.explain.decompose` to every layer and
token at once and stores the importance of every part (see `proximity`). The per-(source, head)
attention parts p = a v W_O are never materialised: their proximities come from dot products in
the head dimension (in blocks of `chunk_elements`) plus, for L1, a compiled pass over the few
coordinates a part can flip (`flow_kernel`), so memory stays bounded for long prompts.

The result, `FlowGraph`, is dense (one number per possible edge); `FlowGraph.routes` turns it
into the sparse route graph of the tokens you ask about.

MLP output bias (`mlp_bias`): by default ("in_mlp") the MLP block's output includes its bias
b_out, as in the paper and LM-TT (Ferrando & Voita 2024), so resid_post = resid_mid + mlp_out
has two parts and `FlowGraph.mlp_bias` is all zeros. "separate" makes b_out a third part of its
own (the convention before this option): on models with large MLP biases (GPT-2, OPT, NeoX) it
takes share from the MLP node, which can then fall below tau and drop out of the routes. The
attention output bias b_O is always its own part (it is not any one head's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lmscope.explain.budget import ShouldStop, check_cancelled
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.flow_kernel import l1_head_proximities
from lmscope.explain.proximity import norm_order, normalise, proximity
from lmscope.explain.results import JsonResult, rounded
from lmscope.explain.trace import TraceView
from lmscope.model.trace import Trace
from lmscope.model.transformer import Transformer

DEFAULT_CHUNK_ELEMENTS = 1 << 22
# Per-head importances above this many bytes are kept in float16 (documented in docs/explain.md).
HEAD_FLOAT32_LIMIT = 256 << 20
MlpBias = Literal["in_mlp", "separate"]
MLP_BIAS_CONVENTIONS = ("in_mlp", "separate")


def check_mlp_bias(convention: str) -> str:
    if convention not in MLP_BIAS_CONVENTIONS:
        raise ExplainInputError(
            f"mlp_bias must be 'in_mlp' (the MLP output includes its bias, the default) or "
            f"'separate' (the bias is its own part), got {convention!r}"
        )
    return convention


@dataclass
class FlowGraph(JsonResult):
    """Importances of every part of every block decomposition of one prompt.

    Shapes (L layers, T tokens, H heads); target index first, then source:
    - attn_heads [L, T, T, H]: share of (source j, head h) in resid_mid[l, i]
    - attn_edges [L, T, T]: sum over heads (the attention edge j -> i; j == i is the
      self-attention edge, distinct from the residual edge)
    - attn_resid, attn_bias [L, T]: shares of resid_pre[l, i] and of b_O in resid_mid[l, i]
    - mlp, mlp_resid, mlp_bias [L, T]: shares of the MLP output, resid_mid[l, i] and b_out in
      resid_post[l, i]
    The shares of each whole sum to one (or are all zero when every proximity is zero).
    """

    tokens: list[int]
    n_layers: int
    n_heads: int
    parallel: bool
    norm: str
    attn_heads: torch.Tensor
    attn_edges: torch.Tensor
    attn_resid: torch.Tensor
    attn_bias: torch.Tensor
    mlp: torch.Tensor
    mlp_resid: torch.Tensor
    mlp_bias: torch.Tensor
    token_strs: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def head_weights(self, layer: int, target: int, source: int) -> torch.Tensor:
        """[H] share of each head in the attention edge source -> target at `layer`."""
        return self.attn_heads[layer, target, source].float()

    def routes(
        self,
        targets: int | list[int] | None = -1,
        tau: float = 0.04,
        *,
        renormalise: bool = False,
    ) -> Any:
        """The route graph: nodes reachable from `targets` (final-layer tokens; None = all)
        through edges above tau. See `lmscope.explain.routes.build_routes`."""
        from lmscope.explain.routes import build_routes

        return build_routes(self, targets, tau, renormalise=renormalise)

    def to_dict(self) -> dict[str, Any]:
        def lst(t: torch.Tensor) -> Any:
            return rounded(t.float().tolist())

        return {
            "tokens": self.tokens,
            "token_strs": self.token_strs,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "parallel": self.parallel,
            "norm": self.norm,
            "attn_heads": lst(self.attn_heads),
            "attn_resid": lst(self.attn_resid),
            "attn_bias": lst(self.attn_bias),
            "mlp": lst(self.mlp),
            "mlp_resid": lst(self.mlp_resid),
            "mlp_bias": lst(self.mlp_bias),
            "meta": self.meta,
        }


def head_proximities(
    whole: torch.Tensor,
    pattern: torch.Tensor,
    values: torch.Tensor,
    w_o: torch.Tensor,
    norm: str = "l1",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Proximity of every (source j, head h) part p = A^h_ij v_j W_O^h to the whole y_i.

    whole [T, D] (resid_mid), pattern [H, T, S], values [S, K, d] (GQA/MQA: head h reads kv
    head h // (H / K)), w_o [H, d, D] -> prox [H, T, S]; zero where the attention weight is zero.
    Dot products with u = v W_O are taken as (y W_O^T) . v, in the head dimension d << D.
    out (L1): a [H, T, S] buffer to reuse, zero at future sources (as any earlier result is).
    """
    n_heads = w_o.shape[0]
    group = n_heads // values.shape[1]
    v = values.permute(1, 0, 2)  # [K, S, d]
    if group > 1:
        v = v.repeat_interleave(group, dim=0)  # [H, S, d]
    if norm_order(norm) == 2:
        return _head_proximities_l2(whole, pattern, v, w_o)
    return l1_head_proximities(whole, pattern, v, w_o, chunk_elements, out)


def _head_proximities_l2(
    whole: torch.Tensor, pattern: torch.Tensor, v: torch.Tensor, w_o: torch.Tensor
) -> torch.Tensor:
    """(2 y.p - p.p) / (||y|| + ||y - p||) with p = a u: only dot products, in float64."""
    y = whole.double()
    a = pattern.double()  # [H, T, S]
    vd, wd = v.double(), w_o.double()
    yu = torch.bmm(torch.matmul(y, wd.transpose(1, 2)), vd.transpose(1, 2))  # [H, T, S]
    uu = torch.bmm(vd, wd).square().sum(-1)[:, None, :]  # [H, 1, S]
    yy = (y * y).sum(-1)[None, :, None]  # [1, T, 1]
    num = 2 * a * yu - a * a * uu
    dist = (yy - num).clamp_min(0.0).sqrt()  # ||y - p||
    den = yy.sqrt() + dist
    prox = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0).float()
    return prox.masked_fill_(pattern == 0, 0.0).clamp_(min=0.0)


def _layer_groups(n_layers: int, per_layer: int, budget: int = 1 << 22) -> list[list[int]]:
    """Layers in groups whose stacked [G, T, D] residuals hold at most `budget` floats."""
    size = max(1, budget // max(1, per_layer))
    return [list(range(i, min(n_layers, i + size))) for i in range(0, n_layers, size)]


def _vector_parts(
    view: TraceView, layers: list[int], norm: str, bias_apart: bool
) -> dict[str, torch.Tensor]:
    """Proximities [G, T] of the parts that are one vector per token, for a group of layers at
    once (a few large operations instead of many small ones): resid_pre and b_O in resid_mid;
    the MLP output, resid_mid and (bias_apart) b_out in resid_post."""
    pre = torch.stack([view.resid_pre(layer) for layer in layers])  # [G, T, D]
    mid = torch.stack([view.resid_mid(layer) for layer in layers])
    post = torch.stack([view.resid_post(layer) for layer in layers])
    out = torch.stack([view.mlp_out(layer) for layer in layers])
    none = torch.zeros(mid.shape[:2])
    b_o = _stacked_bias(view.attn_bias, layers)
    b_out = _stacked_bias(view.mlp_bias, layers) if bias_apart else None
    parts = {"resid": proximity(mid, pre, norm), "mlp_resid": proximity(post, mid, norm)}
    parts["bias"] = none if b_o is None else proximity(mid, b_o, norm)
    if b_out is None:
        parts["mlp"], parts["mlp_bias"] = proximity(post, out, norm), none
    else:
        parts["mlp"] = proximity(post, out - b_out, norm)
        parts["mlp_bias"] = proximity(post, b_out, norm)
    return parts


def _stacked_bias(
    bias_of: Callable[[int], torch.Tensor | None], layers: list[int]
) -> torch.Tensor | None:
    """[G, 1, D] from each layer's [D] bias, or None where the model has none."""
    biases = [bias_of(layer) for layer in layers]
    if any(b is None for b in biases):
        return None
    return torch.stack([b for b in biases if b is not None])[:, None, :]


def compute_flow(
    model: Transformer,
    trace: Trace | TraceView,
    *,
    norm: str = "l1",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    head_dtype: torch.dtype | None = None,
    token_strs: list[str] | None = None,
    should_stop: ShouldStop | None = None,
    mlp_bias: MlpBias = "in_mlp",
    on_pattern: Callable[[int, torch.Tensor], None] | None = None,
) -> FlowGraph:
    """Importances of every block part, for every layer and token of a traced prompt.

    norm: "l1" (default) or "l2" for the proximity.
    chunk_elements: elements per block of the L1 kernel's matrix product; bounds memory.
    head_dtype: storage of the per-head importances; default float32, or float16 when the
        [L, T, T, H] tensor would exceed 256 MB (long prompts).
    should_stop: checked before every layer; True raises ExplanationCancelled.
    mlp_bias: "in_mlp" (default, the paper's) or "separate"; see the module docstring.
    on_pattern: called with (layer, [H, T, S] attention pattern) for every layer, last layer
        first, so a caller that needs the patterns too (attention rollout) need not recompute them.
    """
    norm_order(norm)
    bias_apart = check_mlp_bias(mlp_bias) == "separate"
    view = trace if isinstance(trace, TraceView) else TraceView(model, trace)
    n_layers, n_tok, n_heads = view.n_layers, view.n_tokens, view.n_heads
    if head_dtype is None:
        big = n_layers * n_tok * n_tok * n_heads * 4 > HEAD_FLOAT32_LIMIT
        head_dtype = torch.float16 if big else torch.float32
    attn_heads = torch.empty(n_layers, n_tok, n_tok, n_heads, dtype=head_dtype)  # all written
    attn_edges = torch.zeros(n_layers, n_tok, n_tok)
    attn_resid = torch.zeros(n_layers, n_tok)
    attn_bias = torch.zeros(n_layers, n_tok)
    mlp = torch.zeros(n_layers, n_tok)
    mlp_resid = torch.zeros(n_layers, n_tok)
    mlp_bias_share = torch.zeros(n_layers, n_tok)
    buffer: torch.Tensor | None = None  # the [H, T, S] head proximities, reused across layers
    resid_prox = torch.zeros(n_layers, n_tok)  # resid_pre's proximity to resid_mid
    bias_prox = torch.zeros(n_layers, n_tok)  # b_O's

    with torch.no_grad():
        for layers in _layer_groups(n_layers, n_tok * view.cfg.d_model):
            parts = _vector_parts(view, layers, norm, bias_apart)
            resid_prox[layers], bias_prox[layers] = parts["resid"], parts["bias"]
            p_mlp, p_res, p_bias = parts["mlp"], parts["mlp_resid"], parts["mlp_bias"]
            total2 = p_mlp + p_res + p_bias
            mlp[layers] = normalise(p_mlp, total2)
            mlp_resid[layers] = normalise(p_res, total2)
            mlp_bias_share[layers] = normalise(p_bias, total2)
        for layer in reversed(range(n_layers)):  # any order; last first suits `on_pattern`
            check_cancelled(should_stop, "the information-flow computation")
            # Attention block: whole = resid_mid.
            pattern = view.pattern(layer)
            if on_pattern is not None:
                on_pattern(layer, pattern)
            heads = head_proximities(  # [H, T, S]
                view.resid_mid(layer),
                pattern,
                view.values(layer),
                view.attn_weight(layer),
                norm,
                chunk_elements,
                out=buffer,
            )
            buffer = heads
            resid, bias = resid_prox[layer], bias_prox[layer]
            total = heads.sum((0, 2)) + resid + bias  # [T]
            safe = torch.where(total > 0, total, torch.ones_like(total))
            heads.div_(safe[None, :, None])
            attn_heads[layer].copy_(heads.permute(1, 2, 0))
            torch.sum(heads, 0, out=attn_edges[layer])
            attn_resid[layer] = normalise(resid, total)
            attn_bias[layer] = normalise(bias, total)
            del pattern  # 4 T^2 H bytes: not alive while the next layer's is computed

    return FlowGraph(
        tokens=view.tokens,
        n_layers=n_layers,
        n_heads=n_heads,
        parallel=view.parallel,
        norm=norm,
        attn_heads=attn_heads,
        attn_edges=attn_edges,
        attn_resid=attn_resid,
        attn_bias=attn_bias,
        mlp=mlp,
        mlp_resid=mlp_resid,
        mlp_bias=mlp_bias_share,
        token_strs=token_strs,
        meta={"mlp_bias": mlp_bias},
    )
