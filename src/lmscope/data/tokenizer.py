"""Tokenizers for the data pipeline: train a byte-level BPE, build a character-level vocabulary,
or reuse a model's tokenizer (read from its files; the model itself is never loaded).

`TextTokenizer` wraps a `tokenizers.Tokenizer` and knows its start, end and padding tokens. Text is
encoded with special-token parsing switched off, so a corpus that happens to contain "<|eos|>"
cannot inject control tokens; the pipeline adds special ids itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmscope.data.errors import DataError
from lmscope.files import atomic_write_text

CHAR = "char"  # `--tokenizer char`: one token per character
UNK = "<|unk|>"  # characters a character-level vocabulary has not seen
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

_GUESSES = {
    "bos": ("<|bos|>", "<s>", "<bos>", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": ("<|eos|>", "</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>"),
    "pad": ("<|pad|>", "<pad>", "[PAD]"),
}


@dataclass
class SpecialTokens:
    bos: str | None = "<|bos|>"
    eos: str | None = "<|eos|>"
    pad: str | None = "<|pad|>"
    extra: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        named = [t for t in (self.bos, self.eos, self.pad) if t]
        return list(dict.fromkeys(named + list(self.extra)))


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the names of its start, end and padding tokens."""

    def __init__(self, backend: Tokenizer, specials: SpecialTokens) -> None:
        self.backend = backend
        self.backend.encode_special_tokens = True
        self.specials = specials
        for name in ("bos", "eos", "pad"):
            token = getattr(specials, name)
            if token is not None and backend.token_to_id(token) is None:
                raise DataError(f"{name} token {token!r} is not in the tokenizer's vocabulary")

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        found = self.backend.token_to_id(token)
        return None if found is None else int(found)

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.specials.bos)

    @property
    def eos_id(self) -> int | None:
        return self.token_id(self.specials.eos)

    @property
    def pad_id(self) -> int | None:
        pad = self.token_id(self.specials.pad)
        return self.eos_id if pad is None else pad

    def encode(self, text: str) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def encode_with_specials(self, text: str) -> list[int]:
        """Encode text written by the user (a sample prompt), where "<|im_start|>" means the
        special token, unlike corpus text."""
        self.backend.encode_special_tokens = False
        try:
            return list(self.backend.encode(text, add_special_tokens=False).ids)
        finally:
            self.backend.encode_special_tokens = True

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encoded]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def has_tokens(self, *tokens: str) -> bool:
        return all(self.backend.token_to_id(t) is not None for t in tokens)

    def to_hf(self) -> Any:
        """A transformers PreTrainedTokenizerFast with the same vocabulary and special tokens."""
        from transformers import PreTrainedTokenizerFast

        kwargs = {
            f"{name}_token": getattr(self.specials, name)
            for name in ("bos", "eos", "pad")
            if getattr(self.specials, name) is not None
        }
        if self.specials.extra:
            kwargs["additional_special_tokens"] = list(self.specials.extra)  # type: ignore[assignment]
        return PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(self.backend.to_str()), **kwargs
        )

    # ---- files -------------------------------------------------------------------------------
    def config_dict(self, max_length: int | None = None) -> dict[str, Any]:
        """A Hugging Face style tokenizer_config.json, so transformers can load it too."""
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.specials.bos,
            "eos_token": self.specials.eos,
            "pad_token": self.specials.pad or self.specials.eos,
            "additional_special_tokens": list(self.specials.extra),
        }
        if max_length is not None:
            config["model_max_length"] = max_length
        return config

    def save(self, directory: str | Path, max_length: int | None = None) -> Path:
        """Write tokenizer.json and tokenizer_config.json into `directory`; return the first."""
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        atomic_write_text(path, self.backend.to_str())
        atomic_write_text(
            directory / TOKENIZER_CONFIG_FILE,
            json.dumps(self.config_dict(max_length), indent=2),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Load tokenizer.json (a file, or a directory holding one and maybe its config)."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"no tokenizer at {path}: expected a tokenizer.json file or directory")
        try:
            backend = Tokenizer.from_file(str(file))
        except Exception as err:  # the Rust side raises a plain Exception
            raise DataError(f"cannot read tokenizer {file}: {err}") from err
        config_file = file.parent / TOKENIZER_CONFIG_FILE
        config: dict[str, Any] = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except json.JSONDecodeError as err:
                raise DataError(f"cannot read {config_file}: {err}") from err
        return cls(backend, specials_from_config(backend, config))


def _token_name(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer configs
        value = value.get("content")
    return value if isinstance(value, str) else None


def specials_from_config(backend: Tokenizer, config: dict[str, Any]) -> SpecialTokens:
    """Special token names from a tokenizer config, guessing common names where it is silent."""
    found: dict[str, str | None] = {}
    for name, guesses in _GUESSES.items():
        token = _token_name(config.get(f"{name}_token"))
        if token is None or backend.token_to_id(token) is None:
            token = next((g for g in guesses if backend.token_to_id(g) is not None), None)
        found[name] = token
    extra = [t for t in map(_token_name, config.get("additional_special_tokens") or []) if t]
    return SpecialTokens(bos=found["bos"], eos=found["eos"], pad=found["pad"], extra=extra)


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    specials: SpecialTokens | None = None,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> TextTokenizer:
    """Train a byte-level BPE tokenizer (GPT-2 style pre-tokenisation) on `texts`."""
    specials = specials or SpecialTokens()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + len(specials.all()) + 1
    if vocab_size < minimum:
        raise DataError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE: it needs at least "
            f"{minimum} (256 bytes + {len(specials.all())} special tokens + 1 merge)"
        )
    if min_frequency < 1:
        raise DataError(f"min_frequency must be >= 1, got {min_frequency}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials.all(),
        initial_alphabet=alphabet,
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(backend, specials)


def from_object(obj: Any) -> TextTokenizer:
    """Wrap a tokenizer object from elsewhere in lmscope (a `tokenizers.Tokenizer`, a
    Hugging Face fast tokenizer or a `TextTokenizer`)."""
    if isinstance(obj, TextTokenizer):
        return obj
    if isinstance(obj, Tokenizer):
        return TextTokenizer(obj, specials_from_config(obj, {}))
    backend = getattr(obj, "backend_tokenizer", None) or getattr(obj, "backend", None)
    if isinstance(backend, Tokenizer):
        config = {
            f"{name}_token": getattr(obj, f"{name}_token", None) for name in ("bos", "eos", "pad")
        }
        config["additional_special_tokens"] = getattr(obj, "additional_special_tokens", None)
        return TextTokenizer(
            Tokenizer.from_str(backend.to_str()), specials_from_config(backend, config)
        )
    raise DataError(
        f"cannot use a tokenizer of type {type(obj).__name__}; give a tokenizer.json file"
    )


def train_chars(texts: Iterable[str], *, specials: SpecialTokens | None = None) -> TextTokenizer:
    """A character-level tokenizer (nanoGPT's Shakespeare by characters): one token per distinct
    character of `texts`, ids in code-point order from 0 (as nanoGPT numbers them), then the
    special tokens and an unknown-character token. A plain `tokenizers.Tokenizer` (word-level
    model over single characters), so transformers and every lmscope command load it as is."""
    specials = specials or SpecialTokens()
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    if not chars:
        raise DataError("no characters to build a character-level vocabulary from")
    added = [t for t in [*specials.all(), UNK] if t not in chars]
    vocab = {c: i for i, c in enumerate(sorted(chars))}
    for token in dict.fromkeys(added):
        vocab[token] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join without spaces
    backend.add_special_tokens(list(dict.fromkeys(added)))
    return TextTokenizer(backend, specials)


def load_tokenizer(source: str | Path) -> TextTokenizer:
    """A tokenizer from a tokenizer.json file, a directory holding one, a .gguf file or the name
    of an embedded model, read from its files without loading the model's weights."""
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_tokenizer(path)
    if path.exists():
        if path.is_dir() and not (path / TOKENIZER_FILE).is_file():
            raise DataError(f"{path} holds no {TOKENIZER_FILE}")
        return TextTokenizer.load(path)
    from lmscope.zoo.default import EMBEDDED_MODELS

    entry = EMBEDDED_MODELS.get(str(source))
    if entry is None:
        raise DataError(
            f"tokenizer {str(source)!r} is neither a file nor a known model; give a "
            f"tokenizer.json file, a directory holding one, a .gguf file, '{CHAR}' or one of: "
            + ", ".join(sorted(EMBEDDED_MODELS))
        )
    if entry.is_cached() and (entry.cache_dir() / TOKENIZER_FILE).is_file():
        return TextTokenizer.load(entry.cache_dir())
    return _gguf_tokenizer(entry.source_path())  # the tokenizer alone, no weights converted


def _gguf_tokenizer(path: Path) -> TextTokenizer:
    from lmscope.zoo.gguf import load_gguf_tokenizer

    return from_object(load_gguf_tokenizer(path))
