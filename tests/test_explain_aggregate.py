"""Data-set aggregation against per-prompt computations (one prompt at a time, unbatched),
sharding + merge against the whole, and the circuit diff of two models."""

from __future__ import annotations

import copy

import pytest
import torch

from lmscope.explain import TraceView, compute_flow, record
from lmscope.explain.aggregate import aggregate, merge
from lmscope.explain.causal import route_components
from lmscope.explain.circuit_diff import circuit_diff, heatmap_svg
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.heads import head_importance
from lmscope.explain.neurons import neuron_importances
from test_explain_support import tiny_model, tokens

PROMPTS = [tokens(6, seed=s).tolist() for s in range(4)] + [tokens(9, seed=9).tolist()]


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa"])
def model(request):  # type: ignore[no-untyped-def]
    return tiny_model(request.param)


def test_aggregate_equals_per_prompt_computation(model) -> None:  # type: ignore[no-untyped-def]
    stats = aggregate(model, PROMPTS, tau=0.05, batch_size=3)
    heads, neurons, on = [], [], []
    for p in PROMPTS:
        view = TraceView(model, record(model, p))
        flow = compute_flow(model, view)
        heads.append(head_importance(flow, -1).double())
        neurons.append(
            torch.stack(
                [neuron_importances(view, i, len(p) - 1)["neurons"] for i in range(view.n_layers)]
            ).double()
        )
        mask = torch.zeros_like(heads[-1])
        for c in route_components(flow.routes(-1, 0.05), mlps=False):
            mask[c.layer, c.index] = 1.0
        on.append(mask)
    h, n = torch.stack(heads), torch.stack(neurons)
    assert stats.n_prompts == len(PROMPTS)
    torch.testing.assert_close(stats.head_mean, h.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats.head_std, h.std(0, unbiased=False), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats.neuron_mean, n.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats.route_frequency, torch.stack(on).mean(0))
    top = stats.top_heads(3)
    assert top[0]["mean"] == pytest.approx(float(h.mean(0).max()))
    assert set(stats.to_dict()) >= {"head_mean", "head_std", "route_frequency", "top_neurons"}


def test_shards_merge_to_the_whole(model) -> None:  # type: ignore[no-untyped-def]
    whole = aggregate(model, PROMPTS)
    parts = [aggregate(model, PROMPTS, shard=(r, 2)) for r in range(2)]
    assert [p.n_prompts for p in parts] == [3, 2]
    merged = merge(parts)
    torch.testing.assert_close(merged.head_mean, whole.head_mean)
    torch.testing.assert_close(merged.neuron_std, whole.neuron_std)


def test_circuit_diff(model) -> None:  # type: ignore[no-untyped-def]
    base = aggregate(model, PROMPTS, name="base", neurons=False)
    same = circuit_diff(base, aggregate(model, PROMPTS, name="copy", neurons=False))
    assert not same.gained and not same.lost and float(same.head_delta.abs().max()) == 0.0
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.blocks[1].attn.out.weight[:, : model.cfg.head_dim] *= 3.0  # boost head L1H0
    other = aggregate(tuned, PROMPTS, name="tuned", neurons=False)
    diff = circuit_diff(base, other, k=3)
    torch.testing.assert_close(diff.head_delta, other.head_mean - base.head_mean)
    assert diff.gained[0]["component"] == "L1H0"
    assert all(r["delta"] < 0 for r in diff.lost)
    page = diff.to_html()
    assert page.count("<rect") == model.cfg.n_layers * model.cfg.n_heads and "L1H0" in page
    assert heatmap_svg(torch.zeros(2, 3)).count("<rect") == 6


def test_bad_input(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExplainInputError, match="prompt set is empty"):
        aggregate(model, [])
    with pytest.raises(ExplainInputError, match="the prompt is empty"):
        aggregate(model, [[1, 2], []])
    with pytest.raises(ExplainInputError, match="same prompt set"):
        circuit_diff(aggregate(model, PROMPTS[:2]), aggregate(model, PROMPTS[:3]))


def _ranked_aggregate(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        stats = aggregate(tiny_model("gpt2"), PROMPTS, neurons=False)
        torch.save({"mean": stats.head_mean, "n": stats.n_prompts}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_process_group_shards_and_all_reduces(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As under torchrun: two gloo ranks each take half the prompts; both return the whole."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "stats")
    mp.spawn(
        _ranked_aggregate, args=(2, f"file://{tmp_path / 'rendezvous'}", out), nprocs=2, join=True
    )
    whole = aggregate(tiny_model("gpt2"), PROMPTS, neurons=False)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert got["n"] == len(PROMPTS)
        torch.testing.assert_close(got["mean"], whole.head_mean)
