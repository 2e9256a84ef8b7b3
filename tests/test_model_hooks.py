"""Hook points: reading changes nothing (bit for bit), replacing works as weight surgery on a
copy of the model would, patching a whole stream reproduces the clean run, and mistakes (an
unknown hook, a wrong shape) are one clear error."""

from __future__ import annotations

import copy

import pytest
import torch

from lmscope.model.hooks import (
    HookError,
    HookPoint,
    ablate_block,
    ablate_head,
    ablate_neuron,
    cache_activations,
    hook_names,
    patch,
)
from test_explain_support import tiny_model, tokens

T = 8


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa", "neox_parallel"])
def model(request):  # type: ignore[no-untyped-def]
    return tiny_model(request.param)


def _logits(model, ids, hooks=()):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model.run_with_hooks(ids, list(hooks))


def test_hook_names_are_the_hook_point_modules(model) -> None:  # type: ignore[no-untyped-def]
    modules = [n for n, m in model.named_modules() if isinstance(m, HookPoint)]
    assert sorted(modules) == sorted(hook_names(model.cfg))
    assert not any("hook" in k for k in model.state_dict())  # no parameters, no buffers


def test_reading_hooks_change_nothing_and_see_the_trace(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)[None]
    seen = cache_activations(model, ids, hook_names(model.cfg))
    with torch.no_grad():
        plain = model(ids)
    assert torch.equal(_logits(model, ids, [(n, lambda x, _n: None) for n in seen]), plain)
    trace = model.run_with_trace(ids)
    assert torch.equal(trace.logits, plain)
    for name, value in seen.items():
        torch.testing.assert_close(value, trace[name], atol=0, rtol=0)


def _surgery(model, edit):  # type: ignore[no-untyped-def]
    m = copy.deepcopy(model)
    with torch.no_grad():
        edit(m)
    return m


def test_ablations_equal_weight_surgery(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)[None]
    d = model.cfg.head_dim
    cases = [
        (ablate_head(1, 2), lambda m: m.blocks[1].attn.out.weight[:, 2 * d : 3 * d].zero_()),
        (ablate_neuron(0, 7), lambda m: m.blocks[0].mlp.fc_out.weight[:, 7].zero_()),
        (
            ablate_block(2, "mlp"),
            lambda m: (
                m.blocks[2].mlp.fc_out.weight.zero_(),
                m.blocks[2].mlp.fc_out.bias is not None and m.blocks[2].mlp.fc_out.bias.zero_(),
            ),
        ),
    ]
    for hook, edit in cases:
        got = _logits(model, ids, [hook])
        want = _logits(_surgery(model, edit), ids)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert not torch.allclose(got, _logits(model, ids), atol=1e-4)


def test_patching_the_whole_stream_gives_the_clean_run(model) -> None:  # type: ignore[no-untyped-def]
    clean, corrupt = tokens(T, seed=1)[None], tokens(T, seed=2)[None]
    last = model.cfg.n_layers - 1
    for name in ("hook_embed", f"blocks.{last}.hook_resid_post"):
        cached = cache_activations(model, clean, [name])[name]
        torch.testing.assert_close(
            _logits(model, corrupt, [patch(name, cached)]), _logits(model, clean), atol=1e-5, rtol=0
        )
    # Patching only the last position of the last residual: only that row of logits changes.
    cached = cache_activations(model, clean, [f"blocks.{last}.hook_resid_post"])
    got = _logits(
        model, corrupt, [patch(f"blocks.{last}.hook_resid_post", *cached.values(), [T - 1])]
    )
    torch.testing.assert_close(got[:, -1], _logits(model, clean)[:, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[:, :-1], _logits(model, corrupt)[:, :-1], atol=0, rtol=0)


def test_hooks_apply_on_a_prepacked_model() -> None:
    model = tiny_model("llama_gqa")
    ids = tokens(T)[None]
    before = _logits(model, ids, [ablate_head(0, 1)])
    if not model.enable_prepacked():
        pytest.skip("no oneDNN prepacking here")
    torch.testing.assert_close(_logits(model, ids, [ablate_head(0, 1)]), before, atol=1e-5, rtol=0)
    assert model.prepacked_enabled


def test_mistakes_are_clear_errors(model) -> None:  # type: ignore[no-untyped-def]
    ids = tokens(T)[None]
    with pytest.raises(
        HookError, match=r"unknown hook 'blocks.0.hook_q'; valid hooks are hook_embed"
    ):
        _logits(model, ids, [("blocks.0.hook_q", lambda x, n: None)])
    with pytest.raises(HookError, match=r"unknown hook 'blocks\.99\.hook_resid_pre'"):
        _logits(model, ids, [("blocks.99.hook_resid_pre", lambda x, n: None)])
    with pytest.raises(HookError, match=r"returned \(3,\) but the activation has shape"):
        _logits(model, ids, [("blocks.0.hook_resid_mid", lambda x, n: torch.zeros(3))])
    short = cache_activations(model, tokens(T - 2)[None], ["blocks.0.hook_resid_mid"])
    with pytest.raises(HookError, match="patch between prompts of the same length"):
        _logits(model, ids, [patch("blocks.0.hook_resid_mid", *short.values())])
    with pytest.raises(HookError, match="head 99 does not exist"):
        _logits(model, ids, [ablate_head(0, 99)])
    assert not any(m._forward_hooks for m in model.modules())  # removed after a failure
