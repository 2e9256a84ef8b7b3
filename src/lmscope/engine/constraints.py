"""Grammar-constrained decoding: a per-sequence logits processor that masks forbidden tokens.

A `Constraint` is a compiled grammar (from a JSON schema or any llguidance grammar) bound to one
tokenizer; it is shared by every sequence of a request. `Constraint.processor()` gives each
sequence its own `GrammarProcessor`, a callable `(generated_token_ids, logits_row) -> logits_row`
(the engine's `SamplingParams.logits_processors` contract): on each call it feeds the matcher the
tokens generated since the last call, then sets the logit of every token the grammar does not allow
next to -inf. End-of-sequence tokens are allowed only where the grammar accepts, so a finished
completion always parses; a completion cut by max_tokens may still be a prefix.

The grammar engine is llguidance (Rust, no Python dependencies): it works on the tokenizer's
tokenizer.json, so any Hugging Face fast tokenizer (byte-level BPE included) is supported.
"""

from __future__ import annotations

import copy
import json
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

try:  # a light wheel, but keep the rest of lmscope importable without it
    import llguidance
except ImportError:  # pragma: no cover - exercised only where the package is missing
    llguidance = None  # type: ignore[assignment]

INSTALL_HINT = "structured output needs the llguidance package: pip install 'llguidance>=1.9'"

# Compact JSON with one space after ',' and ':', the layout models see most. Flexible whitespace
# lets a small model emit newlines forever without ever breaking the grammar.
JSON_LAYOUT: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


class ConstraintError(ValueError):
    """A grammar or schema that cannot be used (a user error); the message is one line."""


def available() -> bool:
    """Whether the grammar engine is installed."""
    return llguidance is not None


def _require() -> Any:
    if llguidance is None:
        raise ConstraintError(INSTALL_HINT)
    return llguidance


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


# ---- tokenizers -------------------------------------------------------------------------------------
_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], Any]] = (
    weakref.WeakKeyDictionary()
)
_TOKENIZERS_LOCK = threading.Lock()


def grammar_tokenizer(tokenizer: Any, eos_token_ids: Iterable[int]) -> Any:
    """The llguidance tokenizer for a Hugging Face fast tokenizer (built once, ~0.2 s, cached)."""
    llg = _require()
    eos = tuple(sorted({int(t) for t in eos_token_ids}))
    if not eos:
        raise ConstraintError("structured output needs an end-of-sequence token id")
    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(tokenizer, {}).get(eos)
    if cached is not None:
        return cached
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConstraintError(
            "structured output needs a fast tokenizer (tokenizer.json); this model's is not one"
        )
    backend = copy.copy(backend)  # serialise without padding or truncation settings
    backend.no_padding()
    backend.no_truncation()
    try:
        built = llg.LLTokenizer(backend.to_str(), eos_token=list(eos))
    except Exception as err:  # an unusual tokenizer the grammar engine cannot read
        raise ConstraintError(f"cannot use this tokenizer for structured output: {err}") from None
    with _TOKENIZERS_LOCK:
        _TOKENIZERS.setdefault(tokenizer, {})[eos] = built
    return built


# ---- grammars ---------------------------------------------------------------------------------------
def json_schema_grammar(schema: Any, *, lenient: bool = False) -> str:
    """An llguidance grammar for JSON values matching `schema` (a dict or a bool schema).

    lenient=False refuses schemas that use keywords the engine cannot enforce (`not`,
    `uniqueItems`, `if`/`then`, ...); lenient=True drops them, so the output satisfies the rest.
    """
    llg = _require()
    if not isinstance(schema, (dict, bool)):
        raise ConstraintError(
            f"a JSON schema is an object or a boolean, not {type(schema).__name__}"
        )
    if schema is False:
        raise ConstraintError("Unsatisfiable schema: false admits no value")
    if schema is True:
        schema = {}
    options = dict(JSON_LAYOUT, lenient=lenient)
    try:
        grammar = str(llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=options))
    except (ValueError, TypeError) as err:
        raise ConstraintError(_one_line(str(err))) from None
    check_grammar(grammar)
    return grammar


