"""Tokenizers of the data pipeline: characters (nanoGPT's Shakespeare by characters), and a
model's tokenizer read from its files without loading the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lmscope.data.errors import DataError
from lmscope.data.prepare import PrepareConfig, prepare
from lmscope.data.tokenizer import TextTokenizer, load_tokenizer, train_chars

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"


def shakespeare(chars: int | None = None) -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip("tinyshakespeare.txt is not in ../shared/data")
    text = SHAKESPEARE.read_text()
    return text if chars is None else text[:chars]


def test_characters_number_like_nanogpt_and_round_trip(tmp_path: Path) -> None:
    text = shakespeare()
    tok = train_chars([text])
    chars = sorted(set(text))
    assert len(chars) == 65  # nanoGPT's figure for this corpus
    assert tok.vocab_size == 65 + 4  # + bos, eos, pad, unknown character
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert ids[:50] == [chars.index(c) for c in text[:50]]  # nanoGPT's stoi
    assert tok.decode(ids) == text
    # saved as tokenizer.json + tokenizer_config.json and read back by us and by transformers
    tok.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert again.encode(text[:2000]) == ids[:2000] and again.eos_id == tok.eos_id
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert hf(text[:300])["input_ids"] == ids[:300]
    assert hf.decode(ids[:300]) == text[:300]


def test_characters_keep_specials_apart_and_mark_unknown_ones() -> None:
    tok = train_chars(["abc\n"])
    ids = tok.encode("cab<|eos|>\n")
    assert tok.eos_id not in ids  # "<|eos|>" in text is characters, not a control token
    unknown = tok.token_id("<|unk|>")
    assert ids[:3] == [3, 1, 2] and unknown in ids and ids[-1] == 0  # "\n" sorts first
    assert tok.decode(tok.encode("ba\nc")) == "ba\nc"
    with pytest.raises(DataError, match="no characters"):
        train_chars([""])


def test_prepare_and_train_by_characters(tmp_path: Path) -> None:
    from lmscope.train.config import config_from_dict
    from lmscope.train.trainer import Trainer
    from lmscope.zoo import registry

    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text(shakespeare(60_000))
    data = tmp_path / "data"
    manifest = prepare(
        PrepareConfig(inputs=[str(corpus)], out=str(data), tokenizer="char", progress=False)
    )
    assert manifest["tokenizer"]["source"] == "characters"
    assert 50 <= manifest["tokenizer"]["vocab_size"] <= 70
    config = {
        "out_dir": str(tmp_path / "run"),
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2},
        "data": {"dir": str(data), "context": 32},
        "train": {"max_steps": 4, "batch_size": 4},
        "eval": {"every": 0, "batches": 1},
        "checkpoint": {"every": 0},
        "sample": {"prompts": ["ROMEO:"], "max_new_tokens": 8},
        "log": {"tensorboard": False, "progress": False, "mlflow": "off"},
    }
    torch.set_num_threads(1)
    result = Trainer(config_from_dict(config)).run()
    assert result.model_dir is not None
    assert result.record["model_config"]["vocab_size"] == manifest["tokenizer"]["vocab_size"]
    loaded = registry.load(str(result.model_dir))
    text = "ROMEO:\nWhat light"
    ids = loaded.tokenizer(text)["input_ids"]
    assert len(ids) == len(text) and loaded.tokenizer.decode(ids) == text
    assert result.record["metrics"]["samples"]  # sampled through the same tokenizer


def _forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a whole model was loaded to get its tokenizer")

    import lmscope.zoo.checkpoint as checkpoint
    import lmscope.zoo.gguf as gguf
    import lmscope.zoo.registry as registry

    monkeypatch.setattr(registry, "load", refuse)
    monkeypatch.setattr(checkpoint, "load_checkpoint", refuse)
    monkeypatch.setattr(gguf, "from_gguf", refuse)
    monkeypatch.setattr(gguf, "read_gguf", refuse)


def test_model_tokenizer_without_loading_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmscope.zoo.default import DEFAULT_MODEL, EMBEDDED_MODELS

    entry = EMBEDDED_MODELS[DEFAULT_MODEL]
    try:
        entry.source_path()
    except ValueError:
        pytest.skip("the embedded model's package is not installed")
    _forbid_model_loading(monkeypatch)
    cached = load_tokenizer(DEFAULT_MODEL) if entry.is_cached() else None
    monkeypatch.setattr(type(entry), "is_cached", lambda self: False)  # from the GGUF alone
    from_gguf = load_tokenizer(DEFAULT_MODEL)
    assert from_gguf.vocab_size == 49152 and from_gguf.has_tokens("<|im_start|>", "<|im_end|>")
    assert from_gguf.eos_id is not None
    if cached is not None:
        assert cached.backend.get_vocab() == from_gguf.backend.get_vocab()
        assert cached.encode("Hello, world!") == from_gguf.encode("Hello, world!")


def test_unknown_tokenizer_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"neither a file nor a known model.*'char'.*smollm2"):
        load_tokenizer("gpt-17")
    with pytest.raises(DataError, match=r"holds no tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(DataError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path)
