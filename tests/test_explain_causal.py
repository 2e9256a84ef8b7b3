"""Interventions through forward hooks against weight surgery on a copy of the model (an
independent way to remove a component), activation patching against a hand computation of the
last layer, and the route faithfulness check."""

from __future__ import annotations

import copy

import pytest
import torch

from lmscope.explain import TraceView, compute_flow, record
from lmscope.explain.causal import (
    all_components,
    head_agreement,
    patching_head_importance,
    route_components,
    route_faithfulness,
)
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.heads import head_importance
from lmscope.explain.interventions import Component, ablation_edits, intervening, record_inputs
from test_explain_support import tiny_model, tokens

T = 8


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa", "neox_parallel"])
def model(request):  # type: ignore[no-untyped-def]
    return tiny_model(request.param)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(ids)[0]


def _surgery(model, components: list[Component], means=None):  # type: ignore[no-untyped-def]
    """A copy whose output projections no longer read the components (mean ablation: their
    mean input folded into the bias)."""
    m = copy.deepcopy(model)
    d = model.cfg.head_dim
    with torch.no_grad():
        for c in components:
            blk = m.blocks[c.layer]
            proj, cols = (
                (blk.attn.out, slice(c.index * d, (c.index + 1) * d))
                if c.kind == "head"
                else (
                    blk.mlp.fc_out,
                    slice(c.index, c.index + 1) if c.kind == "neuron" else slice(None),
                )
            )
            if means is not None:
                hook = "attn.hook_z" if c.kind == "head" else "mlp.hook_post"
                mean = means[f"blocks.{c.layer}.{hook}"][0, :, cols].mean(0)
                shift = proj.weight[:, cols] @ mean
                if proj.bias is None:
                    proj.bias = torch.nn.Parameter(torch.zeros(proj.out_features))
                proj.bias += shift
            proj.weight[:, cols] = 0.0
    return m


COMPONENTS = [
    Component("head", 0, 1),
    Component("head", 2, 3),
    Component("neuron", 1, 5),
    Component("mlp", 2),
]


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_hooked_ablation_equals_weight_surgery(model, mode: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)[None]
    clean = record_inputs(model, ids, [0, 1, 2]) if mode == "mean" else None
    with intervening(model, ablation_edits(model, COMPONENTS, mode, clean)):
        got = _logits(model, ids)
    want = _logits(_surgery(model, COMPONENTS, clean), ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, _logits(model, ids), atol=1e-3)  # it did change something
    torch.testing.assert_close(_logits(model, ids), model(ids)[0].detach())  # hooks removed


def test_recorded_head_inputs_equal_the_trace(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)[None]
    z = record_inputs(model, ids, [1])["blocks.1.attn.hook_z"]
    trace = model.run_with_trace(ids, names=["blocks.1.attn.hook_z"])
    torch.testing.assert_close(z, trace.activations["blocks.1.attn.hook_z"].flatten(2))


def test_patching_the_last_layer_matches_a_hand_computation(model) -> None:  # type: ignore[no-untyped-def]
    clean, corrupt = tokens(T, seed=1), tokens(T, seed=2)
    result = patching_head_importance(model, clean, corrupt, target=4, batch_size=5)
    last = model.cfg.n_layers - 1
    names = [
        f"blocks.{last}.attn.hook_z",
        f"blocks.{last}.hook_resid_mid",
        f"blocks.{last}.hook_resid_pre",
    ]
    tc = model.run_with_trace(clean[None], names=names).activations
    tx = model.run_with_trace(corrupt[None], names=names).activations
    d = model.cfg.head_dim
    blk = model.blocks[last]
    w = blk.attn.out.weight
    for h in range(model.cfg.n_heads):
        delta = (tc[names[0]][0, -1, h] - tx[names[0]][0, -1, h]) @ w[:, h * d : (h + 1) * d].t()
        with torch.no_grad():
            mid = tx[names[1]][0, -1] + delta  # the patched head changes resid_mid only
            mlp_in = tx[names[2]][0, -1] if model.cfg.parallel_attn_mlp else mid
            logits = model.unembed(model.ln_final(mid + blk.mlp(blk.ln2(mlp_in), None)))
        score = float(torch.log_softmax(logits.double(), -1)[4])
        gap = result.clean_score - result.corrupt_score
        assert float(result.restored[last, h]) == pytest.approx(
            (score - result.corrupt_score) / gap, abs=1e-4
        )
    one_by_one = patching_head_importance(model, clean, corrupt, target=4, batch_size=1)
    torch.testing.assert_close(one_by_one.restored, result.restored, atol=1e-5, rtol=0)
    same = patching_head_importance(model, clean, clean, target=4)
    assert same.clean_score == same.corrupt_score