def check_grammar(grammar: str, lltok: Any = None) -> list[str]:
    """Raise ConstraintError if the grammar is invalid; return its warnings (one line each)."""
    llg = _require()
    failed, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
    lines = [_one_line(m) for m in messages]
    if failed:
        reason = lines[0] if lines else "invalid grammar"
        if reason.startswith("Unimplemented keys"):
            reason += " (the grammar cannot enforce them; remove them or set strict to false)"
        raise ConstraintError(reason)
    return lines


def any_json_object_grammar() -> str:
    """Any JSON object (OpenAI's `json_object` mode)."""
    return json_schema_grammar({"type": "object"})


class Constraint:
    """A grammar compiled for one tokenizer; `processor()` makes one per sequence.

    Raises ConstraintError with the engine's one-line reason if the grammar is invalid (a bad
    schema, an unsupported keyword, a bad regex pattern).
    """

    def __init__(self, grammar: str, tokenizer: Any, eos_token_ids: Iterable[int]) -> None:
        llg = _require()
        self.eos_token_ids = tuple(sorted({int(t) for t in eos_token_ids}))
        self._lltok = grammar_tokenizer(tokenizer, self.eos_token_ids)
        self.warnings = check_grammar(grammar, self._lltok)
        self._template = llg.LLMatcher(self._lltok, grammar, log_level=0)
        if self._template.is_error():
            raise ConstraintError(_one_line(self._template.get_error()))
        self.tokenizer_vocab = int(self._lltok.vocab_size)

    def processor(self) -> GrammarProcessor:
        """A fresh processor for one sequence (state starts at the beginning of the grammar)."""
        return GrammarProcessor(
            self._template.deep_copy(), self.tokenizer_vocab, self.eos_token_ids
        )


class GrammarProcessor:
    """Masks, for one sequence, every token its grammar forbids next.

    Called as `processor(generated_token_ids, logits_row)`, once per decoding step, with all the
    tokens this sequence has generated so far (not the prompt) and its logits [V]. V may exceed the
    tokenizer's vocabulary (padded embedding matrices): those extra ids are always masked. If the
    sequence ever takes a token the grammar forbids (something bypassed the mask), the matcher is
    in error and only end-of-sequence tokens stay allowed, so the sequence ends rather than drifts.
    """

    def __init__(self, matcher: Any, tokenizer_vocab: int, eos_token_ids: Sequence[int]) -> None:
        self._matcher = matcher
        self._consumed = 0
        self._n = tokenizer_vocab
        self._words = np.zeros((tokenizer_vocab + 31) // 32, dtype=np.int32)
        self._eos = [int(t) for t in eos_token_ids]
        # Set when the grammar allowed nothing (a schema no finite value satisfies, such as a
        # required property that is the schema itself): the sequence was ended without a match.
        self.dead_end = False

    @property
    def accepting(self) -> bool:
        """Whether the text so far is a complete match of the grammar."""
        return bool(self._matcher.is_accepting())

    @property
    def error(self) -> str:
        """Why the matcher failed ('' while it has not)."""
        return str(self._matcher.get_error())

    def advance(self, generated: Sequence[int]) -> None:
        """Feed the matcher the tokens generated since the last call."""
        if len(generated) < self._consumed:  # the sequence was rewound: start again
            self._matcher.reset()
            self._consumed = 0
        for token in generated[self._consumed :]:
            if self._matcher.is_error():
                break
            self._matcher.consume_token(int(token))
        self._consumed = len(generated)

    def allowed(self, vocab: int) -> np.ndarray:
        """Booleans [vocab]: the tokens allowed next (never none: EOS as the last resort)."""
        if self._matcher.is_error():
            bits = np.zeros(vocab, dtype=bool)
        else:
            words = self._words
            self._matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
            bits = np.unpackbits(words.view(np.uint8), count=vocab, bitorder="little").view(bool)
            if vocab > self._n:
                bits[self._n :] = False  # ids the tokenizer does not have
        if not bits.any():
            self.dead_end = True
            for token in self._eos:
                if token < vocab:
                    bits[token] = True
        return bits

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        self.advance(generated)
        vocab = int(logits.shape[-1])
        mask = torch.from_numpy(self.allowed(vocab)).to(logits.device, non_blocking=True)
        return torch.where(mask, logits, float("-inf"))
