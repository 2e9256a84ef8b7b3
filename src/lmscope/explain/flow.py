"""Information-flow importances for every block, token and head of one traced prompt.

`compute_flow` applies the decompositions of `lmscope.explain.decompose` to every layer and
token at once and stores the importance of every part (see `proximity`). The per-(source, head)
attention parts are never all materialised: they are built in chunks of target and source
tokens sized by `chunk_elements`, so memory stays bounded for long prompts.

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

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lmscope.explain.budget import ShouldStop, check_cancelled
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.proximity import norm_order, normalise, proximity
from lmscope.explain.results import JsonResult, rounded
from lmscope.explain.trace import TraceView
from lmscope.model.trace import Trace
from lmscope.model.transformer import Transformer

DEFAULT_CHUNK_ELEMENTS = 1 << 20
LINEAR_BLOCK = 128  # target rows per matmul of the L1 kernel's linear term
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
    head_vectors: torch.Tensor,
    norm: str = "l1",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Proximity of every (source j, head h) part A^h_ij u_jh to the whole y_i.

    whole [T, D] (resid_mid), pattern [H, T, T], head_vectors [T, H, D] -> prox [T, T, H]
    (target, source, head); zero where the attention weight is zero (future tokens).
    """
    weights = pattern.permute(1, 2, 0).contiguous()  # [T, S, H]
    if norm_order(norm) == 2:
        prox = _head_proximities_l2(whole, weights, head_vectors)
        prox.masked_fill_(weights == 0, 0.0)
    else:
        prox = _head_proximities_l1(whole, weights, head_vectors, chunk_elements)
    return prox.clamp_(min=0.0)


