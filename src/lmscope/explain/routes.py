"""The route graph: the part of the information flow that reaches chosen tokens.

Nodes (one per token and layer):
- `embed/{t}`: the input embeddings (resid_pre of block 0, with positions where learned);
- `L{l}/resid_mid/{t}`: the residual after attention at layer l;
- `L{l}/mlp/{t}`: the MLP block output;
- `L{l}/resid_post/{t}`: the residual after layer l (it is resid_pre of layer l+1).

Edges point the way information flows and are weighted by importance (see `proximity`):
- `attention` (source token j < i) and `self_attention` (j == i): resid_pre[l, j] ->
  resid_mid[l, i], weight = sum over heads, `heads` = the per-head weights;
- `residual`: resid_pre[l, i] -> resid_mid[l, i] and resid_mid[l, i] -> resid_post[l, i];
- `mlp_in`: resid_mid[l, i] (parallel blocks: resid_pre[l, i]) -> mlp[l, i], and
  `mlp_out`: mlp[l, i] -> resid_post[l, i], both weighted by the MLP's share in resid_post.
Self-attention and residual edges join the same two nodes, so the graph is a multigraph keyed by
edge kind. Output biases are parts too but no node emits them: their share is a node attribute.

Threshold tau (a route keeps edges whose weight is strictly above tau):
- renormalise=False: tau thresholds the raw importance, the edge's share of its target node's
  total proximity (all parts, biases included); reported weights are those raw shares.
- renormalise=True: for each node, the parts with raw share <= tau are erased and the survivors
  (edges and bias) are rescaled to sum to one, then tau is applied to the rescaled weights.
  Rescaling only raises survivors, so both modes keep the same edges; they differ in the weights
  reported: with renormalisation every kept node's incoming weights (plus kept bias) sum to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmscope.explain.errors import check_position, check_tau
from lmscope.explain.results import JsonResult

if TYPE_CHECKING:
    import networkx as nx

    from lmscope.explain.flow import FlowGraph

EDGE_KINDS = ("attention", "self_attention", "residual", "mlp_in", "mlp_out")
NODE_KINDS = ("embed", "resid_mid", "mlp", "resid_post")
HOOKS = {
    "embed": "blocks.0.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "mlp": "blocks.{l}.hook_mlp_out",
    "resid_post": "blocks.{l}.hook_resid_post",
}


def node_id(kind: str, layer: int, position: int) -> str:
    if kind == "embed":
        return f"embed/{position}"
    return f"L{layer}/{kind}/{position}"


def resid_pre_id(layer: int, position: int) -> str:
    """The node that is resid_pre of `layer`: the embeddings or the previous resid_post."""
    return (
        node_id("embed", -1, position) if layer == 0 else node_id("resid_post", layer - 1, position)
    )


@dataclass(slots=True)
class RouteNode:
    id: str
    kind: str
    layer: int  # -1 for the embeddings
    position: int
    token: int
    text: str | None = None
    bias: float | None = None  # raw share of the block's output bias in this node

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "layer": self.layer,
            "position": self.position,
            "token": self.token,
            "hook": HOOKS[self.kind].format(l=self.layer),
        }
        if self.text is not None:
            out["text"] = self.text
        if self.bias is not None:
            out["bias"] = round(self.bias, 7)
        return out


@dataclass(slots=True)
class RouteEdge:
    source: str
    target: str
    kind: str
    layer: int
    weight: float  # as thresholded (renormalised when the graph is)
    raw: float  # raw importance (share of the target node's total proximity)
    heads: list[float] | None = None  # per-head weights of attention edges (same scale as weight)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "target": self.target,
            "key": self.kind,
            "kind": self.kind,
            "layer": self.layer,
            "weight": round(self.weight, 7),
            "raw": round(self.raw, 7),
        }
        if self.heads is not None:
            out["heads"] = [round(h, 7) for h in self.heads]
        return out


@dataclass
class RouteGraph(JsonResult):
    """Nodes and edges of the routes to `targets` (final-layer token positions)."""

    targets: list[int]
    tau: float
    renormalise: bool
    norm: str
    n_layers: int
    n_tokens: int
    n_heads: int
    nodes: list[RouteNode] = field(default_factory=list)
    edges: list[RouteEdge] = field(default_factory=list)

    def graph_attrs(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "tau": self.tau,
            "renormalise": self.renormalise,
            "norm": self.norm,
            "n_layers": self.n_layers,
            "n_tokens": self.n_tokens,
            "n_heads": self.n_heads,
        }

    def to_dict(self) -> dict[str, Any]:
        """Node-link JSON (the d3 / networkx `node_link_data(..., edges="links")` layout)."""
        return {
            "directed": True,
            "multigraph": True,
            "graph": self.graph_attrs(),
            "nodes": [n.to_dict() for n in self.nodes],
            "links": [e.to_dict() for e in self.edges],
        }

    def to_networkx(self) -> nx.MultiDiGraph:
        import networkx as nx

        g = nx.MultiDiGraph(**self.graph_attrs())
        for n in self.nodes:
            attrs = n.to_dict()
            g.add_node(attrs.pop("id"), **attrs)
        for e in self.edges:
            attrs = e.to_dict()
            g.add_edge(attrs.pop("source"), attrs.pop("target"), key=attrs.pop("key"), **attrs)
        return g

    def node_ids(self) -> set[str]:
        return {n.id for n in self.nodes}

    def edge(self, source: str, target: str, kind: str) -> RouteEdge | None:
        for e in self.edges:
            if e.source == source and e.target == target and e.kind == kind:
                return e
        return None

    def reached_positions(self, kind: str = "embed", layer: int = -1) -> list[int]:
        """Token positions of the nodes of one kind (and layer) in the route."""
        return sorted(n.position for n in self.nodes if n.kind == kind and n.layer == layer)


def _targets(targets: int | list[int] | None, n_tokens: int) -> list[int]:
    if targets is None:
        return list(range(n_tokens))
    if isinstance(targets, int):
        targets = [targets]
    if not targets:
        raise check_position_error(n_tokens)
    return sorted({check_position(t, n_tokens) for t in targets})


def check_position_error(n_tokens: int) -> ValueError:
    from lmscope.explain.errors import TargetOutOfRangeError

    return TargetOutOfRangeError(
        f"give at least one target position (0..{n_tokens - 1}), or None for all tokens"
    )


def build_routes(
    flow: FlowGraph,
    targets: int | list[int] | None = -1,
    tau: float = 0.04,
    *,
    renormalise: bool = False,
) -> RouteGraph:
    """Nodes reachable backwards from the final residual of `targets` through edges above tau.

    targets: a token position, a list of them, or None for every token.
    """
    tau = check_tau(tau)
    n_layers, n_tok = flow.n_layers, flow.n_tokens
    chosen = _targets(targets, n_tok)
    text = flow.token_strs
    graph = RouteGraph(chosen, tau, renormalise, flow.norm, n_layers, n_tok, flow.n_heads)
    nodes: dict[str, RouteNode] = {}

    def add_node(kind: str, layer: int, pos: int, bias: float | None = None) -> str:
        nid = node_id(kind, layer, pos)
        if nid not in nodes:
            nodes[nid] = RouteNode(
                nid, kind, layer, pos, flow.tokens[pos], text[pos] if text else None, bias
            )
        return nid

    post_active = torch.zeros(n_tok, dtype=torch.bool)
    post_active[chosen] = True
    for layer in reversed(range(n_layers)):
        # -- MLP block: wholes are resid_post[layer] of the active positions.
        keep_mlp = post_active & (flow.mlp[layer] > tau)
        keep_res = post_active & (flow.mlp_resid[layer] > tau)
        keep_bias = post_active & (flow.mlp_bias[layer] > tau)
        scale = _scales(
            renormalise,
            flow.mlp[layer] * keep_mlp
            + flow.mlp_resid[layer] * keep_res
            + flow.mlp_bias[layer] * keep_bias,
        )
        # Python lists: indexing a tensor element by element costs microseconds per call.
        scales, biases = scale.tolist(), flow.mlp_bias[layer].tolist()
        res_w, mlp_w = flow.mlp_resid[layer].tolist(), flow.mlp[layer].tolist()
        kept_res, kept_mlp = keep_res.tolist(), keep_mlp.tolist()
        for pos in post_active.nonzero().flatten().tolist():
            s = scales[pos]
            post_id = add_node("resid_post", layer, pos, biases[pos])
            if kept_res[pos]:
                w = res_w[pos]
                mid_id = add_node("resid_mid", layer, pos)
                graph.edges.append(RouteEdge(mid_id, post_id, "residual", layer, w * s, w))
            if kept_mlp[pos]:
                w = mlp_w[pos]
                mlp_id = add_node("mlp", layer, pos)
                src = (
                    resid_pre_id(layer, pos) if flow.parallel else add_node("resid_mid", layer, pos)
                )
                graph.edges.append(RouteEdge(mlp_id, post_id, "mlp_out", layer, w * s, w))
                graph.edges.append(RouteEdge(src, mlp_id, "mlp_in", layer, w * s, w))
        mid_active = keep_res | (keep_mlp if not flow.parallel else torch.zeros_like(keep_mlp))
        pre_active = keep_mlp if flow.parallel else torch.zeros_like(keep_mlp)

        # -- Attention block: wholes are resid_mid[layer] of the active positions.
        edges_w = flow.attn_edges[layer]
        keep_attn = (edges_w > tau) & mid_active[:, None]  # [target, source]
        keep_res = mid_active & (flow.attn_resid[layer] > tau)
        keep_bias = mid_active & (flow.attn_bias[layer] > tau)
        kept_sum = (edges_w * keep_attn).sum(1) + flow.attn_resid[layer] * keep_res
        scale = _scales(renormalise, kept_sum + flow.attn_bias[layer] * keep_bias)
        scales, biases = scale.tolist(), flow.attn_bias[layer].tolist()
        res_w, kept_res = flow.attn_resid[layer].tolist(), keep_res.tolist()
        for pos in mid_active.nonzero().flatten().tolist():
            mid_id = add_node("resid_mid", layer, pos)
            nodes[mid_id].bias = biases[pos]
            if kept_res[pos]:
                w = res_w[pos]
                src = resid_pre_id(layer, pos)
                graph.edges.append(RouteEdge(src, mid_id, "residual", layer, w * scales[pos], w))
        pairs = keep_attn.nonzero()
        tgts, srcs = pairs[:, 0], pairs[:, 1]
        raw = edges_w[tgts, srcs]
        heads = flow.attn_heads[layer][tgts, srcs].float() * scale[tgts][:, None]
        for tgt, src, w, s, hs in zip(
            tgts.tolist(),
            srcs.tolist(),
            raw.tolist(),
            scale[tgts].tolist(),
            heads.tolist(),
            strict=True,
        ):
            kind = "self_attention" if tgt == src else "attention"
            mid_id = node_id("resid_mid", layer, tgt)
            graph.edges.append(
                RouteEdge(resid_pre_id(layer, src), mid_id, kind, layer, w * s, w, hs)
            )
        post_active = pre_active | keep_attn.any(0) | keep_res

    for pos in post_active.nonzero().flatten().tolist():
        add_node("embed", -1, pos)
    # Resid_pre nodes of layer l > 0 are resid_post nodes of layer l - 1; make sure every edge
    # end exists even when that node had no kept incoming edge of its own.
    for e in graph.edges:
        for nid in (e.source, e.target):
            if nid not in nodes:
                kind, layer, pos = parse_node_id(nid)
                add_node(kind, layer, pos)
    graph.nodes = sorted(nodes.values(), key=_node_order)
    return graph


def _scales(renormalise: bool, kept_total: torch.Tensor) -> torch.Tensor:
    if not renormalise:
        return torch.ones_like(kept_total)
    return torch.where(
        kept_total > 0, 1.0 / kept_total.clamp_min(1e-30), torch.ones_like(kept_total)
    )


def parse_node_id(nid: str) -> tuple[str, int, int]:
    """Inverse of `node_id`: (kind, layer, position)."""
    parts = nid.split("/")
    if parts[0] == "embed":
        return "embed", -1, int(parts[1])
    return parts[1], int(parts[0][1:]), int(parts[2])


def _node_order(node: RouteNode) -> tuple[int, int, int]:
    stage = {"embed": 0, "resid_mid": 1, "mlp": 2, "resid_post": 3}[node.kind]
    return (node.layer, stage, node.position)
