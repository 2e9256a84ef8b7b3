"""Explanations over HTTP: routes, heads, neurons, logit lens and saliency of a prompt.

Every request names its prompt the same way (`prompt` text or token ids, or chat `messages`,
plus an optional `completion` appended after it) so the endpoints stay stateless; a small LRU
of traced prompts (see `explain_cache`) makes repeated questions about one prompt cheap. The
work runs on a worker thread under `ServerState.explain_lock`, so the event loop and the
generation engine keep going while an explanation is computed.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from lmscope.explain import (
    attention_pattern,
    attention_rollout,
    gradient_x_input,
    head_contribution_map,
    head_contributions,
    head_importance,
    integrated_gradients,
    logit_lens,
    promoted_by_block,
    promoted_by_head,
    promoted_by_neuron,
    top_neurons,
)
from lmscope.explain.errors import (
    EmptyPromptError,
    ExplainInputError,
    PromptTooLongError,
    TargetOutOfRangeError,
    ThresholdError,
    check_position,
    check_tau,
)
from lmscope.serve.errors import APIError
from lmscope.serve.explain_cache import TraceCache, TracedPrompt, explain_traced, trace_prompt
from lmscope.serve.schemas import ChatMessage
from lmscope.serve.state import ServedModel, ServerState

router = APIRouter(tags=["explain"])

# Explanations hold T x T x heads x layers patterns and flow; longer prompts get slow and big.
MAX_EXPLAIN_TOKENS = 512
CACHE_ENTRIES = 8
CACHE_BYTES = 1 << 30

T = TypeVar("T")
_cache_lock = threading.Lock()


# ---- request schemas ------------------------------------------------------------------------
class PromptFields(BaseModel):
    """How every explain request names its prompt."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | list[int] | None = Field(
        default=None, description="text (tokenized like /v1/completions) or token ids"
    )
    messages: list[ChatMessage] | None = Field(
        default=None, description="chat messages, rendered with the model's chat template"
    )
    completion: str | None = Field(
        default=None, description="generated text appended after the prompt (no special tokens)"
    )
    norm: Literal["l1", "l2"] = "l1"

    @model_validator(mode="after")
    def _one_prompt(self) -> PromptFields:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class ExplainRequest(PromptFields):
    target: int = Field(default=-1, description="token position whose prediction is explained")
    completion_target: int | None = Field(
        default=None,
        description="index of a completion token (0 = first); explains the prediction of it "
        "(position n_prompt_tokens + index - 1) and overrides target",
    )
    tau: float = Field(default=0.04, description="route threshold in [0, 1]")
    renormalise: bool = False
    k: int = Field(default=10, ge=1, le=100)
    saliency: bool = True


class RoutesRequest(PromptFields):
    target: int = -1
    tau: float = 0.04
    renormalise: bool = False


class HeadRequest(PromptFields):
    layer: int
    head: int = Field(ge=0)
    target: int = Field(default=-1, description="query position (the edge's target token)")
    source: int | None = Field(default=None, description="key position of an attention edge")
    k: int = Field(default=10, ge=1, le=100)


class NeuronsRequest(PromptFields):
    layer: int
    position: int = -1
    k: int = Field(default=10, ge=1, le=100)
    vocab_k: int = Field(default=5, ge=1, le=50, description="tokens shown per neuron")


class LensRequest(PromptFields):
    node: str = Field(description="'embed', 'L3/resid_mid', 'L3/resid_post' or a route node id")
    position: int | None = Field(default=None, description="default: from the node id, else -1")
    k: int = Field(default=10, ge=1, le=100)
    final_norm: bool = True


class SaliencyRequest(PromptFields):
    method: Literal["gradient_x_input", "integrated_gradients", "attention_rollout"] = (
        "gradient_x_input"
    )
    target: int = Field(default=-1, description="position whose prediction is attributed")
    token: int | str | None = Field(default=None, description="token explained (default: top)")
    foil: int | str | None = Field(default=None, description="contrast token: score(token - foil)")
    score: Literal["logit", "logprob"] = "logit"
    n_steps: int = Field(default=32, ge=1, le=512)
    residual: float = Field(default=0.5, ge=0.0, le=1.0, description="attention rollout only")


