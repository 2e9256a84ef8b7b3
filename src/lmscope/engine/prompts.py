"""The one place where text, token ids or chat messages become prompt token ids.

Used by the in-process API (`generate`, `score`, ...) and by the server's routes, so every way
in tokenizes the same way: text with the tokenizer's special tokens (e.g. a BOS token), chat
messages through the tokenizer's chat template followed by the assistant turn's header.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as SequenceABC
from typing import Any, Literal

from lmscope.engine.errors import GenerationError, PromptTooLongError
from lmscope.model.transformer import Transformer

__all__ = [
    "END_OF_TURN_TOKENS",
    "Messages",
    "Prompt",
    "Truncate",
    "check_token_ids",
    "default_eos_ids",
    "encode_messages",
    "encode_text",
    "is_messages",
    "prepare_prompt",
    "prompt_token_ids",
    "start_token_ids",
]

Tokenizer = Any  # a transformers PreTrainedTokenizerBase (fast or slow)
Messages = SequenceABC[Mapping[str, Any]]
Prompt = str | SequenceABC[int] | Messages
Truncate = Literal["left"] | None

# End-of-turn tokens of common chat formats: generation stops on them when the tokenizer has them
# as special tokens, even if its eos_token is another one.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def is_messages(prompt: object) -> bool:
    """Whether a prompt is a list of chat messages (mappings with a role and content)."""
    return (
        isinstance(prompt, SequenceABC)
        and not isinstance(prompt, str)
        and len(prompt) > 0
        and isinstance(prompt[0], Mapping)
    )


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise GenerationError(
            f"the {what} contains a lone UTF-16 surrogate at character {err.start}, which is "
            "not valid Unicode text; send well-formed UTF-8"
        ) from None


def encode_text(tokenizer: Tokenizer, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Text -> token ids, with the tokenizer's special tokens (e.g. BOS) unless told not to."""
    _check_text(text, "text")
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=add_special_tokens)]


def check_token_ids(ids: Iterable[Any], vocab_size: int | None = None) -> list[int]:
    """Token ids as a list of ints; booleans (True is not token 1), non-integers and ids outside
    [0, vocab_size) are refused with a GenerationError."""
    out: list[int] = []
    for t in ids:
        if isinstance(t, bool):
            raise GenerationError(f"token ids must be integers, not booleans (got {t!r})")
        try:
            value = operator.index(t)
        except TypeError:
            raise GenerationError(f"token ids must be integers, got {t!r}") from None
        out.append(value)
    bad = [t for t in out if t < 0 or (vocab_size is not None and t >= vocab_size)]
    if bad:
        limit = f"[0, {vocab_size})" if vocab_size is not None else "non-negative"
        raise GenerationError(f"token ids {bad[:5]} are outside the vocabulary {limit}")
    return out


def encode_messages(tokenizer: Tokenizer, messages: Messages) -> list[int]:
    """Chat messages -> token ids through the tokenizer's chat template, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(
            "this model's tokenizer has no chat template; send a plain text prompt instead"
        )
    chat = [dict(m) for m in messages]
    for message in chat:
        for value in message.values():
            if isinstance(value, str):
                _check_text(value, "message")
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return encode_text(tokenizer, str(text), add_special_tokens=False)


def prompt_token_ids(
    tokenizer: Tokenizer, prompt: Prompt, *, vocab_size: int | None = None
) -> list[int]:
    """Token ids of text, token ids or chat messages, as they are (possibly empty)."""
    if isinstance(prompt, str):
        return encode_text(tokenizer, prompt) if prompt else []
    if is_messages(prompt):
        return encode_messages(tokenizer, prompt)  # type: ignore[arg-type]
    return check_token_ids(prompt, vocab_size)


def start_token_ids(tokenizer: Tokenizer) -> list[int]:
    """What an empty prompt becomes: the tokenizer's BOS (or else EOS) token, as GPT-2 and
    OpenAI's API start from the boundary token; a GenerationError when it has neither."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
    raise GenerationError("the prompt is empty; give at least one token")


def prepare_prompt(
    tokenizer: Tokenizer,
    prompt: Prompt,
    *,
    n_ctx: int,
    max_new_tokens: int = 0,
    truncate: Truncate = None,
    vocab_size: int | None = None,
) -> list[int]:
    """Token ids of a prompt for generation, checked against the context window n_ctx.

    An empty prompt starts from the tokenizer's BOS (or EOS) token, as GPT-2 does. Without
    truncation, a prompt that leaves no room for one new token raises PromptTooLongError
    (generation stops early with "length" when the window fills up). truncate="left" drops the
    oldest tokens so that the prompt plus max_new_tokens fit.
    """
    if truncate not in (None, "left"):
        raise GenerationError(f"truncate must be None or 'left', got {truncate!r}")
    ids = prompt_token_ids(tokenizer, prompt, vocab_size=vocab_size)
    if not ids:
        ids = start_token_ids(tokenizer)
    if truncate == "left" and len(ids) + max_new_tokens > n_ctx:
        ids = ids[-max(1, n_ctx - max(max_new_tokens, 1)) :]
    if len(ids) >= n_ctx:
        raise PromptTooLongError(len(ids), n_ctx)
    return ids


def default_eos_ids(model: Transformer, tokenizer: Tokenizer) -> frozenset[int]:
    """Token ids that end a completion: the tokenizer's and the model config's end-of-sequence
    ids, and the usual end-of-turn tokens when the tokenizer has them as special tokens."""
    ids: set[int] = set()
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        model.cfg.eos_token_id,
        model.cfg.extra.get("eos_token_ids"),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    for token in END_OF_TURN_TOKENS:
        if token in special:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id >= 0:
                ids.add(token_id)
    return frozenset(i for i in ids if 0 <= i < model.cfg.vocab_size)
