"""Hugging Face converters: the canonical model's logits must match the HF reference."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmscope.model.transformer import Transformer  # noqa: E402
from lmscope.zoo.errors import ConversionError, UnsupportedModelError  # noqa: E402
from lmscope.zoo.hf import (  # noqa: E402
    SUPPORTED_FAMILIES,
    config_from_hf,
    from_hf,
    load_hf_directory,
    state_dict_from_hf,
    to_hf_state_dict,
)
from lmscope.zoo.tensor_files import LazyTensors, TensorFileError  # noqa: E402

VOCAB = 160
N_CTX = 48

# name -> (config class, keyword arguments); every family and the features that change the maths.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=N_CTX)),
    "opt": (
        "OPTConfig",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
             max_position_embeddings=N_CTX, word_embed_proj_dim=64),
    ),
    "opt-no-affine-no-bias": (
        "OPTConfig",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
             max_position_embeddings=N_CTX, word_embed_proj_dim=64, enable_bias=False,
             layer_norm_elementwise_affine=False, tie_word_embeddings=False),
    ),
    "llama": (
        "LlamaConfig",
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=N_CTX, rope_theta=5000.0),
    ),
    "llama-headdim-bias-tied-linear": (
        "LlamaConfig",
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=24, attention_bias=True, mlp_bias=True,
             tie_word_embeddings=True, max_position_embeddings=N_CTX, rms_norm_eps=1e-5,
             rope_scaling={"rope_type": "linear", "factor": 2.0}),
    ),
    "llama-llama3-rope": (
        "LlamaConfig",
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=N_CTX, rope_theta=500.0,
             rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    ),
    "llama-dynamic-rope": (
        "LlamaConfig",
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
             max_position_embeddings=N_CTX, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    ),
    "mistral": (
        "MistralConfig",
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=N_CTX, sliding_window=N_CTX),
    ),
    "qwen2-gqa": (
        "Qwen2Config",
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=N_CTX, tie_word_embeddings=True),
    ),
    "gpt_neox-parallel": (
        "GPTNeoXConfig",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=N_CTX, rotary_pct=0.25, use_parallel_residual=True),
    ),
    "gpt_neox-sequential": (
        "GPTNeoXConfig",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=N_CTX, rotary_pct=0.25, use_parallel_residual=False,
             rotary_emb_base=1000),
    ),
}  # fmt: skip


def make_hf_config(case: str) -> Any:
    class_name, kwargs = CASES[case]
    return getattr(transformers, class_name)(
        vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, **kwargs
    )


@functools.cache
def make_hf_model(case: str) -> Any:
    """A tiny random HF causal LM with every weight (norms and biases too) randomised.

    Cached: tests must not modify it.
    """
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(make_hf_config(case))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.normal_(1.0, 0.2)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1)
            else:
                param.normal_(0.0, 0.15)
    return model.eval()


def tokens(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=gen)


def hf_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_matches(ours: Transformer, hf_model: Any, ids: torch.Tensor) -> None:
    with torch.no_grad():
        logits = ours(ids)
    torch.testing.assert_close(logits, hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hf(case: str) -> None:
    hf_model = make_hf_model(case)
    ours = from_hf(hf_model)
    assert ours.cfg.architecture == hf_model.config.model_type
    assert not ours.training
    ids = tokens()
    assert_matches(ours, hf_model, ids)
    # The trace path computes the same logits as the reference path, bit for bit.
    with torch.no_grad():
        reference = ours(ids)
    assert torch.equal(ours.run_with_trace(ids).logits, reference)


@pytest.fixture
def no_hf_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building any transformers model (or loading one through the Auto classes) fails."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("a transformers model was instantiated")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize("case", sorted(CASES))
def test_directory_is_read_from_safetensors_without_a_transformers_model(
    case: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    hf_model = make_hf_model(case)
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    request.getfixturevalue("no_hf_models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Mistral's sliding window, as with objects
        ours = from_hf(tmp_path)
    assert_matches(ours, hf_model, tokens())
    assert_matches(from_hf(str(tmp_path)), hf_model, tokens(seed=5))


def test_sharded_directory_and_dtype(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    hf_model = make_hf_model("llama")
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    request.getfixturevalue("no_hf_models")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert_matches(from_hf(tmp_path), hf_model, tokens())
    half = from_hf(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_safetensors_reader_agrees_with_the_safetensors_library(tmp_path: Path) -> None:
    import io

    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=gen),
        "bf16": torch.randn(4, 2, generator=gen).to(torch.bfloat16),
        "f16": torch.randn(7, generator=gen).to(torch.float16),
        "f64": torch.randn(2, 2, 2, generator=gen).double(),
        "i64": torch.arange(-3, 9),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "f8": torch.randn(6, generator=gen).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    want = load_file(str(path))
    reads: list[int] = []

    class Counting(io.BufferedReader):
        def readinto(self, buffer: Any) -> int:  # type: ignore[override]
            reads.append(len(buffer))
            return super().readinto(buffer)

    with Counting(io.FileIO(str(path), "rb")) as file:
        lazy = LazyTensors([file], None)
        assert set(lazy) == set(tensors) and "f32" in lazy and "nope" not in lazy
        assert reads == []  # the header is read, no tensor data until asked
        for name, tensor in want.items():
            got = lazy[name]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
            same_bytes = got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
            assert torch.equal(*same_bytes), name
        assert len(reads) == len(tensors)
        cast = LazyTensors([file], torch.float32)
        assert cast["bf16"].dtype == torch.float32 and cast["i64"].dtype == torch.int64
        assert torch.equal(cast["bf16"], want["bf16"].float())
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    with open(path, "rb") as file, pytest.raises(TensorFileError, match="truncated"):
        dict(LazyTensors([file], None))
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with open(path, "rb") as file, pytest.raises(TensorFileError, match=r"w\.safetensors"):
        LazyTensors([file], None)


def test_loaded_weights_do_not_depend_on_the_file(tmp_path: Path) -> None:
    hf_model = make_hf_model("gpt_neox-parallel")
    hf_model.save_pretrained(tmp_path)
    ours = from_hf(tmp_path)
    with torch.no_grad():
        before = ours(tokens())
    (tmp_path / "model.safetensors").write_bytes(b"")  # rewritten (truncated) after loading
    with torch.no_grad():
        assert torch.equal(ours(tokens()), before)


def test_directory_keeps_its_tokenizer(tmp_path: Path) -> None:
    from conftest import build_tiny_tokenizer
    from lmscope.zoo.registry import load

    hf_model = make_hf_model("qwen2-gqa")
    hf_model.save_pretrained(tmp_path)
    model, tokenizer = load_hf_directory(tmp_path)
    assert tokenizer is None  # no tokenizer files: none, and no error
    assert_matches(model, hf_model, tokens())
    saved = build_tiny_tokenizer(VOCAB)
    saved.save_pretrained(tmp_path)
    _, tokenizer = load_hf_directory(tmp_path)
    assert tokenizer is not None
    assert tokenizer.get_vocab() == saved.get_vocab()
    assert tokenizer.chat_template == saved.chat_template
    loaded = load(str(tmp_path))  # the registry (CLI, server) goes the same way
    assert loaded.tokenizer is not None and loaded.tokenizer.get_vocab() == saved.get_vocab()


def test_directory_of_an_unsupported_family_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 64}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match=r"'bert'.*gpt2, opt, llama"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 64}')
    with pytest.raises(UnsupportedModelError, match=r"no model_type.*supported: gpt2"):
        from_hf(tmp_path)


def test_converted_model_does_not_share_memory_with_hf() -> None:
    hf_model = make_hf_model("llama")
    ours = from_hf(hf_model)
    before = hf_logits(hf_model, tokens())
    with torch.no_grad():
        for param in ours.parameters():
            param.zero_()
    torch.testing.assert_close(hf_logits(hf_model, tokens()), before)


def test_tied_embeddings_stay_tied() -> None:
    ours = from_hf(make_hf_model("gpt2"))
    assert ours.cfg.tie_embeddings
    assert ours.unembed.weight is ours.embed.weight
    untied = from_hf(make_hf_model("gpt_neox-parallel"))
    assert not untied.cfg.tie_embeddings
    assert untied.unembed.weight is not untied.embed.weight


def test_config_fields() -> None:
    cfg = config_from_hf(make_hf_config("llama-headdim-bias-tied-linear"))
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.d_head) == (4, 2, 24)
    assert cfg.rope_scaling == {"type": "linear", "factor": 2.0}
    assert (cfg.qkv_bias, cfg.out_bias, cfg.mlp_bias, cfg.tie_embeddings) == (
        True,
        True,
        True,
        True,
    )
    assert (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)
    qwen = config_from_hf(make_hf_config("qwen2-gqa"))
    assert (qwen.qkv_bias, qwen.out_bias, qwen.mlp_bias) == (True, False, False)
    neox = config_from_hf(make_hf_config("gpt_neox-parallel"))
    assert neox.rotary_dim == 4 and neox.parallel_attn_mlp and neox.activation == "gelu"
    gpt2 = config_from_hf(make_hf_config("gpt2"))
    assert gpt2.activation == "gelu_tanh" and gpt2.positional == "learned"


def test_config_from_json_dict() -> None:
    data = make_hf_config("gpt_neox-sequential").to_dict()
    cfg = config_from_hf(data)
    assert cfg.architecture == "gpt_neox" and cfg.rope_theta == 1000 and not cfg.parallel_attn_mlp


def test_state_dict_names_and_shapes() -> None:
    hf_model = make_hf_model("mistral")
    sd = state_dict_from_hf(hf_model.state_dict(), hf_model.config)
    reference = Transformer(config_from_hf(hf_model.config)).state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in reference.items()}


def test_unsupported_family_names_supported_ones() -> None:
    hf_config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64)
    with pytest.raises(UnsupportedModelError) as info:
        config_from_hf(hf_config)
    assert isinstance(info.value, ValueError)
    for family in SUPPORTED_FAMILIES:
        assert family in str(info.value)
    assert "bert" in str(info.value)


def test_unsupported_opt_variants() -> None:
    post_ln = transformers.OPTConfig(hidden_size=64, do_layer_norm_before=False)
    with pytest.raises(UnsupportedModelError, match="do_layer_norm_before"):
        config_from_hf(post_ln)
    projected = transformers.OPTConfig(hidden_size=64, word_embed_proj_dim=32)
    with pytest.raises(UnsupportedModelError, match="word_embed_proj_dim"):
        config_from_hf(projected)


def test_mistral_short_sliding_window_warns() -> None:
    def mistral(window: int) -> Any:
        return transformers.MistralConfig(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            sliding_window=window,
        )

    with pytest.warns(UserWarning, match="sliding_window=32"):
        cfg = config_from_hf(mistral(32))
    assert cfg.extra["sliding_window"] == 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_from_hf(mistral(256))  # the window covers every position: nothing to warn about


def test_unsupported_rope_type() -> None:
    hf_config = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32},
    )
    with pytest.raises(UnsupportedModelError, match="yarn"):
        config_from_hf(hf_config)


def test_leftover_and_missing_tensors_are_reported() -> None:
    hf_model = make_hf_model("gpt2")
    sd = dict(hf_model.state_dict())
    sd["score.weight"] = torch.zeros(2, 64)
    with pytest.raises(ConversionError, match=r"score\.weight"):
        state_dict_from_hf(sd, hf_model.config)
    del sd["score.weight"], sd["transformer.h.1.mlp.c_fc.weight"]
    with pytest.raises(ConversionError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        state_dict_from_hf(sd, hf_model.config)


def test_bare_base_model_keys_are_accepted() -> None:
    """Old GPT-2 files name tensors without the `transformer.` prefix and carry attn.bias."""
    hf_model = make_hf_model("gpt2")
    sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    sd.pop("lm_head.weight")
    sd["h.0.attn.bias"] = torch.ones(1, 1, N_CTX, N_CTX)
    ours = Transformer(config_from_hf(hf_model.config))
    ours.load_state_dict(state_dict_from_hf(sd, hf_model.config))
    assert_matches(ours.eval(), hf_model, tokens())


def test_directory_without_safetensors_is_refused(tmp_path: Path) -> None:
    make_hf_config("gpt2").save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsupportedModelError, match="safetensors"):
        from_hf(tmp_path)


def test_to_hf_round_trip() -> None:
    for case in ("llama-headdim-bias-tied-linear", "llama-llama3-rope"):
        hf_model = make_hf_model(case)
        ours = from_hf(hf_model)
        hf_config, sd = to_hf_state_dict(ours)
        rebuilt = transformers.LlamaForCausalLM(hf_config).eval()
        rebuilt.load_state_dict(sd)
        ids = tokens()
        torch.testing.assert_close(hf_logits(rebuilt, ids), hf_logits(hf_model, ids))
    with pytest.raises(UnsupportedModelError, match="LLaMA-shaped"):
        to_hf_state_dict(from_hf(make_hf_model("gpt2")))


def test_dtype_argument() -> None:
    ours = from_hf(make_hf_model("qwen2-gqa"), dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert ours(tokens()).dtype == torch.bfloat16


# The tiny presets claim to be these families: the HF converter must agree on what makes each.
PRESET_OF_CASE = {"gpt2": "tiny-gpt2", "opt": "tiny-opt", "llama": "tiny-llama",
                  "mistral": "tiny-mistral", "qwen2-gqa": "tiny-qwen2-mqa",
                  "gpt_neox-parallel": "tiny-neox"}  # fmt: skip
FAMILY_KEYS = ("architecture", "positional", "rotary_pct", "norm", "activation", "gated_mlp",
               "qkv_bias", "out_bias", "mlp_bias", "unembed_bias", "parallel_attn_mlp")  # fmt: skip


@pytest.mark.parametrize("case", sorted(PRESET_OF_CASE))
def test_tiny_presets_describe_the_families_they_name(case: str) -> None:
    from lmscope.model.config import ModelConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        converted = config_from_hf(make_hf_config(case))
    preset = ModelConfig.from_name(PRESET_OF_CASE[case])
    for key in FAMILY_KEYS:
        assert getattr(preset, key) == getattr(converted, key), key