def _head_proximities_l1(
    whole: torch.Tensor, weights: torch.Tensor, head_vectors: torch.Tensor, chunk_elements: int
) -> torch.Tensor:
    """Exact L1 proximities sum_d |y_id| - |y_id - p_d| of the parts p = A_ijh u_jh.

    Coordinates where p_d cannot flip the sign of y_d contribute linearly:
    |y_d| - |y_d - p_d| = sign(y_d) p_d. For target i, let S_i be its k coordinates with the
    smallest |y_id| and tau_i the smallest |y_id| outside S_i. A part with a * max|u| <= tau_i
    flips nothing outside S_i, so
        prox = a * (sign(y_i) off S_i) . u_jh  +  sum_{d in S_i} |y_id| - |y_id - p_d|
    (a matrix product plus an elementwise sum over k << D coordinates). The few parts with
    a * max|u| > tau_i are computed on every coordinate. Chunks bound the memory.
    """
    n_tok, n_heads, d_model = head_vectors.shape
    if d_model < 2:
        return _head_proximities_l1_direct(whole, weights, head_vectors)
    abs_whole = whole.abs()
    # The smallest |y| per target, sorted (enough for the largest k tried).
    sorted_abs, order = abs_whole.topk(
        min(d_model, d_model // 4 + 1), dim=-1, largest=False, sorted=True
    )
    u_max = head_vectors.abs().amax(-1)  # [S, H]
    k = _small_coordinates(sorted_abs, weights * u_max[None], d_model)
    tau = sorted_abs[:, k]  # [T]: every coordinate outside S_i has |y| >= tau
    small_idx = order[:, :k]  # [T, k]
    small_y = whole.gather(1, small_idx)  # [T, k]
    small_abs_sum = sorted_abs[:, :k].sum(-1)  # [T]
    sign_out = torch.where(whole >= 0, 1.0, -1.0).scatter(1, small_idx, 0.0)  # [T, D]
    u_rows = head_vectors.permute(2, 0, 1).reshape(d_model, n_tok * n_heads)  # [D, S*H]
    # The linear term for every (target, source, head), as a few large causal matmuls.
    prox = torch.zeros(n_tok, n_tok, n_heads)
    for b0 in range(0, n_tok, LINEAR_BLOCK):
        b1 = min(n_tok, b0 + LINEAR_BLOCK)
        linear = sign_out[b0:b1] @ u_rows[:, : b1 * n_heads]
        prox[b0:b1, :b1] = linear.view(b1 - b0, b1, n_heads)
    prox.mul_(weights).add_(small_abs_sum[:, None, None])
    pairs = max(1, chunk_elements // (n_heads * k))
    i0 = 0
    while i0 < n_tok:
        # Causal: targets i0..i1-1 only meet sources 0..i1-1; keep c * i1 pairs in the budget.
        rows = 1
        while i0 + rows < n_tok and (rows + 1) * (i0 + rows + 1) <= pairs:
            rows += 1
        i1 = i0 + rows
        a = weights[i0:i1, :i1]  # [c, S, H]
        chunk = prox[i0:i1, :i1]  # a view: updated in place
        picked = u_rows[:, : i1 * n_heads].index_select(0, small_idx[i0:i1].reshape(-1))
        picked = picked.view(rows, k, i1, n_heads)
        dist = torch.addcmul(small_y[i0:i1, :, None, None].neg(), a[:, None], picked)  # p - y
        chunk -= dist.abs_().sum(1)
        big = (a * u_max[None, :i1]) > tau[i0:i1, None, None]
        if bool(big.any()):
            ci, j, h = big.nonzero(as_tuple=True)
            ti = ci + i0
            part = a[ci, j, h][:, None] * head_vectors[j, h]
            chunk[ci, j, h] = (abs_whole[ti] - (whole[ti] - part).abs()).sum(-1)
        i0 = i1
    return prox.masked_fill_(weights == 0, 0.0)  # p = 0 there (future sources): exactly 0


def _small_coordinates(sorted_abs: torch.Tensor, reach: torch.Tensor, d_model: int) -> int:
    """How many small coordinates k per target to evaluate elementwise.

    sorted_abs [T, >= D/4 + 1]: the smallest |y| per target, sorted; reach [T, S, H]:
    a * max|u| per part. A part is
    computed on all D coordinates when its reach exceeds tau_k = sorted_abs[:, k]; the cost,
    in element passes, is about 4 k per part plus 8 D per such part. Pick the cheapest k.
    """
    parts = max(1, int((reach > 0).sum()))
    largest = min(d_model - 1, sorted_abs.shape[-1] - 1)
    best_k, best_cost = 1, float("inf")
    for frac in (32, 16, 8, 4):
        k = max(1, min(largest, d_model // frac))
        n_big = int((reach > sorted_abs[:, k, None, None]).sum())
        cost = 4 * k * parts + 8 * d_model * n_big
        if cost < best_cost:
            best_k, best_cost = k, cost
    return best_k


def _head_proximities_l1_direct(
    whole: torch.Tensor, weights: torch.Tensor, head_vectors: torch.Tensor
) -> torch.Tensor:
    """sum_d |y_id| - |y_id - A_ijh u_jhd| on every coordinate (reference; small inputs)."""
    parts = weights[..., None] * head_vectors[None]  # [T, S, H, D]
    return (whole.abs()[:, None, None] - (whole[:, None, None] - parts).abs()).sum(-1)


def _head_proximities_l2(
    whole: torch.Tensor, weights: torch.Tensor, head_vectors: torch.Tensor
) -> torch.Tensor:
    """(2 y.p - p.p) / (||y|| + ||y - p||) with p = A u: only dot products, no [T, S, H, D]."""
    y = whole.double()
    u = head_vectors.double()
    a = weights.double()  # [T, S, H]
    yu = torch.einsum("id,jhd->ijh", y, u)  # [T, S, H]
    uu = (u * u).sum(-1)  # [S, H]
    yy = (y * y).sum(-1)[:, None, None]  # [T, 1, 1]
    num = 2 * a * yu - a * a * uu
    dist = (yy - num).clamp_min(0.0).sqrt()  # ||y - p||
    den = yy.sqrt() + dist
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0).float()


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
) -> FlowGraph:
    """Importances of every block part, for every layer and token of a traced prompt.

    norm: "l1" (default) or "l2" for the proximity.
    chunk_elements: elements per chunk of (target, source, head, d_model) parts; bounds memory.
    head_dtype: storage of the per-head importances; default float32, or float16 when the
        [L, T, T, H] tensor would exceed 256 MB (long prompts).
    should_stop: checked before every layer; True raises ExplanationCancelled.
    mlp_bias: "in_mlp" (default, the paper's) or "separate"; see the module docstring.
    """
    norm_order(norm)
    bias_apart = check_mlp_bias(mlp_bias) == "separate"
    view = trace if isinstance(trace, TraceView) else TraceView(model, trace)
    n_layers, n_tok, n_heads = view.n_layers, view.n_tokens, view.n_heads
    if head_dtype is None:
        big = n_layers * n_tok * n_tok * n_heads * 4 > HEAD_FLOAT32_LIMIT
        head_dtype = torch.float16 if big else torch.float32
    attn_heads = torch.zeros(n_layers, n_tok, n_tok, n_heads, dtype=head_dtype)
    attn_edges = torch.zeros(n_layers, n_tok, n_tok)
    attn_resid = torch.zeros(n_layers, n_tok)
    attn_bias = torch.zeros(n_layers, n_tok)
    mlp = torch.zeros(n_layers, n_tok)
    mlp_resid = torch.zeros(n_layers, n_tok)
    mlp_bias_share = torch.zeros(n_layers, n_tok)

    with torch.no_grad():
        for layer in range(n_layers):
            check_cancelled(should_stop, "the information-flow computation")
            # Attention block: whole = resid_mid.
            pre, mid = view.resid_pre(layer), view.resid_mid(layer)
            heads = head_proximities(
                mid, view.pattern(layer), view.head_vectors(layer), norm, chunk_elements
            )
            resid = proximity(mid, pre, norm)
            b_o = view.attn_bias(layer)
            bias = proximity(mid, b_o, norm) if b_o is not None else torch.zeros(n_tok)
            total = heads.sum((1, 2)) + resid + bias  # [T]
            safe = torch.where(total > 0, total, torch.ones_like(total))
            heads.div_(safe[:, None, None])
            attn_heads[layer] = heads
            attn_edges[layer] = heads.sum(-1)
            attn_resid[layer] = normalise(resid, total)
            attn_bias[layer] = normalise(bias, total)

            # MLP block: whole = resid_post = resid_mid + mlp_out (parallel blocks too).
            post = view.resid_post(layer)
            out = view.mlp_out(layer)
            b_out = view.mlp_bias(layer) if bias_apart else None
            p_mlp = proximity(post, out - b_out if b_out is not None else out, norm)
            p_res = proximity(post, mid, norm)
            p_bias = proximity(post, b_out, norm) if b_out is not None else torch.zeros(n_tok)
            total2 = p_mlp + p_res + p_bias
            mlp[layer] = normalise(p_mlp, total2)
            mlp_resid[layer] = normalise(p_res, total2)
            mlp_bias_share[layer] = normalise(p_bias, total2)

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
