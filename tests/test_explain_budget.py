"""Cost control of explanations: the activation-memory bound, cancellation between passes, the
model's train/eval flags left as they were, and a clear error for unconverted models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from lmscope.explain import (
    ExplanationCancelled,
    TraceView,
    UnsupportedModelError,
    compute_flow,
    explain,
    gradient_x_input,
    integrated_gradients,
    record,
)
from lmscope.explain.budget import (
    PEAK_FACTOR,
    bytes_per_point,
    points_per_batch,
    saved_floats_per_token,
)
from lmscope.model.config import ModelConfig
from lmscope.model.presets import preset_fields
from lmscope.model.transformer import Transformer
from test_explain_support import FAMILIES, tiny_model, tokens

T = 8

# SmolLM2-135M's block shapes (2 of its 30 layers, a small vocabulary): the default model.
SMOLLM2_SHAPES = preset_fields("smollm2-135m", vocab_size=64, n_layers=2, n_ctx=64)


def saved_bytes(model: Transformer, n_points: int, n_tokens: int) -> int:
    """Bytes autograd saves for the backward pass of one batched forward (weights excluded)."""
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(n_points, n_tokens, model.cfg.d_model, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_embeds=x, last_only=True)[:, -1, 0].sum()
    return sum(seen.values())


@pytest.mark.parametrize("family", [*sorted(FAMILIES), "smollm2_shapes"])
def test_the_shape_bound_covers_what_autograd_saves(family: str) -> None:
    """The bound integrated gradients sizes its passes with holds, and is not wasteful."""
    if family == "smollm2_shapes":
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**SMOLLM2_SHAPES)).eval()  # type: ignore[arg-type]
    else:
        model = tiny_model(family, n_layers=2)
    n_tokens = 24
    measured = saved_bytes(model, 2, n_tokens) / 2
    bound = saved_floats_per_token(model.cfg) * n_tokens * 4
    assert measured <= bound
    assert measured >= 0.5 * bound


def test_points_per_batch_follows_the_budget() -> None:
    cfg = tiny_model("llama_gqa").cfg
    one = bytes_per_point(cfg, 100, torch.float32)
    assert one == int(PEAK_FACTOR * 100 * 4 * saved_floats_per_token(cfg))
    assert bytes_per_point(cfg, 100, torch.bfloat16) == one  # norms still work in float32
    assert bytes_per_point(cfg, 100, torch.float64) == pytest.approx(2 * one, abs=1)
    assert points_per_batch(cfg, 100, torch.float32, 3 * one + 1) == 3
    assert points_per_batch(cfg, 100, torch.float32, 3 * one - 1) == 2
    assert points_per_batch(cfg, 100, torch.float32, 1) == 1  # one point is always allowed
    assert points_per_batch(cfg, 100, torch.float32, 10 * one, cap=4) == 4


def test_integrated_gradients_passes_follow_the_budget() -> None:
    model = tiny_model("gpt2")
    ids = tokens(T)
    one = bytes_per_point(model.cfg, T, torch.float32)
    passes: list[int] = []
    handle = model.register_forward_hook(
        lambda m, args, kw, out: passes.append(out.shape[0]), with_kwargs=True
    )
    try:
        ig = integrated_gradients(model, ids, target=3, n_steps=10, memory_budget=4 * one)
    finally:
        handle.remove()
    assert ig.meta["batch_size"] == 4
    assert passes[:-1] == [4, 4, 2]  # then one pass scoring the input and the baseline
    capped = integrated_gradients(model, ids, target=3, n_steps=10, batch_size=3)
    assert capped.meta["batch_size"] == 3
    assert capped.scores == pytest.approx(ig.scores, abs=1e-6)


def stop_after(n_calls: int) -> tuple[Callable[[], bool], list[int]]:
    """A should_stop that says stop on its (n_calls + 1)-th call, and its call log."""
    calls: list[int] = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > n_calls

    return should_stop, calls


def test_integrated_gradients_stops_between_passes() -> None:
    model = tiny_model("llama_gqa")
    passes: list[int] = []
    handle = model.register_forward_hook(lambda *_: passes.append(1))
    should_stop, calls = stop_after(3)  # the check before starting, then two passes
    try:
        with pytest.raises(ExplanationCancelled, match="integrated gradients"):
            integrated_gradients(
                model, tokens(T), target=3, n_steps=8, batch_size=1, should_stop=should_stop
            )
    finally:
        handle.remove()
    assert len(calls) == 4 and len(passes) == 2
    assert not model.training


def test_every_stage_can_be_cancelled() -> None:
    model = tiny_model("neox_parallel")
    ids = tokens(T)
    always: Callable[[], bool] = lambda: True  # noqa: E731
    with pytest.raises(ExplanationCancelled):
        record(model, ids, should_stop=always)
    with pytest.raises(ExplanationCancelled):
        gradient_x_input(model, ids, should_stop=always)
    should_stop, calls = stop_after(2)
    with pytest.raises(ExplanationCancelled, match="flow"):
        compute_flow(model, TraceView(model, record(model, ids)), should_stop=should_stop)
    assert len(calls) == 3  # two layers done, stopped before the third
    for n_calls in range(6):  # whichever stage it lands in, explain stops with the same error
        should_stop, calls = stop_after(n_calls)
        with pytest.raises(ExplanationCancelled):
            explain(model, ids, should_stop=should_stop)
        assert len(calls) == n_calls + 1
    never, calls = stop_after(10**6)
    explain(model, ids, should_stop=never)
    assert calls  # the callable is consulted when nothing asks to stop


def cancelled_integrated_gradients(model: Transformer) -> None:
    with pytest.raises(ExplanationCancelled):
        integrated_gradients(model, tokens(T), n_steps=3, should_stop=stop_after(1)[0])


RUNS: dict[str, Callable[[Transformer], Any]] = {
    "record": lambda m: record(m, tokens(T)),
    "gradient_x_input": lambda m: gradient_x_input(m, tokens(T)),
    "integrated_gradients": lambda m: integrated_gradients(m, tokens(T), n_steps=3),
    "explain": lambda m: explain(m, tokens(T)),
    "cancelled": lambda m: cancelled_integrated_gradients(m),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("run", sorted(RUNS))
def test_explanations_leave_the_training_flags_as_they_were(run: str, training: bool) -> None:
    model = tiny_model("gpt2", dropout=0.5).train(training)
    model.blocks[1].train(not training)  # a part in the other mode (e.g. frozen) stays so
    before = [m.training for m in model.modules()]
    RUNS[run](model)
    assert [m.training for m in model.modules()] == before


def test_explanations_run_without_dropout_on_a_training_model() -> None:
    model = tiny_model("gpt2", dropout=0.5).train()
    ids = tokens(T)
    assert (
        gradient_x_input(model, ids, target=3).scores
        == gradient_x_input(model, ids, target=3).scores
    )
    assert explain(model, ids).to_dict()["routes"] == explain(model, ids).to_dict()["routes"]
    assert model.training


def test_explain_names_from_hf_for_a_hugging_face_model() -> None:
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    hf_model = transformers.LlamaForCausalLM(hf_config)
    with pytest.raises(UnsupportedModelError, match=r"lmscope\.zoo\.hf\.from_hf"):
        explain(hf_model, [1, 2, 3])
    with pytest.raises(UnsupportedModelError, match=r"got builtins\.object"):
        explain(object(), [1, 2, 3])
