"""Vocabulary projection, heads and neurons on tiny random models of every family."""

from __future__ import annotations

import pytest
import torch

from lmscope.explain import (
    TraceView,
    attention_pattern,
    compute_flow,
    head_contribution_map,
    head_contributions,
    lens_logits,
    lens_table,
    logit_lens,
    neuron_decomposition,
    promoted_by_block,
    promoted_by_head,
    promoted_by_neuron,
    record,
    top_heads,
    top_neurons,
    trajectory,
)
from lmscope.explain.errors import ExplainInputError, TargetOutOfRangeError
from lmscope.explain.lens import head_output, lens_nodes, promotions_at, update_logits
from lmscope.explain.neurons import neuron_importances
from test_explain_support import FAMILIES, tiny_model, tokens

T = 8


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def setup(request):  # type: ignore[no-untyped-def]
    model = tiny_model(request.param)
    full = model.run_with_trace(tokens(T)[None])  # the default trace: every hook
    return model, full, TraceView(model, full)


def test_last_residual_through_final_norm_is_exactly_the_logits(setup) -> None:  # type: ignore[no-untyped-def]
    model, full, view = setup
    last = f"L{model.cfg.n_layers - 1}/resid_post"
    assert torch.equal(lens_logits(model, view, last), full.logits[0])
    # per position (a different matmul shape): equal to float rounding
    torch.testing.assert_close(
        lens_logits(model, view, last, positions=[2, T - 1]), full.logits[0, [2, T - 1]]
    )
    # and the plain forward pass agrees with the trace
    with torch.no_grad():
        torch.testing.assert_close(model(full.tokens), full.logits, atol=1e-5, rtol=0)


