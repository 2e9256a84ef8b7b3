"""serve.prompts: prompts become token ids in a worker thread (never on the event loop), under
the model's tokenizer lock, through the one prompt helper; template failures are 400s."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from lmscope.serve.errors import APIError
from lmscope.serve.prompts import chat_prompt, completion_prompts
from lmscope.serve.protocol import ChatMessage


class RecordingTokenizer:
    """Encodes characters as ids and records which thread encoded and whether the lock was
    held."""

    bos_token_id = 1
    eos_token_id = 2

    def __init__(self, lock: threading.Lock, template: str | None = "{{ messages }}") -> None:
        self.lock = lock
        self.chat_template = template
        self.calls: list[tuple[int, bool]] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls.append((threading.get_ident(), self.lock.locked()))
        return ([self.bos_token_id] if add_special_tokens else []) + [ord(c) for c in text]

    def apply_chat_template(self, messages: list[dict[str, Any]], **_: Any) -> str:
        if self.chat_template == "broken":
            raise RuntimeError("template exploded")
        return "|".join(f"{m['role']}:{m['content']}" for m in messages)


def served(template: str | None = "{{ messages }}") -> Any:
    lock = threading.Lock()
    return SimpleNamespace(
        id="fake",
        tokenizer=RecordingTokenizer(lock, template),
        tokenizer_lock=lock,
        model=SimpleNamespace(cfg=SimpleNamespace(vocab_size=1000)),
    )


def run(coro: Any) -> Any:
    async def with_loop_thread() -> tuple[Any, int]:
        return await coro, threading.get_ident()

    return asyncio.run(with_loop_thread())


def test_text_prompts_are_encoded_off_the_loop_under_the_lock() -> None:
    model = served()
    ids, loop_thread = run(completion_prompts(model, ["ab", "c"]))
    assert ids == [[1, 97, 98], [1, 99]]
    assert model.tokenizer.calls and all(
        thread != loop_thread and locked for thread, locked in model.tokenizer.calls
    )


def test_chat_prompt_is_rendered_off_the_loop_under_the_lock() -> None:
    model = served()
    messages = [ChatMessage(role="user", content="hi")]
    ids, loop_thread = run(chat_prompt(model, messages))
    assert ids == [ord(c) for c in "user:hi"]  # no BOS: the template carries the special tokens
    assert all(thread != loop_thread and locked for thread, locked in model.tokenizer.calls)


def test_token_ids_and_empty_text() -> None:
    model = served()
    ids, _ = run(completion_prompts(model, [[5, 6], [7]]))
    assert ids == [[5, 6], [7]]
    ids, _ = run(completion_prompts(model, ""))
    assert ids == [[1]]  # an empty prompt starts from BOS
    with pytest.raises(APIError) as info:
        run(completion_prompts(model, [[5], [1000]]))
    assert info.value.param == "prompt.[1]" and info.value.code == "invalid_token_id"


@pytest.mark.parametrize("template", [None, "broken"])
def test_chat_template_problems_are_400_on_messages(template: str | None) -> None:
    with pytest.raises(APIError) as info:
        run(chat_prompt(served(template), [ChatMessage(role="user", content="hi")]))
    assert info.value.status == 400 and info.value.param == "messages"
