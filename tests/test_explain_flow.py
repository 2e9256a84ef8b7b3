"""Faithfulness of the contributions and the route graph, on tiny random models of every family."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch

from lmscope.explain import (
    TraceView,
    attention_decomposition,
    compute_flow,
    flow_kernel,
    mlp_decomposition,
    neuron_decomposition,
    record,
)
from lmscope.explain.errors import TargetOutOfRangeError, ThresholdError
from lmscope.explain.export import write_graphml, write_json
from lmscope.explain.flow import head_proximities
from lmscope.explain.routes import node_id, resid_pre_id
from test_explain_support import FAMILIES, tiny_model, tokens

T = 9


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def setup(request):  # type: ignore[no-untyped-def]
    model = tiny_model(request.param)
    trace = record(model, tokens(T))
    return request.param, model, trace, TraceView(model, trace)


# ---- identities: every decomposition sums to its whole -------------------------------------
def test_decompositions_sum_to_the_whole(setup) -> None:  # type: ignore[no-untyped-def]
    family, model, _, view = setup
    for layer in range(model.cfg.n_layers):
        for i in range(T):
            for dec in (
                attention_decomposition(view, layer, i),
                mlp_decomposition(view, layer, i),
                neuron_decomposition(view, layer, i),
            ):
                assert dec.sum_error() < 1e-5, (family, layer, i, dec.labels[-1])


def test_trace_stream_identities(setup) -> None:  # type: ignore[no-untyped-def]
    """resid_post = resid_mid + mlp_out for sequential and parallel blocks alike (so `record`
    need not keep resid_post: TraceView's sum is the recorded one bit for bit), and the
    parallel MLP reads resid_pre (stated decomposition)."""
    _, model, trace, view = setup
    assert not [n for n in trace.activations if n.endswith("hook_resid_post")]
    full = TraceView(model, model.run_with_trace(tokens(T)[None], names=lambda n: True))
    for layer in range(model.cfg.n_layers):
        recorded = full.get(f"blocks.{layer}.hook_resid_post")
        torch.testing.assert_close(
            full.resid_mid(layer) + full.mlp_out(layer), recorded, atol=1e-5, rtol=0
        )
        assert torch.equal(view.resid_post(layer), recorded)
    if model.cfg.parallel_attn_mlp:
        block = model.blocks[0]
        with torch.no_grad():
            expect = block.mlp(block.ln2(view.resid_pre(0)[None]), None)[0]
        torch.testing.assert_close(expect, view.mlp_out(0), atol=1e-5, rtol=0)


def test_gqa_parts_use_the_shared_kv_head() -> None:
    """GQA: query head h's part from source j is A^h_ij (v_{j, h // group} @ W_O^h)."""
    model = tiny_model("llama_gqa")
    full = model.run_with_trace(tokens(T)[None])  # default trace keeps hook_result
    view = TraceView(model, full)
    layer, group = 1, model.cfg.n_heads // model.cfg.kv_heads
    dec = attention_decomposition(view, layer, T - 1)
    parts = dec.parts[:-1].view(T, model.cfg.n_heads, -1)  # [source, head, D]
    torch.testing.assert_close(parts.sum(0), view.get(f"blocks.{layer}.attn.hook_result")[T - 1])
    w = model.blocks[layer].attn.out.weight  # [D, H*d]
    d = model.cfg.head_dim
    v = view.get(f"blocks.{layer}.attn.hook_v")
    pattern = view.pattern(layer)
    h, j = 3, 2
    expect = pattern[h, T - 1, j] * (v[j, h // group] @ w[:, h * d : (h + 1) * d].t())
    torch.testing.assert_close(parts[j, h], expect.detach(), atol=1e-6, rtol=0)


# ---- the fast proximities agree with an independent brute force -----------------------------
def _pattern_float64(acts, layer: int, cfg) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """softmax(q k^T / sqrt(d)) over the causal sources, in float64, from the raw (rotated) q, k."""
    rot = "rot_" if f"blocks.{layer}.attn.hook_rot_q" in acts else ""
    q = acts[f"blocks.{layer}.attn.hook_{rot}q"].transpose(0, 1)  # [H, T, d]
    k = acts[f"blocks.{layer}.attn.hook_{rot}k"].transpose(0, 1)  # [K, S, d]
    k = k.repeat_interleave(cfg.n_heads // cfg.kv_heads, dim=0)
    scores = q @ k.transpose(1, 2) / cfg.head_dim**0.5
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def _brute_force(model, trace, norm: str, mlp_bias: str = "in_mlp"):  # type: ignore[no-untyped-def]
    """Importances by looping over every part (float64, no vectorisation over parts), read from
    raw hooks and raw weights (not through TraceView or decompose). mlp_bias: "in_mlp" counts
    b_out in the MLP's part, "separate" makes it a part of its own."""
    cfg = model.cfg
    acts = {k: v[0].double() for k, v in trace.activations.items()}
    p = 1 if norm == "l1" else 2
    group, d = cfg.n_heads // cfg.kv_heads, cfg.head_dim

    def dist(a: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(a, ord=p))

    out_attn = torch.zeros(cfg.n_layers, T, T, cfg.n_heads, dtype=torch.float64)
    raw_attn = torch.zeros(cfg.n_layers, T, T, cfg.n_heads, dtype=torch.float64)
    out_res = torch.zeros(cfg.n_layers, T, dtype=torch.float64)
    out_mlp = torch.zeros(cfg.n_layers, T, dtype=torch.float64)
    for layer in range(cfg.n_layers):
        attn = model.blocks[layer].attn
        w = attn.out.weight.detach().double()
        b = attn.out.bias.detach().double() if attn.out.bias is not None else None
        pre = (
            acts["blocks.0.hook_resid_pre"]
            if layer == 0
            else acts[f"blocks.{layer - 1}.hook_resid_mid"]
            + acts[f"blocks.{layer - 1}.hook_mlp_out"]
        )
        mid = acts[f"blocks.{layer}.hook_resid_mid"]
        pattern = _pattern_float64(acts, layer, cfg)
        v = acts[f"blocks.{layer}.attn.hook_v"]
        for i in range(T):
            y = mid[i]
            prox: dict[tuple, float] = {}
            for j in range(i + 1):
                for h in range(cfg.n_heads):
                    part = pattern[h, i, j] * (v[j, h // group] @ w[:, h * d : (h + 1) * d].t())
                    prox[("head", j, h)] = max(dist(y) - dist(y - part), 0.0)
            prox[("res",)] = max(dist(y) - dist(y - pre[i]), 0.0)
            if b is not None:
                prox[("bias",)] = max(dist(y) - dist(y - b), 0.0)
            total = sum(prox.values())
            for key, value in prox.items():
                if key[0] == "head":
                    out_attn[layer, i, key[1], key[2]] = value / total
                    raw_attn[layer, i, key[1], key[2]] = value
            out_res[layer, i] = prox[("res",)] / total
        mlp = model.blocks[layer].mlp
        bo = mlp.fc_out.bias
        bo = bo.detach().double() if bo is not None and mlp_bias == "separate" else None
        out = acts[f"blocks.{layer}.hook_mlp_out"]
        post = mid + out  # the block's resid_post
        for i in range(T):
            y = post[i]
            m = out[i] - bo if bo is not None else out[i]
            parts = [m, mid[i]] + ([bo] if bo is not None else [])
            prox_list = [max(dist(y) - dist(y - q), 0.0) for q in parts]
            out_mlp[layer, i] = prox_list[0] / sum(prox_list)
    return out_attn, out_res, out_mlp, raw_attn


@pytest.mark.parametrize("mlp_bias", ["in_mlp", "separate"])
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_fast_proximities_match_brute_force(setup, norm: str, mlp_bias: str) -> None:  # type: ignore[no-untyped-def]
    _, model, trace, view = setup
    flow = compute_flow(model, view, norm=norm, mlp_bias=mlp_bias)  # type: ignore[arg-type]
    assert flow.meta["mlp_bias"] == mlp_bias
    attn, res, mlp, raw = _brute_force(model, trace, norm, mlp_bias)
    for layer in range(model.cfg.n_layers):  # raw proximities, relative to the whole's norm
        fast = head_proximities(
            view.resid_mid(layer),
            view.pattern(layer),
            view.values(layer),
            view.attn_weight(layer),
            norm,
        ).permute(1, 2, 0)  # [target, source, head]
        scale = float(torch.linalg.vector_norm(view.resid_mid(layer), ord=1, dim=-1).max())
        assert (fast.double() - raw[layer]).abs().max() < 1e-6 * max(1.0, scale)
    assert (flow.attn_heads.double() - attn).abs().max() < 1e-6
    assert (flow.attn_resid.double() - res).abs().max() < 1e-6
    assert (flow.mlp.double() - mlp).abs().max() < 1e-6


def _l1_direct(y: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """sum_d |y_id| - |y_id - w_ijh u_jhd| on every coordinate; w [T, S, H], u [S, H, D]."""
    parts = w[..., None] * u[None]  # [T, S, H, D]
    return (y.abs()[:, None, None] - (y[:, None, None] - parts).abs()).sum(-1).clamp(min=0.0)


def test_l1_kernel_is_exact_at_every_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    """The L1 kernel (a matrix product, then a compiled walk over the coordinates each part can
    flip, smallest |y| first) equals the direct sum over every coordinate: parts that flip
    nothing, a few, most and all coordinates, whatever the block size and thread count."""
    g = torch.Generator().manual_seed(3)
    n, kv, group, d_head, d = 12, 2, 2, 8, 384
    y = torch.randn(n, d, generator=g)
    y[0, 5] = 0.0  # an exact zero coordinate
    v = torch.randn(n, kv, d_head, generator=g) * torch.logspace(-2, 1, n)[:, None, None]
    w_o = torch.randn(kv * group, d_head, d, generator=g) / d_head**0.5
    scores = torch.randn(kv * group, n, n, generator=g) * 3
    pattern = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf")).softmax(-1)
    u = torch.einsum("jhe,heD->jhD", v.repeat_interleave(group, 1), w_o)
    ref = _l1_direct(y.double(), pattern.permute(1, 2, 0).double(), u.double())
    monkeypatch.setattr(flow_kernel, "PARALLEL_MIN_PARTS", 0)  # split even these few rows
    threads = torch.get_num_threads()
    try:
        for budget, n_threads in ((1, 1), (300, 2), (1 << 20, 3)):
            torch.set_num_threads(n_threads)
            fast = head_proximities(y, pattern, v, w_o, "l1", budget).permute(1, 2, 0)
            assert (fast.double() - ref).abs().max() < 1e-5 * ref.abs().max()
            assert (fast[torch.ones(n, n).triu(1).bool()] == 0).all()  # no future sources
    finally:
        torch.set_num_threads(threads)
    # how many coordinates each part can flip: none, a few, most, every one
    reach = pattern.permute(1, 2, 0) * u.abs().amax(-1)  # [T, S, H]
    visited = (y.abs()[:, None, None, :] < reach[..., None]).sum(-1)[pattern.permute(1, 2, 0) > 0]
    assert visited.min() == 0 and visited.max() == d
    assert ((visited > 0) & (visited < 16)).any() and ((visited > d // 2) & (visited < d)).any()


def _old_l1_kernel(y: torch.Tensor, w: torch.Tensor, u: torch.Tensor, k: int) -> torch.Tensor:
    """The kernel before the bucketed one (kept as a reference): the k smallest |y| of each target
    elementwise, a linear term sign(y) . u on the rest, and every coordinate for the parts whose
    reach a max|u| exceeds the (k+1)-th smallest |y|. w [T, S, H], u [S, H, D]."""
    n_tok, n_heads, _ = u.shape
    sorted_abs, order = y.abs().sort(-1)
    small = order[:, :k]
    sign_out = torch.where(y >= 0, 1.0, -1.0).scatter(1, small, 0.0)
    prox = torch.einsum("iD,jhD->ijh", sign_out, u) * w + sorted_abs[:, :k].sum(-1)[:, None, None]
    picked = (
        u[None]
        .expand(n_tok, -1, -1, -1)
        .gather(3, small[:, None, None, :].expand(-1, n_tok, n_heads, -1))
    )  # [T, S, H, k]
    prox -= (w[..., None] * picked - y.gather(1, small)[:, None, None]).abs().sum(-1)
    big = w * u.abs().amax(-1) > sorted_abs[:, k, None, None]
    prox[big] = _l1_direct(y, w, u)[big]
    return prox.masked_fill(w == 0, 0.0).clamp(min=0.0)


def test_fast_kernel_equals_the_old_one_on_every_family(setup) -> None:  # type: ignore[no-untyped-def]
    """Same proximities as the kernel this one replaced, layer by layer, on every tiny family."""
    _, model, _, view = setup
    for layer in range(model.cfg.n_layers):
        y, pattern = view.resid_mid(layer), view.pattern(layer)
        new = head_proximities(y, pattern, view.values(layer), view.attn_weight(layer))
        w, u = pattern.permute(1, 2, 0), view.head_vectors(layer)
        for k in (1, 4, model.cfg.d_model // 4):
            old = _old_l1_kernel(y, w, u, k)
            assert (new.permute(1, 2, 0) - old).abs().max() < 1e-5 * max(1.0, float(old.max()))


@pytest.mark.parametrize("one_call", [1 << 21, 0])  # all heads at once / one kv head at a time
def test_recomputed_patterns_are_the_recorded_ones(setup, one_call: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`record` keeps q and k, not the patterns (nor the MLP hidden activations); TraceView
    recomputes them bit for bit, for every row of a batch too, in one call or per kv head."""
    from lmscope.explain import trace as trace_module

    monkeypatch.setattr(trace_module, "ONE_CALL_PATTERN", one_call)
    _, model, trace, _ = setup
    assert not [n for n in trace.activations if n.endswith("hook_pattern")]
    ids = torch.stack([tokens(T), tokens(T, seed=2)])
    full = model.run_with_trace(ids, names=lambda n: True)
    lean = model.run_with_trace(ids, names=lambda n: not n.endswith(("hook_pattern", "hook_post")))
    for row in (0, 1):
        for layer in range(model.cfg.n_layers):
            recorded = full[f"blocks.{layer}.attn.hook_pattern"][row]
            assert torch.equal(TraceView(model, lean, row).pattern(layer), recorded)
            assert torch.equal(TraceView(model, full, row).pattern(layer), recorded)
            hidden = full[f"blocks.{layer}.mlp.hook_post"][row]  # neither kept by `record`
            assert torch.equal(TraceView(model, lean, row).mlp_hidden(layer), hidden)


@pytest.mark.parametrize("mlp_bias", ["in_mlp", "separate"])
def test_shares_sum_to_one_and_chunking_changes_nothing(setup, mlp_bias: str) -> None:  # type: ignore[no-untyped-def]
    _, model, _, view = setup
    flow = compute_flow(model, view, mlp_bias=mlp_bias)  # type: ignore[arg-type]
    if mlp_bias == "in_mlp" or model.cfg.mlp_bias is False:
        assert (flow.mlp_bias == 0).all()  # no part of its own
    else:
        assert (flow.mlp_bias > 0).any()
    attn_total = flow.attn_heads.sum((2, 3)) + flow.attn_resid + flow.attn_bias
    torch.testing.assert_close(attn_total, torch.ones_like(attn_total))
    torch.testing.assert_close(flow.mlp + flow.mlp_resid + flow.mlp_bias, torch.ones_like(flow.mlp))
    assert (flow.attn_heads[:, torch.ones(T, T).triu(1).bool()] == 0).all()  # no future sources
    tiny_chunks = compute_flow(model, view, chunk_elements=100, mlp_bias=mlp_bias)  # type: ignore[arg-type]
    torch.testing.assert_close(tiny_chunks.attn_heads, flow.attn_heads, atol=1e-6, rtol=0)
    half = compute_flow(model, view, head_dtype=torch.float16)
    assert half.attn_heads.dtype == torch.float16
    assert (half.attn_heads.float() - flow.attn_heads).abs().max() < 1e-3


@pytest.mark.parametrize("mlp_bias", ["in_mlp", "separate"])
def test_flow_matches_the_explicit_decomposition(setup, mlp_bias: str) -> None:  # type: ignore[no-untyped-def]
    _, model, _, view = setup
    flow = compute_flow(model, view, mlp_bias=mlp_bias)  # type: ignore[arg-type]
    for layer in range(model.cfg.n_layers):
        i = T - 2
        imp = attention_decomposition(view, layer, i).importances()
        heads = imp[: (i + 1) * model.cfg.n_heads].view(i + 1, -1)
        torch.testing.assert_close(heads, flow.attn_heads[layer, i, : i + 1], atol=1e-6, rtol=0)
        dec = mlp_decomposition(view, layer, i, mlp_bias)
        assert dec.sum_error() < 1e-5
        assert len(dec.labels) == (3 if mlp_bias == "separate" and model.cfg.mlp_bias else 2)
        assert abs(float(dec.importances()[0] - flow.mlp[layer, i])) < 1e-6


def test_mlp_bias_convention_keeps_mlp_nodes_a_large_bias_would_drop() -> None:
    """With a large b_out, "separate" gives the bias the MLP block's share and the MLP node
    falls out of the routes; the paper's convention ("in_mlp", the default) keeps it."""
    model = tiny_model("gpt2")
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.fc_out.bias.mul_(40.0)
    view = TraceView(model, record(model, tokens(T)))
    default = compute_flow(model, view)
    apart = compute_flow(model, view, mlp_bias="separate")
    assert (default.mlp > apart.mlp).all()
    kinds = {n.kind for n in default.routes(-1, 0.04).nodes}
    assert "mlp" in kinds
    assert "mlp" not in {n.kind for n in apart.routes(-1, 0.04).nodes}


def test_unknown_mlp_bias_convention_is_a_clear_error(setup) -> None:  # type: ignore[no-untyped-def]
    from lmscope.explain.errors import ExplainInputError

    _, model, _, view = setup
    with pytest.raises(ExplainInputError, match="mlp_bias must be 'in_mlp'"):
        compute_flow(model, view, mlp_bias="paper")  # type: ignore[arg-type]


# ---- the route graph -------------------------------------------------------------------------
def _reference_routes(flow, targets: list[int], tau: float) -> tuple[set[str], set[tuple]]:  # type: ignore[no-untyped-def]
    """All edges above tau in one networkx graph, then the ancestors of the targets."""
    g = nx.MultiDiGraph()
    n_layers = flow.n_layers
    for layer in range(n_layers):
        for i in range(T):
            mid, post = node_id("resid_mid", layer, i), node_id("resid_post", layer, i)
            mlp = node_id("mlp", layer, i)
            for j in range(i + 1):
                if flow.attn_edges[layer, i, j] > tau:
                    kind = "self_attention" if i == j else "attention"
                    g.add_edge(resid_pre_id(layer, j), mid, key=kind)
            if flow.attn_resid[layer, i] > tau:
                g.add_edge(resid_pre_id(layer, i), mid, key="residual")
            if flow.mlp_resid[layer, i] > tau:
                g.add_edge(mid, post, key="residual")
            if flow.mlp[layer, i] > tau:
                g.add_edge(mlp, post, key="mlp_out")
                src = resid_pre_id(layer, i) if flow.parallel else mid
                g.add_edge(src, mlp, key="mlp_in")
    starts = [node_id("resid_post", n_layers - 1, t) for t in targets]
    keep = set(starts)
    for s in starts:
        if s in g:
            keep |= nx.ancestors(g, s)
    edges = {(u, v, k) for u, v, k in g.edges(keys=True) if u in keep and v in keep}
    return keep, edges


@pytest.mark.parametrize("tau", [0.0, 0.02, 0.05, 0.2])
def test_routes_are_the_reachable_subgraph(setup, tau: float) -> None:  # type: ignore[no-untyped-def]
    _, model, _, view = setup
    flow = compute_flow(model, view)
    for targets in ([T - 1], [3], [1, 5], None):
        wanted = list(range(T)) if targets is None else targets
        routes = flow.routes(targets, tau)
        nodes, edges = _reference_routes(flow, wanted, tau)
        assert routes.node_ids() == nodes
        assert {(e.source, e.target, e.kind) for e in routes.edges} == edges
        assert all(e.weight > tau for e in routes.edges)


def test_route_edges_keep_residual_and_self_attention_apart(setup) -> None:  # type: ignore[no-untyped-def]
    _, model, _, view = setup
    flow = compute_flow(model, view)
    routes = flow.routes(None, 0.0)
    g = routes.to_networkx()
    pre, mid = resid_pre_id(1, 4), node_id("resid_mid", 1, 4)
    assert set(g[pre][mid]) == {"residual", "self_attention"}
    self_edge = routes.edge(pre, mid, "self_attention")
    assert self_edge is not None and self_edge.heads is not None
    assert len(self_edge.heads) == model.cfg.n_heads
    assert abs(sum(self_edge.heads) - self_edge.weight) < 1e-5
    assert abs(self_edge.weight - float(flow.attn_edges[1, 4, 4])) < 1e-6


def test_renormalised_mode_keeps_edges_and_rescales_weights(setup) -> None:  # type: ignore[no-untyped-def]
    _, model, _, view = setup
    flow = compute_flow(model, view)
    for tau in (0.0, 0.03, 0.1):
        raw = flow.routes(None, tau)
        ren = flow.routes(None, tau, renormalise=True)
        assert {(e.source, e.target, e.kind) for e in raw.edges} == {
            (e.source, e.target, e.kind) for e in ren.edges
        }
        for e in raw.edges:
            assert e.weight == e.raw
        kept: dict[str, list] = {}
        for e in ren.edges:
            if e.kind != "mlp_in":  # mlp_in repeats the MLP's weight in resid_post
                kept.setdefault(e.target, []).append(e)
        for node in ren.nodes:
            if node.id not in kept or node.kind == "mlp":
                continue
            edges = kept[node.id]
            scale = edges[0].weight / edges[0].raw
            assert all(abs(e.weight - e.raw * scale) < 1e-6 for e in edges)
            bias = flow.attn_bias if node.kind == "resid_mid" else flow.mlp_bias
            b = float(bias[node.layer, node.position])
            kept_bias = b if b > tau else 0.0
            # the kept edges plus the kept bias, rescaled, sum to one
            assert abs(sum(e.weight for e in edges) + kept_bias * scale - 1.0) < 1e-5


def test_route_errors() -> None:
    model = tiny_model("gpt2")
    flow = compute_flow(model, record(model, tokens(T)))
    with pytest.raises(TargetOutOfRangeError, match="out of range"):
        flow.routes(T)
    with pytest.raises(TargetOutOfRangeError):
        flow.routes(-T - 1)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ThresholdError, match=r"\[0, 1\]"):
            flow.routes(-1, bad)
    assert isinstance(ThresholdError("x"), ValueError)
    assert flow.routes(-1, 1.0).edges == []


def test_json_and_graphml_export(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, model, _, view = setup
    flow = compute_flow(model, view, token_strs=[f"t{i}" for i in range(T)])
    routes = flow.routes(-1, 0.01)
    data = json.loads(write_json(routes, tmp_path / "g.json").read_text())
    g = nx.node_link_graph(data, edges="links")
    assert g.is_multigraph() and g.is_directed()
    assert g.number_of_nodes() == len(routes.nodes)
    assert g.number_of_edges() == len(routes.edges)
    assert data["graph"]["tau"] == 0.01
    node = data["nodes"][0]
    assert {"id", "kind", "layer", "position", "token", "hook"} <= set(node)
    gm = nx.read_graphml(write_graphml(routes, tmp_path / "g.graphml"))
    assert gm.number_of_nodes() == len(routes.nodes)
    assert gm.number_of_edges() == len(routes.edges)
    attn = [d for _, _, d in gm.edges(data=True) if d["kind"] in ("attention", "self_attention")]
    if attn:
        assert len(attn[0]["heads"].split(",")) == model.cfg.n_heads


def test_the_kernel_compiles_where_nothing_can_be_cached() -> None:
    """numba refuses cache=True when no directory can hold the cache (here: code with no file,
    as in a read-only install and home); the kernel is then compiled without one."""
    from numba.core.dispatcher import Dispatcher

    namespace: dict[str, object] = {}
    exec("def twice(x):\n    return 2 * x\n", namespace)  # no source file: no cache locator
    twice = flow_kernel.compiled(namespace["twice"])
    assert isinstance(twice, Dispatcher) and twice(21) == 42
