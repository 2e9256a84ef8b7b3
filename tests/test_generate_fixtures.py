"""Shared helpers (no tests here): tiny models and a tiny byte-level BPE tokenizer for the
generation tests, built locally with no downloads."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer

VOCAB = 300
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo wörld — naïve café ☕ 日本語 テキスト 🙂",
    "def f(x):\n    return x * 2\n",
]
LLAMA_LIKE: dict[str, Any] = dict(
    positional="rope",
    norm="rmsnorm",
    activation="silu",
    gated_mlp=True,
    n_kv_heads=2,
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
)
GPT2_LIKE: dict[str, Any] = dict(positional="learned", activation="gelu_tanh")


def tiny_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(LINES * 10, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    if chat:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


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
