"""Instruction data: render prompt/completion pairs and chat messages into token ids with a loss
mask that is 1 on what the model should learn to write (completions, assistant turns) and 0 on
the prompt.

Templates: "chatml" (`<|im_start|>role\\n...<|im_end|>`, used when the tokenizer knows those
tokens, as SmolLM2's does) and "plain" (the prompt followed directly by the completion; chat turns
as "User: ..." lines). Each piece is tokenised on its own so the mask boundary is exact.
"""

from __future__ import annotations

from typing import Any

from lmscope.data.errors import DataError
from lmscope.data.tokenizer import TextTokenizer

TEMPLATES = ("auto", "chatml", "plain")
ROLES = ("system", "user", "assistant")
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"

Encoded = tuple[list[int], list[int]]


def is_instruction(record: dict[str, Any]) -> bool:
    return "prompt" in record or "messages" in record


def resolve_template(template: str, tokenizer: TextTokenizer) -> str:
    if template not in TEMPLATES:
        raise DataError(f"chat template must be one of {TEMPLATES}, got {template!r}")
    if template == "auto":
        return "chatml" if tokenizer.has_tokens(CHATML_START, CHATML_END) else "plain"
    if template == "chatml" and not tokenizer.has_tokens(CHATML_START, CHATML_END):
        raise DataError(
            f"template 'chatml' needs the tokens {CHATML_START} and {CHATML_END}; this tokenizer "
            "lacks them (add them with --extra-special-tokens, or use the 'plain' template)"
        )
    return template


def messages_of(record: dict[str, Any]) -> list[dict[str, str]]:
    """The record as a list of chat messages."""
    if "messages" in record:
        messages = record["messages"]
    else:
        if "completion" not in record:
            raise DataError(f"record has a 'prompt' but no 'completion'{_where(record)}")
        messages = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": str(record["system"])})
    for message in messages:
        if message.get("role") not in ROLES:
            raise DataError(
                f"message role must be one of {ROLES}, got {message.get('role')!r}{_where(record)}"
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"conversation has no assistant turn to learn from{_where(record)}")
    return messages


def _where(record: dict[str, Any]) -> str:
    if "_line" in record:
        return f" ({record.get('_source')}:{record['_line']})"
    return ""


class _Builder:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.mask: list[int] = []

    def add(self, ids: list[int], learn: bool) -> None:
        self.ids.extend(ids)
        self.mask.extend([int(learn)] * len(ids))


def _chatml_ids(tokenizer: TextTokenizer) -> tuple[int, int]:
    start, end = tokenizer.token_id(CHATML_START), tokenizer.token_id(CHATML_END)
    assert start is not None and end is not None  # resolve_template checked
    return start, end


def encode_prompt(prompt: str, tokenizer: TextTokenizer, template: str) -> Encoded:
    """A user prompt tokenised exactly as training rendered prompts, ending where the reply
    starts; and the ids that end a reply. For sampling from a fine-tune in its own format."""
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    if template == "chatml":
        start, end = _chatml_ids(tokenizer)
        ids = [start, *tokenizer.encode("user\n"), *tokenizer.encode(prompt), end]
        ids += [*tokenizer.encode("\n"), start, *tokenizer.encode("assistant\n")]
        return ids, [end, *eos]
    return tokenizer.encode(prompt), eos  # plain: the completion follows the prompt directly


def encode_instruction(record: dict[str, Any], tokenizer: TextTokenizer, template: str) -> Encoded:
    """Token ids and loss mask for one instruction record (template already resolved)."""
    eos = tokenizer.eos_id
    messages = messages_of(record)
    out = _Builder()
    if template == "chatml":
        start, end = _chatml_ids(tokenizer)
        newline = tokenizer.encode("\n")
        for message in messages:
            learn = message["role"] == "assistant"
            out.add([start, *tokenizer.encode(message["role"] + "\n")], False)
            out.add([*tokenizer.encode(message["content"]), end], learn)
            out.add(newline, False)
        return out.ids, out.mask
    if "messages" not in record:  # plain prompt/completion: just the two texts, then eos
        out.add(tokenizer.encode(record["prompt"]), False)
        out.add(tokenizer.encode(record["completion"]), True)
    else:
        for message in messages:
            learn = message["role"] == "assistant"
            out.add(tokenizer.encode(message["role"].capitalize() + ": "), False)
            out.add(tokenizer.encode(message["content"] + "\n"), learn)
    if eos is not None:
        out.add([eos], True)
    return out.ids, out.mask
