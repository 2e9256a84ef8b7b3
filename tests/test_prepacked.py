"""The prepacked CPU inference path against the reference path, for every architecture option."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from lmscope.engine import SamplingParams, generate_batch
from lmscope.model.transformer import Transformer
from test_generate_fixtures import tiny_tokenizer
from test_model import FAMILIES, make_model

pytestmark = pytest.mark.skipif(
    not make_model().enable_prepacked(), reason="oneDNN is not available in this torch build"
)


def pair(family: str, **overrides: object) -> tuple[Transformer, Transformer]:
    """(reference, fast) copies of one model with non-trivial norms and biases."""
    reference = make_model(**{**FAMILIES[family], **overrides})
    fast = copy.deepcopy(reference)
    assert fast.enable_prepacked()
    return reference, fast


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_full_sequence_logits_match_the_reference(family: str) -> None:
    reference, fast = pair(family)
    tokens = torch.randint(0, 101, (2, 23))
    with torch.inference_mode():
        want, got = reference(tokens), fast(tokens)
        last = fast(tokens, last_only=True)
    assert fast.prepacked_enabled
    assert (want - got).abs().max().item() < 1e-4
    assert torch.equal(last, got[:, -1:])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_decoding_with_left_padding_matches_the_reference(family: str) -> None:
    reference, fast = pair(family)
    tokens = torch.randint(0, 101, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0  # row 1 is left-padded
    steps = torch.randint(0, 101, (2, 5))
    outputs = []
    for model in (reference, fast):
        cache = model.new_cache(2, 16)
        seen = mask
        with torch.no_grad():
            logits = [model(tokens, attention_mask=seen, cache=cache, last_only=True)]
            for i in range(steps.shape[1]):
                seen = torch.cat([seen, torch.ones(2, 1, dtype=torch.long)], dim=1)
                logits.append(model(steps[:, i : i + 1], attention_mask=seen, cache=cache))
        outputs.append(torch.cat(logits, dim=1))
    assert (outputs[0] - outputs[1]).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gpt2", "tiny-neox"])
def test_slot_cache_decoding_matches_the_reference(family: str) -> None:
    reference, fast = pair(family)
    prompts = [torch.randint(0, 101, (1, n)) for n in (3, 7, 5)]
    results = []
    for model in (reference, fast):
        slots = model.new_slot_cache(4, 20)
        with torch.no_grad():
            for prompt in prompts:
                single = model.new_cache(1, 20)
                model(prompt, cache=single)
                slots.insert(single)
            nxt = torch.tensor([[1], [2], [3]])
            steps = [model(nxt, cache=slots) for _ in range(4)]
            slots.remove(0)  # the last row moves into slot 0
            steps.append(model(torch.tensor([[4], [5]]), cache=slots))
        results.append(steps)
    for want, got in zip(*results, strict=True):
        assert (want - got).abs().max().item() < 1e-4


def test_greedy_generation_is_unchanged_on_a_real_tokenizer() -> None:
    tok = tiny_tokenizer()
    reference = make_model(vocab_size=len(tok), **FAMILIES["tiny-llama"])
    fast = copy.deepcopy(reference)
    fast.enable_prepacked()
    prompts = ["The quick brown", "A", "Once upon a time there"]
    params = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    want = generate_batch(reference, tok, prompts, params, eos_token_ids=())
    got = generate_batch(fast, tok, prompts, params, eos_token_ids=())
    assert [r.token_ids for r in got] == [r.token_ids for r in want]


def test_autograd_training_mode_and_changed_weights_use_the_reference_path() -> None:
    reference, fast = pair("tiny-llama")
    tokens = torch.randint(0, 101, (1, 6))
    logits = fast(tokens)  # autograd on: the reference path, which can be differentiated
    assert logits.requires_grad
    torch.testing.assert_close(logits, reference(tokens), rtol=0, atol=0)
    fast.train()
    with torch.no_grad():
        assert fast.prepacked_enabled
        torch.testing.assert_close(fast(tokens), reference.train()(tokens), rtol=0, atol=0)
    fast.eval()
    reference.eval()
    with torch.no_grad():
        for model in (reference, fast):
            model.blocks[1].mlp.fc_out.weight.mul_(-2.0)  # e.g. an optimizer step
        assert not fast.prepacked_enabled  # the packed copy no longer matches
        torch.testing.assert_close(fast(tokens), reference(tokens), rtol=0, atol=0)
    assert fast._prepacked is None  # dropped, not kept around stale
    assert fast.enable_prepacked() and fast.prepacked_enabled  # re-packing picks up the change
    with torch.no_grad():
        assert (fast(tokens) - reference(tokens)).abs().max().item() < 1e-4


def test_packing_leaves_parameters_and_the_trace_path_alone() -> None:
    reference, fast = pair("tiny-llama")
    packed_state = fast.state_dict()
    for name, want in reference.state_dict().items():
        assert torch.equal(want, packed_state[name]), name
    tokens = torch.randint(0, 101, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(
            fast.run_with_trace(tokens).logits, reference.run_with_trace(tokens).logits
        )
    clone = copy.deepcopy(fast)  # oneDNN tensors do not copy: the copy starts unpacked
    assert not clone.prepacked_enabled and fast.prepacked_enabled
    pickled = pickle.loads(pickle.dumps(fast))  # torch.save(model) pickles the same way
    assert not pickled.prepacked_enabled
    with torch.no_grad():
        torch.testing.assert_close(pickled(tokens), reference(tokens), rtol=0, atol=0)


def test_other_dtypes_keep_the_reference_path() -> None:
    model = make_model().to(torch.bfloat16)
    assert not model.enable_prepacked()
    assert not model.prepacked_enabled
