"""Where evaluation sends its work: a model in this process, or any OpenAI-compatible endpoint.

Both score `Window`s (log-probabilities of target tokens) and complete prompts. The endpoint
scores through `echo` + `logprobs` + `max_tokens: 0` on token-id prompts (lm-evaluation-harness
does the same), so windows are cut with the local tokenizer and the server never re-tokenises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lmscope.evaluate.errors import EvalError
from lmscope.evaluate.loglik import Window, score_windows

Progress = Callable[[int], None]


class Backend(Protocol):
    name: str
    source: str
    tokenizer: Any
    n_ctx: int

    def info(self) -> dict[str, Any]: ...
    def score(self, windows: Sequence[Window], progress: Progress | None) -> list[torch.Tensor]: ...
    def complete(
        self, prompts: Sequence[str], max_tokens: int, temperature: float, stop: Sequence[str]
    ) -> list[str]: ...


@dataclass
class LocalBackend:
    """A model loaded in this process (`lmscope.zoo.registry.load`)."""

    lm: Any  # LoadedModel

    def __post_init__(self) -> None:
        if self.lm.tokenizer is None:
            raise EvalError(f"model {self.lm.name!r} has no tokenizer; evaluation needs one")
        self.name, self.source = self.lm.name, str(self.lm.source)
        self.tokenizer = self.lm.tokenizer
        self.n_ctx = int(self.lm.model.cfg.n_ctx)

    def info(self) -> dict[str, Any]:
        cfg = self.lm.model.cfg
        return {"n_layers": cfg.n_layers, "n_ctx": cfg.n_ctx, "vocab_size": cfg.vocab_size}

    def score(self, windows: Sequence[Window], progress: Progress | None) -> list[torch.Tensor]:
        return score_windows(self.lm.model, windows, progress=progress)

    def complete(
        self, prompts: Sequence[str], max_tokens: int, temperature: float, stop: Sequence[str]
    ) -> list[str]:
        from lmscope.engine import generate_batch

        results = generate_batch(
            self.lm.model,
            self.lm.tokenizer,
            list(prompts),
            max_new_tokens=max_tokens,
            temperature=temperature,
            stop=tuple(stop),
            seed=0,
            truncate="left",
            max_batch_size=8,
        )
        return [r.text for r in results]


class EndpointBackend:
    """An OpenAI-compatible server (`/v1/completions` with echo + logprobs for scoring)."""

    def __init__(
        self, url: str, model: str, tokenizer: Any, n_ctx: int, api_key: str | None
    ) -> None:
        import httpx

        self.name, self.source, self.tokenizer, self.n_ctx = model, url, tokenizer, n_ctx
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=600)

    def info(self) -> dict[str, Any]:
        return {"endpoint": self.source, "n_ctx": self.n_ctx}

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = self._client.post("/v1/completions", json=body)
        except httpx.HTTPError as err:
            raise EvalError(f"cannot reach the endpoint {self.source}: {err}") from None
        if response.status_code != 200:
            raise EvalError(
                f"the endpoint {self.source} answered {response.status_code}: {response.text[:300]}"
            )
        result: dict[str, Any] = response.json()
        return result

    def score(self, windows: Sequence[Window], progress: Progress | None) -> list[torch.Tensor]:
        out = []
        for w in windows:
            ids = [*w.inputs, w.targets[-1]]
            body = {"model": self.name, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}
            choice = self._post(body)["choices"][0]
            logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
            if len(logprobs) != len(ids):
                raise EvalError(
                    f"the endpoint {self.source} returned {len(logprobs)} prompt log-probabilities "
                    f"for {len(ids)} tokens; it must support echo with logprobs"
                )
            out.append(torch.tensor(logprobs[-w.n_scored :], dtype=torch.float64))
            if progress is not None:
                progress(w.n_scored)
        return out

    def complete(
        self, prompts: Sequence[str], max_tokens: int, temperature: float, stop: Sequence[str]
    ) -> list[str]:
        texts = []
        for prompt in prompts:
            body = {"model": self.name, "prompt": prompt, "max_tokens": max_tokens,
                    "temperature": temperature, "seed": 0}  # fmt: skip
            if stop:
                body["stop"] = list(stop)
            texts.append(str(self._post(body)["choices"][0]["text"]))
        return texts


def endpoint_tokenizer(source: str) -> Any:
    """A Hugging Face tokenizer for cutting windows: a checkpoint directory, or an embedded
    model's name (its converted cache)."""
    from pathlib import Path

    from lmscope.zoo.checkpoint import load_tokenizer
    from lmscope.zoo.default import EMBEDDED_MODELS

    if Path(source).is_dir():
        tokenizer = load_tokenizer(source)
    elif source in EMBEDDED_MODELS:
        from lmscope.zoo.registry import load

        entry = EMBEDDED_MODELS[source]
        tokenizer = (
            load_tokenizer(entry.cache_dir()) if entry.is_cached() else load(source).tokenizer
        )
    else:
        raise EvalError(
            f"--tokenizer {source!r} is neither a checkpoint directory nor an embedded model"
        )
    if tokenizer is None:
        raise EvalError(f"{source} holds no tokenizer")
    return tokenizer


class ShardedBackend(LocalBackend):
    """A local model in each of several processes started by `torchrun`: every process scores
    and completes its share of the work (every world_size-th item after sorting by length, so
    shares cost about the same), then all shares are gathered in the original order, so each
    process ends with the same results a single process computes."""

    def __init__(self, lm: Any, info: Any) -> None:
        super().__init__(lm)
        self.dist = info

    def _mine(self, n: int, key: Callable[[int], int]) -> list[int]:
        order = sorted(range(n), key=key, reverse=True)
        return order[self.dist.rank :: self.dist.world_size]

    def _gather(self, n: int, mine: list[int], values: list[Any]) -> list[Any]:
        from lmscope.train.distributed import gather_objects

        out: list[Any] = [None] * n
        for indices, results in gather_objects((mine, values), self.dist):
            for index, value in zip(indices, results, strict=True):
                out[index] = value
        return out

    def score(self, windows: Sequence[Window], progress: Progress | None) -> list[torch.Tensor]:
        mine = self._mine(len(windows), lambda i: len(windows[i].inputs))
        own = super().score([windows[i] for i in mine], progress if self.dist.is_main else None)
        return self._gather(len(windows), mine, own)

    def complete(
        self, prompts: Sequence[str], max_tokens: int, temperature: float, stop: Sequence[str]
    ) -> list[str]:
        mine = self._mine(len(prompts), lambda i: len(prompts[i]))
        own = super().complete([prompts[i] for i in mine], max_tokens, temperature, stop)
        return self._gather(len(prompts), mine, own)
