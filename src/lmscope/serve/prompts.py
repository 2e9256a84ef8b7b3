"""Requests' prompts -> token ids, off the event loop.

Tokenizing a long text or rendering a chat template takes milliseconds to seconds of CPU; done on
the event loop it would stall every stream. Each call here runs in a worker thread and goes
through the one prompt helper, `lmscope.engine.prompts`, so the server tokenizes exactly as the
in-process API does.

Thread safety: a Hugging Face fast tokenizer wraps a Rust object that `encode` may borrow
mutably (padding/truncation state), and two threads encoding at once can fail with "Already
borrowed". Every encode the server does for a model therefore holds that model's
`tokenizer_lock`. The engine thread only decodes (an immutable borrow of the vocabulary), which
is safe alongside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio

from lmscope.engine.errors import GenerationError
from lmscope.engine.prompts import check_token_ids, encode_messages, encode_text
from lmscope.serve.errors import APIError
from lmscope.serve.protocol import ChatMessage

__all__ = ["chat_prompt", "completion_prompts", "encode_locked"]

T = TypeVar("T")


def encode_locked(lock: threading.Lock, work: Callable[[], T]) -> T:
    with lock:
        return work()


async def _in_thread(lock: threading.Lock, work: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(encode_locked, lock, work)


def _bad_prompt(err: Exception, param: str) -> APIError:
    return APIError(400, str(err), param=param, code="invalid_value")


def _first_token(tokenizer: Any) -> list[int]:
    """An empty text prompt starts from the boundary token, as OpenAI's API and GPT-2 do."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return [value]
    raise APIError(400, "the prompt is empty; send at least one token", param="prompt")


def _completion_ids(
    tokenizer: Any, prompt: str | Sequence[Any], vocab_size: int
) -> list[list[int]]:
    if isinstance(prompt, str):
        texts: list[Any] = [prompt]
    elif all(isinstance(p, int) for p in prompt):
        texts = [list(prompt)]
    else:
        texts = list(prompt)
    out = []
    for i, item in enumerate(texts):
        param = "prompt" if len(texts) == 1 else f"prompt.[{i}]"
        try:
            if isinstance(item, str):
                ids = encode_text(tokenizer, item) if item else _first_token(tokenizer)
            else:
                ids = check_token_ids(item, vocab_size)
        except GenerationError as err:
            code = "invalid_value" if isinstance(item, str) else "invalid_token_id"
            raise APIError(400, str(err), param=param, code=code) from None
        out.append(ids)
    return out


async def completion_prompts(served: Any, prompt: str | Sequence[Any]) -> list[list[int]]:
    """The token ids of each prompt of a /v1/completions request (text, texts, ids or id lists)."""
    vocab = served.model.cfg.vocab_size
    return await _in_thread(
        served.tokenizer_lock, lambda: _completion_ids(served.tokenizer, prompt, vocab)
    )


def _chat_ids(tokenizer: Any, messages: list[dict[str, Any]], model_id: str) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(
            400, f"model {model_id} has no chat template; use /v1/completions", param="messages"
        )
    try:
        return encode_messages(tokenizer, messages)
    except GenerationError as err:
        raise _bad_prompt(err, "messages") from None
    except Exception as err:  # a template that raises on these messages (jinja, missing keys)
        raise APIError(
            400, f"cannot apply the chat template: {err}", param="messages", code="invalid_value"
        ) from None


async def chat_prompt(
    served: Any, messages: list[ChatMessage], render: Callable[..., list[int]] | None = None
) -> list[int]:
    """The token ids of a chat request, rendered with the model's chat template.

    render: an alternative renderer `(tokenizer, messages) -> ids` (e.g. one that passes tools to
    the template); it runs under the same lock, off the event loop.
    """
    chat = [m.for_template() for m in messages]
    if render is None:
        return await _in_thread(
            served.tokenizer_lock, lambda: _chat_ids(served.tokenizer, chat, served.id)
        )
    renderer = render
    return await _in_thread(served.tokenizer_lock, lambda: renderer(served.tokenizer, chat))
