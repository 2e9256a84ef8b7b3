"""Shared helpers (no tests here): tiny models and a tiny byte-level BPE tokenizer for the
generation tests, built locally with no downloads."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from conftest import build_tiny_tokenizer
from lmscope.model.config import ModelConfig
from lmscope.model.presets import family_fields
from lmscope.model.transformer import Transformer

VOCAB = 300
LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo wörld — naïve café ☕ 日本語 テキスト 🙂",
    "def f(x):\n    return x * 2\n",
]
LLAMA_LIKE: dict[str, Any] = family_fields("tiny-llama")
GPT2_LIKE: dict[str, Any] = family_fields("tiny-gpt2")


def tiny_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """Trained on multi-byte text too, so detokenising split characters is exercised."""
    tokenizer: PreTrainedTokenizerFast = build_tiny_tokenizer(VOCAB, LINES, chat=chat, pad=False)
    return tokenizer


def tiny_model(seed: int = 0, **overrides: Any) -> Transformer:
    """A random model whose next-token distributions are far from uniform (init_std 0.5), so
    greedy choices are not decided by rounding noise."""
    torch.manual_seed(seed)
    cfg: dict[str, Any] = dict(
        vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=64, init_std=0.5
    )
    cfg.update(LLAMA_LIKE)
    cfg.update(overrides)
    return Transformer(ModelConfig(**cfg)).eval()
