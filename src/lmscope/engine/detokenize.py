"""Incremental detokenising: a growing list of token ids becomes text deltas that never split a
character.

`tokenizers.decoders.DecodeStream` does the same for Rust tokenizers only; this version works
with any transformers tokenizer (fast or slow) and keeps the prompt's last tokens as context, so
a completion's first token keeps its leading space exactly as in the whole decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IncrementalDetokenizer"]

DETOKENIZER_CONTEXT = 4  # prompt tokens decoded with the first new ones (keeps leading spaces)
DETOKENIZER_MAX_PENDING = 8  # tokens held back waiting for a character to complete, at most


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window of recent tokens and emits what the newest token added, so a
    character split over several byte-level tokens appears once it is complete, and merged or
    space-prefixed tokens decode as they would in the whole sequence.
    """

    def __init__(
        self, tokenizer: Any, prompt_ids: Sequence[int], skip_special_tokens: bool
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids[-DETOKENIZER_CONTEXT:])
        if self._decode(self._ids).endswith("\ufffd"):  # context ends inside a character
            self._ids = []
        self._prefix = 0  # window start
        self._read = len(self._ids)  # tokens before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        text = self._tokenizer.decode(
            ids, skip_special_tokens=self._skip, clean_up_tokenization_spaces=False
        )
        return str(text)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        stuck = len(self._ids) - self._read > DETOKENIZER_MAX_PENDING  # invalid bytes, give up
        if len(after) > len(before) and (stuck or not after.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]
