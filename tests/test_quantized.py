"""The int8 quantized inference path: kernel error bounds, served = dequantised copy, quality
against float32, fallbacks and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lmscope.engine import SamplingParams, generate_batch
from lmscope.model.quantized import (
    QuantizationError,
    _Int8Linear,
    adopt_served_weights,
    dequantized_copy,
    outlier_channels,
    quantize_for_decoding,
    quantized_engine_available,
    quantized_path,
)
from lmscope.model.transformer import Transformer
from test_generate_fixtures import tiny_tokenizer
from test_model import FAMILIES, make_model

pytestmark = pytest.mark.skipif(
    not quantized_engine_available(), reason="no quantized linear kernels in this torch build"
)


def kl_and_top1(want: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    p, q = want.log_softmax(-1), got.log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    top1 = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
    return kl, top1


def test_each_token_gets_its_own_activation_range() -> None:
    """|y - x W^T| <= step/2 * sum|W| per row, with the step of that row's own range: a row
    1000x smaller than its neighbour is not drowned by the neighbour's range."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=True)
    fast = _Int8Linear(linear)
    x = torch.randn(3, 64)
    x[1] *= 1e-3
    got = fast(x)
    want = x @ fast.served_weight().T + linear.bias.detach()
    step = (x.amax(1) - x.amin(1)) / 127  # 7 bits is the worst case (reduce_range)
    bound = step[:, None] / 2 * fast.served_weight().abs().sum(1)[None] + 1e-6
    assert ((got - want).abs() <= bound).all()
    single = fast(x[1:2])  # one row: the kernel's own range is already per token
    assert ((single - want[1:2]).abs() <= bound[1:2]).all()


def test_weights_are_rounded_per_output_channel_to_half_a_step() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(40, 24, bias=False)
    with torch.no_grad():
        linear.weight[3] *= 50  # a loud row must not coarsen the other rows' steps
    fast = _Int8Linear(linear)
    weight = linear.weight.detach()
    half_step = weight.abs().amax(1, keepdim=True) / 127 / 2
    assert ((fast.served_weight() - weight).abs() <= half_step + 1e-7).all()
    assert (fast.served_weight() - weight)[0].abs().max() < weight[3].abs().max() / 127 / 10


def test_outlier_channels_stay_float32() -> None:
    absmax = torch.ones(100)
    assert outlier_channels(absmax) is None
    absmax[[7, 42]] = torch.tensor([500.0, 20.0])
    assert outlier_channels(absmax).tolist() == [7, 42]  # type: ignore[union-attr]
    torch.manual_seed(2)
    linear = nn.Linear(100, 8, bias=False)
    fast = _Int8Linear(linear, outliers=torch.tensor([7, 42]))
    assert torch.equal(fast.served_weight()[:, [7, 42]], linear.weight.detach()[:, [7, 42]])
    x = torch.randn(2, 100)
    x[:, 7] = 1e4  # a massive activation: without the split, every other channel rounds to 0
    want = x @ linear.weight.detach().T
    step = (x[:, :7].amax(1) - x[:, :7].amin(1)) * 2 / 127  # range of the int8 part, generously
    bound = step[:, None] * linear.weight.abs().sum(1)[None] + 1e-3 * want.abs()
    assert ((fast(x) - want).abs() <= bound).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_served_logits_stay_close_to_float32_and_match_the_dequantised_copy(family: str) -> None:
    reference = make_model(**FAMILIES[family])
    quantized = quantize_for_decoding(copy.deepcopy(reference))
    explained = dequantized_copy(quantized)
    assert quantized_path(quantized) is not None and quantized_path(explained) is None
    tokens = torch.randint(0, 101, (2, 23), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want, got, twin = reference(tokens), quantized(tokens), explained(tokens)
    kl, top1 = kl_and_top1(want, got)
    assert kl < 1e-3 and top1 > 0.9
    # the copy differs from what is served only by the run-time rounding of activations,
    # which is smaller than the weights' own rounding
    assert (twin - got).abs().max() <= (want - got).abs().max() + 1e-4


def test_dequantised_copy_holds_the_rounded_weights_with_norms_unfolded() -> None:
    reference = make_model(**FAMILIES["tiny-gpt2"])  # LayerNorm with bias: shift is folded
    explained = dequantized_copy(quantize_for_decoding(copy.deepcopy(reference)))
    got_state = explained.state_dict()
    assert got_state.keys() == reference.state_dict().keys()
    for name, want in reference.state_dict().items():
        got = got_state[name]
        if "ln" in name or name.endswith("bias") or ("embed." in name and "unembed" not in name):
            assert torch.equal(want, got), name  # norms, biases and the embedding untouched
        else:
            assert 0 < (want - got).abs().max() < want.abs().max() / 20, name


def test_cached_decoding_through_the_engine_matches_a_full_forward() -> None:
    model = quantize_for_decoding(make_model(**FAMILIES["tiny-llama"]))
    tok = tiny_tokenizer()
    prompt = [[5, 17, 33, 2, 9]]
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, logprobs=1)
    out = generate_batch(model, tok, prompt, params, eos_token_ids=())[0]
    full = torch.tensor([prompt[0] + list(out.token_ids)])
    with torch.inference_mode():
        logits = model(full)[0, len(prompt[0]) - 1 : -1]
    assert quantized_path(model) is not None
    picked = logits.argmax(-1).tolist()
    agree = sum(a == b for a, b in zip(picked, out.token_ids, strict=True))
    assert agree >= 5  # rows share a range only after per-token scaling: near-ties may differ


