"""Shared test set-up: a repo-local model cache and the embedded default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests share one converted default model under the repo (gitignored), unless told otherwise.
os.environ.setdefault("LMSCOPE_CACHE", str(REPO / ".cache" / "lmscope"))


@pytest.fixture(scope="session")
def default_model():  # type: ignore[no-untyped-def]
    """The embedded smollm2-135m (converted once per cache), in fp32 eval mode."""
    from lmscope.zoo.registry import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("shared corpora (../shared/data) are not present")
    return path


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


DEFAULT_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be, that is the question.",
    "In the beginning God created the heaven and the earth.",
]


def build_tiny_tokenizer(  # type: ignore[no-untyped-def]
    vocab_size: int = 300,
    lines: list[str] | None = None,
    *,
    chat: bool = True,
    pad: bool = True,
):
    """A byte-level BPE tokenizer trained in memory on `lines`, with chat special tokens and
    (optionally) a chat template and a pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((lines or DEFAULT_LINES) * 20, trainer)
    special = {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}
    if pad:
        special["pad_token"] = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny LLaMA-shaped model with a real tokenizer: loads through the registry by path."""
    import torch

    from lmscope.model.config import ModelConfig
    from lmscope.model.transformer import Transformer
    from lmscope.zoo.checkpoint import save_checkpoint

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny-llama",
        vocab_size=len(tokenizer),
        d_model=64,
        d_mlp=256,
        n_ctx=256,
        eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    save_checkpoint(Transformer(cfg).eval(), path, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny models train faster on one thread, and much faster on a busy machine; a module that
    trains uses it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