# ---- plumbing --------------------------------------------------------------------------------
@dataclass
class Prompt:
    served: ServedModel
    tokens: list[int]
    n_prompt_tokens: int
    text: str | None

    def decode(self, token: int) -> str:
        return str(self.served.tokenizer.decode([token]))

    def extras(self, entry: TracedPrompt, cached: bool) -> dict[str, Any]:
        return {
            "model": self.served.id,
            "tokens": entry.tokens,
            "token_strs": entry.token_strs,
            "n_prompt_tokens": self.n_prompt_tokens,
            "cached": cached,
        }


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.lm
    return state


def _cache(request: Request) -> TraceCache:
    with _cache_lock:
        cache: TraceCache | None = getattr(request.app.state, "explain_cache", None)
        if cache is None:
            cache = TraceCache(CACHE_ENTRIES, CACHE_BYTES)
            request.app.state.explain_cache = cache
        return cache


def _encode(served: ServedModel, body: PromptFields) -> Prompt:
    tok = served.tokenizer
    vocab = served.model.cfg.vocab_size
    if isinstance(body.prompt, str):
        if not body.prompt:
            raise APIError(400, "the prompt is empty; give some text to explain", param="prompt")
        ids = list(tok.encode(body.prompt, add_special_tokens=True))
        text: str | None = body.prompt
    elif body.prompt is not None:
        ids = list(body.prompt)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise APIError(
                400, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})", param="prompt"
            )
        text = None
    else:
        ids, text = _chat_ids(served, body.messages or [])
    n_prompt = len(ids)
    if body.completion:
        ids += list(tok.encode(body.completion, add_special_tokens=False))
        text = None if text is None else text + body.completion
    if not ids:
        raise APIError(400, "the prompt is empty (it has no tokens)", param="prompt")
    limit = min(int(served.model.cfg.n_ctx), MAX_EXPLAIN_TOKENS)
    if len(ids) > limit:
        raise APIError(
            400,
            f"the prompt has {len(ids)} tokens but explanations take at most {limit} on this "
            f"model; shorten the prompt",
            param="prompt",
            code="context_length_exceeded",
        )
    return Prompt(served, ids, n_prompt, text)


def _chat_ids(served: ServedModel, messages: list[ChatMessage]) -> tuple[list[int], str]:
    tok = served.tokenizer
    if not messages:
        raise APIError(400, "messages is empty; give at least one message", param="messages")
    if not getattr(tok, "chat_template", None):
        raise APIError(400, f"model {served.id} has no chat template; use prompt", param="messages")
    chat = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception as err:
        raise APIError(400, f"cannot apply the chat template: {err}", param="messages") from None
    return list(tok.encode(text, add_special_tokens=False)), str(text)


def _param_of(err: ValueError, fields: set[str]) -> tuple[str | None, str]:
    """The request field an explain error is about, and an error code."""
    if isinstance(err, EmptyPromptError):
        return "prompt", "invalid_value"
    if isinstance(err, PromptTooLongError):
        return "prompt", "context_length_exceeded"
    if isinstance(err, ThresholdError):
        return "tau", "invalid_value"
    words = str(err).split()
    first = words[0] if words else ""
    if first in fields:
        return first, "invalid_value"
    if isinstance(err, TargetOutOfRangeError):
        return ("target" if "target" in fields else "position"), "invalid_value"
    return None, "invalid_value"


async def _work(request: Request, body: BaseModel, fn: Callable[[], T]) -> T:
    """Run `fn` on a worker thread under the explain semaphore; explain errors become 400s."""
    state = _state(request)
    fields = set(type(body).model_fields)

    def locked() -> T:
        if not state.explain_lock.acquire(timeout=state.settings.request_timeout):
            raise APIError(
                429, "explanations are busy; retry shortly", headers={"Retry-After": "2"}
            )
        try:
            return fn()
        except (ExplainInputError, ValueError) as err:
            param, code = _param_of(err, fields)
            raise APIError(400, str(err), param=param, code=code) from None
        finally:
            state.explain_lock.release()

    return await run_in_threadpool(locked)


def _traced(request: Request, prompt: Prompt) -> tuple[TracedPrompt, bool]:
    """The cached trace of the prompt (call on the worker thread)."""
    served = prompt.served
    return _cache(request).get_or_build(
        (served.id, tuple(prompt.tokens)),
        lambda: trace_prompt(served.id, served.model, prompt.tokens, prompt.decode),
    )