def test_route_faithfulness_ablates_the_route_components(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)
    view = TraceView(model, record(model, ids))
    flow = compute_flow(model, view)
    routes = flow.routes(-1, 0.05)
    result = route_faithfulness(model, ids, routes, target=3, n_random=4, seed=1)
    on = route_components(routes)
    assert result.components == [c.label for c in on] and on
    surgery = _surgery(model, on)
    want = float(torch.log_softmax(_logits(surgery, ids[None])[-1].double(), -1)[3])
    assert result.route_drop == pytest.approx(result.clean_logprob - want, abs=1e-5)
    assert len(result.random_drops) == 4
    assert result.score == pytest.approx(result.route_drop - sum(result.random_drops) / 4)
    assert set(on) < set(all_components(model))
    rho = head_agreement(
        patching_head_importance(model, ids, tokens(T, seed=5)), head_importance(flow, -1)
    )
    assert -1.0 <= rho <= 1.0


def test_bad_interventions_are_clear_errors(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExplainInputError, match="layer 9 does not exist"):
        ablation_edits(model, [Component("head", 9, 0)])
    with pytest.raises(ExplainInputError, match="head 99 does not exist"):
        ablation_edits(model, [Component("head", 0, 99)])
    with pytest.raises(ExplainInputError, match="unknown component kind 'attn'"):
        ablation_edits(model, [Component("attn", 0, 0)])
    with pytest.raises(ExplainInputError, match="mode must be 'zero' or 'mean'"):
        ablation_edits(model, COMPONENTS, "resample")
    with pytest.raises(ExplainInputError, match="same number of tokens"):
        patching_head_importance(model, tokens(T), tokens(T + 1))
    routes = compute_flow(model, record(model, tokens(T))).routes(-1)
    with pytest.raises(ExplainInputError, match="n_random must be a positive integer"):
        route_faithfulness(model, tokens(T), routes, n_random=0)
    with pytest.raises(ExplainInputError, match="built on 8 tokens"):
        route_faithfulness(model, tokens(T + 2), routes)


def test_interventions_apply_when_the_prepacked_path_is_enabled() -> None:
    """Hooks do not run on the prepacked path: interventions set it aside, then restore it."""
    model = tiny_model("llama_gqa")
    if not model.enable_prepacked():
        pytest.skip("no oneDNN prepacking on this machine")
    ids = tokens(T)[None]
    with intervening(model, ablation_edits(model, COMPONENTS)):
        got = _logits(model, ids)
    torch.testing.assert_close(got, _logits(_surgery(model, COMPONENTS), ids), atol=1e-5, rtol=0)
    assert model.prepacked_enabled


def test_route_check_of_an_earlier_position_and_through_explain(model) -> None:  # type: ignore[no-untyped-def]
    """A route to position 4 is checked on the prompt cut after 4 (later tokens cannot matter):
    the same as building everything on the cut prompt; explain(route_check=True) reports it."""
    from lmscope.explain import explain

    ids = tokens(T)
    full = compute_flow(model, record(model, ids)).routes(4, 0.05)
    cut = compute_flow(model, record(model, ids[:5])).routes(-1, 0.05)
    a = route_faithfulness(model, ids, full, target=3, n_random=3)
    b = route_faithfulness(model, ids[:5], cut, target=3, n_random=3)
    assert a.components == b.components and a.meta["position"] == 4
    assert a.route_drop == pytest.approx(b.route_drop, abs=1e-5)
    assert a.random_drops == pytest.approx(b.random_drops, abs=1e-5)
    ex = explain(model, ids, target=4, tau=0.05, saliency=False, route_check=True)
    check = ex.to_dict()["route_check"]
    assert check["components"] == a.components and check["target"] == ex.prediction[0].token
    assert "route_check" not in explain(model, ids, saliency=False).to_dict()
    from lmscope.explain.report import report_data

    assert report_data(ex)["route_check"]["score"] == pytest.approx(check["score"])
