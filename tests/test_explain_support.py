"""Shared set-up for the explain tests: tiny random models of every family (no tests here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmscope.model.config import ModelConfig
from lmscope.model.presets import family_fields
from lmscope.model.transformer import Transformer

VOCAB = 64

# Every architectural variant the canonical model supports, at toy size. init_std is large so
# attention is far from uniform and the routes are not trivially "residual only".
FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": family_fields("tiny-gpt2"),
    "llama_gqa": family_fields("tiny-mistral"),  # LLaMA layout, GQA, untied
    "mqa_qkv_bias": family_fields("tiny-qwen2-mqa"),
    "neox_parallel": family_fields("tiny-neox"),
    "opt_sinusoidal_relu": family_fields("tiny-sinusoidal"),
}


def tiny_model(family: str, seed: int = 0, **overrides: Any) -> Transformer:
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB,
        d_model=32,
        n_layers=3,
        n_heads=4,
        d_mlp=48,
        n_ctx=32,
        init_std=0.25,
    )
    kwargs.update(FAMILIES[family])
    kwargs.update(overrides)
    model = Transformer(ModelConfig(**kwargs)).eval()
    with torch.no_grad():  # non-zero biases and norm weights, so that bias parts are exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tokens(n: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g)


class CharTokenizer:
    """A stand-in tokenizer: one token per character (ids modulo the toy vocabulary)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + i % 26) for i in ids)

    def decode_one(self, token: int) -> str:
        return self.decode([token])


@dataclass
class FakeLoaded:
    name: str
    model: Transformer
    tokenizer: Any