async def _prepare(request: Request, body: PromptFields) -> Prompt:
    """Resolve the model and tokenize (off the event loop: prompts can be long)."""
    served = _state(request).resolve(body.model)
    return await run_in_threadpool(_encode, served, body)


def _tau(tau: float) -> float:
    try:
        return check_tau(tau)
    except ThresholdError as err:
        raise APIError(400, str(err), param="tau", code="invalid_value") from None


def _token_id(prompt: Prompt, value: int | str | None, param: str) -> int | None:
    """A token given as an id or as text that is exactly one token."""
    if value is None:
        return None
    vocab = prompt.served.model.cfg.vocab_size
    if isinstance(value, int):
        if not 0 <= value < vocab:
            raise APIError(400, f"{param} id {value} is outside [0, {vocab})", param=param)
        return value
    ids = list(prompt.served.tokenizer.encode(value, add_special_tokens=False))
    if len(ids) != 1:
        raise APIError(
            400,
            f"{param} {value!r} is {len(ids)} tokens; give a single token (text or id)",
            param=param,
        )
    return int(ids[0])


def _completion_position(prompt: Prompt, index: int) -> tuple[int, int]:
    """(position whose prediction produced completion token `index`, that token's id)."""
    n_completion = len(prompt.tokens) - prompt.n_prompt_tokens
    if n_completion == 0:
        raise APIError(400, "completion_target needs a completion", param="completion_target")
    if not 0 <= index < n_completion or prompt.n_prompt_tokens + index == 0:
        raise APIError(
            400,
            f"completion_target {index} is out of range; the completion has {n_completion} "
            f"tokens (0..{n_completion - 1})",
            param="completion_target",
        )
    position = prompt.n_prompt_tokens + index
    return position - 1, prompt.tokens[position]


def _next_token(
    entry: TracedPrompt, target: int, decode: Callable[[int], str]
) -> dict[str, Any] | None:
    """The token that actually follows `target` in the text, with its rank and probability."""
    if target + 1 >= len(entry.tokens):
        return None
    token = entry.tokens[target + 1]
    logits = entry.view.trace.logits[0, target].float()
    prob = float(logits.double().softmax(-1)[token])
    rank = int((logits > logits[token]).sum())
    return {"token": token, "text": decode(token), "rank": rank, "prob": round(prob, 7)}


# ---- routes ------------------------------------------------------------------------------------
@router.post("/v1/explain")
async def explain_prompt(body: ExplainRequest, request: Request) -> dict[str, Any]:
    """The full explanation of one target position: routes, lens, heads, neurons, saliency."""
    tau = _tau(body.tau)
    prompt = await _prepare(request, body)

    target, saliency_token = body.target, None
    if body.completion_target is not None:
        target, saliency_token = _completion_position(prompt, body.completion_target)

    def work() -> dict[str, Any]:
        start = time.perf_counter()
        entry, cached = _traced(request, prompt)
        traced = time.perf_counter() - start
        ex = explain_traced(
            entry,
            target=target,
            tau=tau,
            renormalise=body.renormalise,
            norm=body.norm,
            k=body.k,
            saliency=body.saliency,
            saliency_token=saliency_token,
            decode=prompt.decode,
            prompt=prompt.text,
        )
        out = ex.to_dict()
        out["timings"] = {"trace": round(traced, 4), **out["timings"]}
        out["next_token"] = _next_token(entry, ex.target, prompt.decode)
        return {**out, **prompt.extras(entry, cached)}

    return await _work(request, body, work)


@router.post("/v1/explain/routes")
async def explain_routes(body: RoutesRequest, request: Request) -> dict[str, Any]:
    """Only the route graph (cheap on a cached prompt: re-thresholding for the tau slider)."""
    tau = _tau(body.tau)
    prompt = await _prepare(request, body)

    def work() -> dict[str, Any]:
        entry, cached = _traced(request, prompt)
        target = check_position(body.target, len(entry.tokens))
        routes = entry.flow(body.norm).routes(target, tau, renormalise=body.renormalise)
        return {"target": target, "routes": routes.to_dict(), **prompt.extras(entry, cached)}

    return await _work(request, body, work)


