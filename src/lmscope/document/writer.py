"""Prose writers: the embedded model in process (lmscope.engine) or any OpenAI-compatible
endpoint. A writer rewrites one template sentence at a time from the section's facts; the
verifier decides what is kept."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Protocol

from lmscope.document.errors import WriterError

MAX_NEW_TOKENS = 64
PROMPT = (
    "You write one sentence of the '{section}' section of a model card.\n{facts}"
    "Rewrite this sentence in clear, plain English. Keep every number and name exactly as "
    "given, add nothing that is not in the facts, answer with the sentence only.\n"
    "Sentence: {sentence}"
)
FACTS_CHARS = 1500  # facts beyond this are cut from the prompt (a small model's context is short)


# (section title, the section's facts, the template sentence to rewrite)
Job = tuple[str, dict[str, Any], str]


class Writer(Protocol):
    name: str

    def rewrite(self, jobs: list[Job]) -> list[str]:
        """One rewritten sentence per job ('' where it has none), in order."""
        ...


def prompt_for(section: str, facts: dict[str, Any] | None, sentence: str) -> str:
    """The request for one sentence; `facts` (the section's facts) is left out for small
    models, for which the template sentence already carries the facts it states."""
    text = ""
    if facts is not None:
        text = (
            "Facts (JSON): "
            + json.dumps(facts, separators=(",", ":"), default=str)[:FACTS_CHARS]
            + "\n"
        )
    return PROMPT.format(section=section, facts=text, sentence=sentence)


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip().strip('"')


def _end_sentence(text: str) -> str:
    """Put back the full stop that the '. ' stop string cut off."""
    return text + "." if text and text[-1] not in ".!?" else text


class EmbeddedWriter:
    """The embedded model, in process, batched through lmscope.engine."""

    def __init__(self, model_name: str = "smollm2-135m") -> None:
        from lmscope.engine import optimize_for_decoding
        from lmscope.zoo.registry import load

        self.name = f"{model_name} (embedded, in process)"
        self._loaded = load(model_name)
        optimize_for_decoding(self._loaded.model)

    def rewrite(self, jobs: list[Job]) -> list[str]:
        from lmscope.engine import generate_batch

        if not jobs:
            return []
        # small model, short context: the template sentence alone carries the facts it states
        prompts = [
            [{"role": "user", "content": prompt_for(title, None, s)}] for title, _, s in jobs
        ]
        results = generate_batch(
            self._loaded.model,
            self._loaded.tokenizer,
            prompts,
            max_new_tokens=MAX_NEW_TOKENS,
            temperature=0.0,
            stop=("\n", ". "),  # one sentence: the stop string is not part of the text
            truncate="left",
        )
        return [_end_sentence(first_line(r.text)) for r in results]


class EndpointWriter:
    """Any OpenAI-compatible /chat/completions endpoint (`--writer URL --writer-model NAME`)."""

    def __init__(self, url: str, model: str, timeout: float = 60.0) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.model = model
        self.timeout = timeout
        self.name = f"{model} at {url}"

    def _ask(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": MAX_NEW_TOKENS * 2,
            }
        ).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as err:
            raise WriterError(
                f"the writer at {self.url} answered HTTP {err.code}; check --writer-model "
                "or use --no-llm"
            ) from None
        except (urllib.error.URLError, OSError) as err:
            raise WriterError(
                f"cannot reach the writer at {self.url} ({err}); start it or use --no-llm"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return ""  # garbage: the template sentence stays
        try:
            return first_line(str(answer["choices"][0]["message"]["content"]))
        except (KeyError, IndexError, TypeError):
            return ""

    def rewrite(self, jobs: list[Job]) -> list[str]:
        return [self._ask(prompt_for(section, facts, s)) for section, facts, s in jobs]


def make_writer(url: str | None, model: str | None) -> Writer:
    if url:
        if not model:
            raise WriterError("--writer needs --writer-model NAME (the model to ask)")
        return EndpointWriter(url, model)
    return EmbeddedWriter(model or "smollm2-135m")