def test_lens_without_final_norm_is_the_raw_unembedding(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, view = setup
    x = view.resid_mid(1)
    with torch.no_grad():
        expect = model.unembed(x[None])[0]
    assert torch.equal(lens_logits(model, view, "L1/resid_mid", final_norm=False), expect)
    torch.testing.assert_close(
        lens_logits(model, view, "embed", final_norm=True)[3],
        model.unembed(model.ln_final(view.resid_pre(0)[3])).detach(),
    )


def test_lens_table_ranks_and_rank_changes(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, view = setup
    rows = lens_table(model, view, position=5, k=4)
    nodes = lens_nodes(model.cfg.n_layers)
    assert len(rows) == len(nodes) == 2 * model.cfg.n_layers + 1
    assert rows[0].previous is None and rows[0].node == "embed"
    for n, row in enumerate(rows):
        kind, layer = nodes[n]
        logits = model.unembed(model.ln_final(view.residual(kind, layer)[5])).detach()
        probs = torch.softmax(logits, -1)
        order = logits.argsort(descending=True)
        assert [t.token for t in row.top] == order[:4].tolist()
        assert [t.rank for t in row.top] == [0, 1, 2, 3]
        assert row.top[0].prob == pytest.approx(float(probs[order[0]]), abs=1e-6)
        entropy = float(-(probs * probs.log()).sum())
        assert row.entropy == pytest.approx(entropy, abs=1e-4)
        if n:
            pk, pl = nodes[n - 1]
            prev = model.unembed(model.ln_final(view.residual(pk, pl)[5])).detach()
            for t in row.top:
                assert t.prev_rank == int((prev > prev[t.token]).sum())
    single = logit_lens(model, view, "L1/resid_post", position=5, k=4)
    assert single.to_dict() == rows[4].to_dict()


def test_trajectory(setup) -> None:  # type: ignore[no-untyped-def]
    model, full, view = setup
    traj = trajectory(model, view, position=-1)
    assert traj.token == int(full.logits[0, -1].argmax())
    assert traj.ranks[-1] == 0
    probs = torch.softmax(full.logits[0, -1].double(), -1)
    assert traj.probs[-1] == pytest.approx(float(probs[traj.token]), abs=1e-6)
    assert len(traj.ranks) == len(traj.probs) == len(traj.entropies) == len(traj.nodes)
    other = trajectory(model, view, position=2, token=5)
    assert other.token == 5 and other.position == 2


def test_direct_logit_attribution_adds_up(setup) -> None:  # type: ignore[no-untyped-def]
    """The linearised final norm is exact for the final position: the update logits of the
    embeddings and every block update, plus the norm bias and unembedding bias, are the logits."""
    model, full, view = setup
    pos = T - 1
    ref = view.resid_post(model.cfg.n_layers - 1)[pos]
    vectors = [view.resid_pre(0)[pos]]
    for layer in range(model.cfg.n_layers):
        vectors += [
            view.resid_mid(layer)[pos] - view.resid_pre(layer)[pos],
            view.mlp_out(layer)[pos],
        ]
    total = update_logits(model, torch.stack(vectors), ref.expand(len(vectors), -1)).sum(0)
    bias = getattr(model.ln_final, "bias", None)
    if bias is not None:
        total = total + model.unembed.weight.detach() @ bias.detach()
    if model.unembed.bias is not None:
        total = total + model.unembed.bias.detach()
    torch.testing.assert_close(total, full.logits[0, pos], atol=1e-4, rtol=1e-4)


def test_promotions(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, view = setup
    # head output == hook_result (per-head output without bias)
    torch.testing.assert_close(
        head_output(view, 1, 2, 4), view.get("blocks.1.attn.hook_result")[4, 2], atol=1e-6, rtol=0
    )
    p = promoted_by_head(model, view, 1, 2, position=4, k=3)
    ref = view.resid_post(model.cfg.n_layers - 1)[4]
    logits = update_logits(model, head_output(view, 1, 2, 4), ref)
    assert [t.token for t in p.promoted] == logits.topk(3).indices.tolist()
    assert [t.token for t in p.suppressed] == (-logits).topk(3).indices.tolist()
    assert p.promoted[0].logit >= p.promoted[-1].logit >= p.suppressed[-1].logit
    block = promoted_by_block(model, view, "mlp", 0, position=4, k=3)
    batch = {b.source: b for b in promotions_at(model, view, 4, [(1, 2)], k=3)}
    assert batch["L0/mlp"].to_dict() == block.to_dict()
    assert [t.token for t in batch["L1H2"].promoted] == [t.token for t in p.promoted]
    neuron = promoted_by_neuron(model, view, 1, 7, k=3)
    row = update_logits(model, model.blocks[1].mlp.W_out[7].detach())
    assert [t.token for t in neuron.promoted] == row.topk(3).indices.tolist()
    with pytest.raises(ExplainInputError):
        promoted_by_block(model, view, "ffn", 0)
    with pytest.raises(ExplainInputError):
        promoted_by_neuron(model, view, 0, 10_000)


def test_heads(setup) -> None:  # type: ignore[no-untyped-def]
    model, full, view = setup
    flow = compute_flow(model, view)
    hc = head_contributions(flow, 2, 6, 3)
    assert len(hc.weights) == model.cfg.n_heads
    assert hc.edge_weight == pytest.approx(float(flow.attn_edges[2, 6, 3]), abs=1e-6)
    assert hc.to_dict()["heads"]["L2H0"] == pytest.approx(hc.weights[0], abs=1e-6)
    cmap = head_contribution_map(flow, 1, 3)
    assert cmap.tensor().shape == (T, T)
    assert torch.equal(cmap.tensor(), flow.attn_heads[1, :, :, 3])
    pattern = attention_pattern(view, 1, 3)
    assert torch.equal(pattern.tensor(), full["blocks.1.attn.hook_pattern"][0, 3])
    torch.testing.assert_close(pattern.tensor().sum(-1), torch.ones(T))
    tops = top_heads(flow, -1, k=3)
    assert len(tops) == 3 and tops[0][1] >= tops[1][1] >= tops[2][1]
    with pytest.raises(ExplainInputError, match="head"):
        head_contribution_map(flow, 0, model.cfg.n_heads)
    with pytest.raises(ExplainInputError, match="layer"):
        attention_pattern(view, model.cfg.n_layers, 0)
    with pytest.raises(TargetOutOfRangeError):
        head_contributions(flow, 0, T, 0)


def test_neurons_match_the_explicit_decomposition(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, view = setup
    for norm in ("l1", "l2"):
        top = top_neurons(view, 1, position=5, k=6, norm=norm)
        dec = neuron_decomposition(view, 1, 5)
        imp = dec.importances(norm)
        m = model.cfg.mlp_dim
        expect = imp[:m].topk(6)
        assert [n.neuron for n in top.neurons] == expect.indices.tolist()
        for n, v in zip(top.neurons, expect.values.tolist(), strict=True):
            assert n.importance == pytest.approx(v, abs=1e-6)
        assert top.residual == pytest.approx(float(imp[m]), abs=1e-6)
        assert top.to_dict()["neurons"][0]["label"] == f"L1N{top.neurons[0].neuron}"


def test_neuron_importances_match_a_float64_brute_force(setup) -> None:  # type: ignore[no-untyped-def]
    """Every neuron's share, the residual's and the bias's, from the definition in float64:
    prox = max(||y|| - ||y - part||, 0) with y = resid_post, one norm difference per part."""
    model, full, view = setup
    layer, pos = 1, 5
    mlp = model.blocks[layer].mlp
    whole = full[f"blocks.{layer}.hook_resid_post"][0, pos].double()
    hidden = full[f"blocks.{layer}.mlp.hook_post"][0, pos].double()
    w_out = mlp.fc_out.weight.detach().double()  # [D, M]
    parts = [hidden[k] * w_out[:, k] for k in range(hidden.numel())]
    parts.append(full[f"blocks.{layer}.hook_resid_mid"][0, pos].double())
    if mlp.fc_out.bias is not None:
        parts.append(mlp.fc_out.bias.detach().double())
    for order, norm in ((1, "l1"), (2, "l2")):
        size = float(torch.linalg.vector_norm(whole, order))
        prox = [max(size - float(torch.linalg.vector_norm(whole - p, order)), 0.0) for p in parts]
        shares = [v / sum(prox) for v in prox]
        got = neuron_importances(view, layer, pos, norm)
        m = hidden.numel()
        assert got["neurons"].tolist() == pytest.approx(shares[:m], abs=2e-6)
        assert float(got["residual"]) == pytest.approx(shares[m], abs=2e-6)
        bias = shares[m + 1] if len(shares) > m + 1 else 0.0
        assert float(got["bias"]) == pytest.approx(bias, abs=2e-6)
        top = top_neurons(view, layer, position=pos, k=3, norm=norm)
        best = sorted(range(m), key=lambda k: -shares[k])[:3]
        assert [n.neuron for n in top.neurons] == best


def test_lens_and_heads_on_a_lean_trace() -> None:
    """`record` keeps only what the explainers read, and they all work from it."""
    model = tiny_model("llama_gqa")
    trace = record(model, tokens(T))
    assert "blocks.0.attn.hook_result" not in trace and "blocks.1.hook_resid_pre" not in trace
    # RoPE: the rotated q, k and a copy of v are kept, not the q/k/v projection they viewed
    assert "blocks.0.attn.hook_q" not in trace and "blocks.0.attn.hook_rot_q" in trace
    assert trace["blocks.0.attn.hook_v"].is_contiguous()
    view = TraceView(model, trace)
    assert torch.equal(view.resid_pre(1), view.resid_post(0))
    assert torch.equal(lens_logits(model, view, "L2/resid_post"), trace.logits[0])
    assert top_neurons(view, 0, k=2).neurons
    kept = TraceView(model, record(model, tokens(T), neurons=True))  # hidden activations kept
    assert "blocks.0.mlp.hook_post" not in trace  # the default recomputes them
    lean, full = top_neurons(view, 0, k=2).neurons, top_neurons(kept, 0, k=2).neurons
    assert [n.neuron for n in lean] == [n.neuron for n in full]  # one row recomputed alone:
    for a, b in zip(lean, full, strict=True):  # equal up to float rounding
        assert (a.activation, a.importance) == pytest.approx((b.activation, b.importance), rel=1e-5)
    for layer in range(model.cfg.n_layers):  # single rows of a lean trace equal the full ones
        for position in (0, 3, T - 1, -1):
            for kind in ("embed", "resid_mid", "resid_post"):
                full = view.residual(kind, layer)[position]  # type: ignore[arg-type]
                assert torch.equal(view.residual(kind, layer, position), full)  # type: ignore[arg-type]
            torch.testing.assert_close(
                view.mlp_hidden(layer, position), view.mlp_hidden(layer)[position]
            )
            row = view.pattern(layer, position)
            torch.testing.assert_close(row, view.pattern(layer)[:, position])
            assert (row[:, position % T + 1 :] == 0).all()  # no future keys
    with pytest.raises(ExplainInputError):
        logit_lens(model, view, "L1/mlp")