@router.post("/v1/explain/head")
async def explain_head(body: HeadRequest, request: Request) -> dict[str, Any]:
    """One head: its attention pattern, its contribution map and the tokens it promotes."""
    prompt = await _prepare(request, body)

    def work() -> dict[str, Any]:
        entry, cached = _traced(request, prompt)
        view, flow = entry.view, entry.flow(body.norm)
        target = check_position(body.target, len(entry.tokens))
        pattern = attention_pattern(view, body.layer, body.head)
        contribution = head_contribution_map(flow, body.layer, body.head)
        promotion = promoted_by_head(
            view.model, view, body.layer, body.head, target, body.k, prompt.decode
        )
        edge = None
        if body.source is not None:
            edge = head_contributions(flow, body.layer, target, body.source).to_dict()
        share = float(head_importance(flow, target)[pattern.layer, pattern.head])
        return {
            "layer": pattern.layer,
            "head": pattern.head,
            "label": pattern.label,
            "target": target,
            "source": edge["source"] if edge else None,
            "importance": round(share, 7),
            "attention": pattern.to_dict(),
            "contribution": contribution.to_dict(),
            "promotion": promotion.to_dict(),
            "edge": edge,
            **prompt.extras(entry, cached),
        }

    return await _work(request, body, work)


@router.post("/v1/explain/neurons")
async def explain_neurons(body: NeuronsRequest, request: Request) -> dict[str, Any]:
    """The top neurons of one MLP at a position, each with its vocabulary projection."""
    prompt = await _prepare(request, body)

    def work() -> dict[str, Any]:
        entry, cached = _traced(request, prompt)
        view = entry.view
        result = top_neurons(view, body.layer, body.position, k=body.k, norm=body.norm)
        out = result.to_dict()
        for row in out["neurons"]:
            projection = promoted_by_neuron(
                view.model, view, result.layer, row["neuron"], body.vocab_k, prompt.decode
            ).to_dict()
            row["promoted"] = projection["promoted"]
            row["suppressed"] = projection["suppressed"]
        block = promoted_by_block(
            view.model, view, "mlp", result.layer, result.position, body.vocab_k, prompt.decode
        )
        return {**out, "block": block.to_dict(), **prompt.extras(entry, cached)}

    return await _work(request, body, work)


def _node_position(node: str) -> int | None:
    """The position in a route-graph node id (`embed/3`, `L2/resid_mid/3`), if it has one."""
    found = re.fullmatch(r"(?:embed|L[0-9]+/[a-z_]+)/([0-9]+)", node)
    return int(found.group(1)) if found else None


@router.post("/v1/explain/lens")
async def explain_lens(body: LensRequest, request: Request) -> dict[str, Any]:
    """The logit lens of one residual node, with each token's rank at the previous node."""
    prompt = await _prepare(request, body)
    position = body.position
    if position is None:
        position = _node_position(body.node)
    node = body.node
    if _node_position(node) is not None:
        node = node.rsplit("/", 1)[0]

    def work() -> dict[str, Any]:
        entry, cached = _traced(request, prompt)
        view = entry.view
        result = logit_lens(
            view.model,
            view,
            node,
            -1 if position is None else position,
            k=body.k,
            final_norm=body.final_norm,
            decode=prompt.decode,
        )
        return {**result.to_dict(), **prompt.extras(entry, cached)}

    return await _work(request, body, work)


@router.post("/v1/explain/saliency")
async def explain_saliency(body: SaliencyRequest, request: Request) -> dict[str, Any]:
    """Input attribution of one prediction by gradient x input, integrated gradients or
    attention rollout."""
    prompt = await _prepare(request, body)
    token = _token_id(prompt, body.token, "token")
    foil = _token_id(prompt, body.foil, "foil")

    def work() -> dict[str, Any]:
        entry, cached = _traced(request, prompt)
        view, ids = entry.view, entry.tokens
        target = check_position(body.target, len(ids))
        if body.method == "attention_rollout":
            result = attention_rollout(view, target, residual=body.residual)
        elif body.method == "integrated_gradients":
            result = integrated_gradients(
                view.model, ids, target, token, foil, body.score, n_steps=body.n_steps
            )
        else:
            result = gradient_x_input(view.model, ids, target, token, foil, body.score)
        out = result.to_dict()
        out["target_text"] = None if result.target is None else prompt.decode(result.target)
        out["foil_text"] = None if result.foil is None else prompt.decode(result.foil)
        return {**out, **prompt.extras(entry, cached)}

    return await _work(request, body, work)