def test_changed_parameters_fall_back_to_the_reference_path() -> None:
    model = quantize_for_decoding(make_model())
    with torch.no_grad():
        model.unembed.weight.mul_(2)
    tokens = torch.randint(0, 101, (1, 7))
    with torch.inference_mode():
        got = model(tokens)
    assert quantized_path(model) is None and model._prepacked is None
    twin = copy.deepcopy(model)
    with torch.inference_mode():
        assert torch.equal(got, twin(tokens))


def test_unsupported_modes_dtypes_and_devices_say_what_is_supported() -> None:
    model = make_model()
    with pytest.raises(QuantizationError, match=r"'int4'.*supported is int8"):
        quantize_for_decoding(model, "int4")
    bf16 = make_model().to(torch.bfloat16)
    with pytest.raises(
        QuantizationError,
        match=r"bfloat16 model on cpu: supported is int8 weights for float32 models on a CPU",
    ):
        quantize_for_decoding(bf16)
    assert quantized_path(bf16) is None


def test_quantizing_leaves_parameters_and_state_dict_alone() -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_for_decoding(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model, Transformer) and model.training is False


def test_prepare_for_decoding_keeps_the_path_that_measured_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lmscope.model import decoding

    model = make_model()
    choice = decoding.prepare_for_decoding(model, batch=2)
    assert choice.path in ("reference", "prepacked")
    assert model.prepacked_enabled == (choice.path == "prepacked")
    assert set(choice.step_ms) == {"reference@1", "reference@2", "prepacked@1", "prepacked@2"}
    for slower in ("reference", "prepacked"):
        faked = {f"{p}@{b}": 2.0 if p == slower else 1.0 for p in ("reference", "prepacked")
                 for b in (1, 2)}  # fmt: skip
        monkeypatch.setattr(decoding, "measure_paths", lambda *a, faked=faked, **k: faked)
        picked = decoding.prepare_for_decoding(model, batch=2)
        assert picked.path != slower and model.prepacked_enabled == (slower == "reference")


def test_prepare_for_decoding_int8_off_and_unsupported() -> None:
    from lmscope.model.decoding import measure_paths, prepare_for_decoding

    model = make_model()
    assert prepare_for_decoding(model, quantize="int8").path == "int8"
    assert quantized_path(model) is not None
    times = measure_paths(model, {"reference": None}, (1,), rounds=1, steps=1)
    assert set(times) == {"reference@1"} and quantized_path(model) is not None  # restored
    off = prepare_for_decoding(model, prepack=False)
    assert off.path == "reference" and model._prepacked is None
    bf16 = prepare_for_decoding(make_model().to(torch.bfloat16))
    assert bf16.path == "reference" and "float32 CPU only (bfloat16 on cpu)" in bf16.reason


def test_adopting_the_served_weights_keeps_int8_and_equals_the_dequantised_copy() -> None:
    model = quantize_for_decoding(make_model(**FAMILIES["tiny-gpt2"]))
    twin = dequantized_copy(model)
    tokens = torch.randint(0, 101, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        served = model(tokens)
    adopt_served_weights(model)
    assert quantized_path(model) is not None  # still decoding with int8
    with torch.inference_mode():
        assert torch.equal(model(tokens), served)
        trace = model.run_with_trace(tokens)  # the explainers' path: the served weights
        assert torch.allclose(trace.logits, twin(tokens), atol=1e-5)
    with pytest.raises(QuantizationError, match="needs a model quantized"):
        adopt_served_weights(make_model())


def test_a_zero_norm_weight_keeps_its_column_in_the_dequantised_copy() -> None:
    reference = make_model(**FAMILIES["tiny-llama"])
    with torch.no_grad():
        reference.blocks[0].ln1.weight[3] = 0.0  # type: ignore[union-attr, index]
    quantized = quantize_for_decoding(copy.deepcopy(reference))
    twin = dequantized_copy(quantized)
    qkv = twin.blocks[0].attn.qkv.weight  # type: ignore[union-attr]
    assert torch.equal(qkv[:, 3], reference.blocks[0].attn.qkv.weight[:, 3])  # type: ignore[union-attr, index]
    tokens = torch.randint(0, 101, (1, 11), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want, got, copied = reference(tokens), quantized(tokens), twin(tokens)
    assert torch.isfinite(copied).all()
    assert (copied - got).abs().max() <= (want - got).abs().max() + 1e-4
