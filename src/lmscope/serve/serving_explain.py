"""The logic behind the explanation routes: prompts, field checks and the trace cache.

A small LRU of traced prompts (see `explain_cache`) makes repeated questions about one prompt
cheap. The work runs on the explain workers of `explain_runner`, which stop it when the client
disconnects or the request times out (499 or 408).

Request fields are checked before any work with the explain library's own checks, each against
the field it is about, so every error names its `param` without reading its message.
"""

from __future__ import annotations

import copy
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from lmscope.engine.errors import GenerationError
from lmscope.engine.prompts import check_token_ids, encode_messages, encode_text
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
    route_faithfulness,
    top_neurons,
)
from lmscope.explain.budget import DEFAULT_MEMORY_BUDGET, check_cancelled
from lmscope.explain.errors import ExplainInputError, check_position
from lmscope.explain.heads import check_head, check_layer
from lmscope.explain.lens import parse_node
from lmscope.model.transformer import Transformer
from lmscope.serve.errors import APIError
from lmscope.serve.explain_cache import TraceCache, TracedPrompt, explain_traced, trace_prompt
from lmscope.serve.explain_runner import ExplainRunner, ShouldStop, Work
from lmscope.serve.prompts import encode_locked
from lmscope.serve.protocol.common import FieldError
from lmscope.serve.protocol.explain import (
    ExplainRequest,
    ExplainResponse,
    HeadRequest,
    HeadResponse,
    LensRequest,
    LensResponse,
    NeuronsRequest,
    NeuronsResponse,
    NextToken,
    PromptFields,
    RoutesRequest,
    RoutesResponse,
    SaliencyRequest,
    SaliencyResponse,
    TokenRef,
)
from lmscope.serve.serving import invalid_token_id
from lmscope.serve.state import ServedModel, ServerState

# Explanations hold T x T x heads x layers patterns and flow; longer prompts get slow and big.
MAX_EXPLAIN_TOKENS = 512
CACHE_ENTRIES = 8
CACHE_BYTES = 1 << 30
# Activation bytes one integrated-gradients pass may hold; the steps are chunked to fit.
IG_MEMORY_BUDGET = DEFAULT_MEMORY_BUDGET

T = TypeVar("T")


@dataclass
class Prompt:
    """A request's prompt as token ids, with the model that explains it."""

    served: ServedModel
    tokens: list[int]
    n_prompt_tokens: int
    text: str | None

    def decode(self, token: int) -> str:
        return str(self.served.tokenizer.decode([token]))

    def echo(self, entry: TracedPrompt, cached: bool) -> dict[str, Any]:
        """The `PromptEcho` fields of a response."""
        return {
            "model": self.served.id,
            "tokens": entry.tokens,
            "token_strs": entry.token_strs,
            "n_prompt_tokens": self.n_prompt_tokens,
            "cached": cached,
            "weights": self.served.weights,
        }


def encode_prompt(served: ServedModel, body: PromptFields) -> Prompt:
    """Token ids of the request's prompt (+ completion) through the engine's prompt helpers."""
    tok, cfg = served.tokenizer, served.model.cfg
    text: str | None = None
    try:
        if isinstance(body.prompt, str):
            if not body.prompt:
                raise FieldError("the prompt is empty; give some text to explain", "prompt")
            ids, text = encode_text(tok, body.prompt), body.prompt
        elif body.prompt is not None:
            try:
                ids = check_token_ids(body.prompt, cfg.vocab_size)
            except GenerationError as err:
                raise invalid_token_id(str(err), "prompt") from None
        else:
            ids = _chat_ids(tok, body)
    except GenerationError as err:
        raise FieldError(str(err), "prompt" if body.prompt is not None else "messages") from None
    n_prompt = len(ids)
    if body.completion:
        ids = ids + encode_text(tok, body.completion, add_special_tokens=False)
        text = None if text is None else text + body.completion
    if not ids:
        raise FieldError("the prompt is empty (it has no tokens)", "prompt")
    limit = min(int(cfg.n_ctx), MAX_EXPLAIN_TOKENS)
    if len(ids) > limit:
        raise APIError(
            400,
            f"the prompt has {len(ids)} tokens but explanations take at most {limit} on this "
            f"model; shorten the prompt",
            param="prompt",
            code="context_length_exceeded",
        )
    return Prompt(served, ids, n_prompt, text)


def _chat_ids(tokenizer: Any, body: PromptFields) -> list[int]:
    messages = body.messages or []
    if not messages:
        raise FieldError("messages is empty; give at least one message", "messages")
    try:
        return encode_messages(tokenizer, [m.for_template() for m in messages])
    except GenerationError:
        raise
    except Exception as err:  # a template error (jinja raises its own types)
        raise FieldError(f"cannot apply the chat template: {err}", "messages") from None


# The code of a 400 for a position, layer or head outside what this prompt or model has: a
# limit that depends on the model and the prompt's tokens, so no JSON schema can state it.
OUT_OF_RANGE = "out_of_range"
NOT_ONE_TOKEN = "not_one_token"  # a `token`/`foil` text that is not exactly one token


def checked(param: str, check: Callable[..., T], *args: Any) -> T:
    """Run one of the explain library's range checks; its error becomes a 400 about `param`."""
    try:
        return check(*args)
    except ExplainInputError as err:
        raise APIError(400, str(err), param=param, code=OUT_OF_RANGE) from None


def node_position(node: str) -> int | None:
    """The position in a route-graph node id (`embed/3`, `L2/resid_mid/3`), if it has one."""
    found = re.fullmatch(r"(?:embed|L[0-9]+/[a-z_]+)/([0-9]+)", node)
    return int(found.group(1)) if found else None


def next_token(entry: TracedPrompt, target: int, decode: Callable[[int], str]) -> NextToken | None:
    """The token that actually follows `target` in the text, with its rank and probability."""
    if target + 1 >= len(entry.tokens):
        return None
    token = entry.tokens[target + 1]
    logits = entry.view.trace.logits[0, target].float()
    prob = float(logits.double().softmax(-1)[token])
    rank = int((logits > logits[token]).sum())
    return NextToken(token=token, text=decode(token), rank=rank, prob=round(prob, 7))


def token_id(prompt: Prompt, value: TokenRef | None, param: str) -> int | None:
    """A token given as an id or as text that is exactly one token (hold the tokenizer lock)."""
    if value is None:
        return None
    vocab = prompt.served.model.cfg.vocab_size
    if isinstance(value, int):
        if not 0 <= value < vocab:
            raise invalid_token_id(f"{param} id {value} is outside [0, {vocab})", param)
        return value
    ids = encode_text(prompt.served.tokenizer, value, add_special_tokens=False)
    if len(ids) != 1:
        raise APIError(
            400,
            f"{param} {value!r} is {len(ids)} tokens; give a single token (text or id)",
            param=param,
            code=NOT_ONE_TOKEN,
        )
    return ids[0]


def isolated(model: Transformer) -> Transformer:
    """A copy of the model's modules that shares its weights (no tensor is copied).

    Interventions register hooks on the model's hook points; on the served model they would
    also reach the completions and explanations other requests run at the same time, so the
    route check ablates components on a copy of its own.
    """
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    prepacked = getattr(model, "_prepacked", None)
    if prepacked is not None:
        memo[id(prepacked)] = prepacked
    return copy.deepcopy(model, memo)


async def tokenizing(served: ServedModel, work: Callable[[], T]) -> T:
    """`work` on a worker thread holding the model's tokenizer lock (see `serve.prompts`)."""
    return await run_in_threadpool(encode_locked, served.tokenizer_lock, work)


class ExplainServing:
    """One server's explanation service: its trace cache and its workers."""

    def __init__(self, state: ServerState, cache: TraceCache | None = None) -> None:
        self.state = state
        self.cache = cache if cache is not None else TraceCache(CACHE_ENTRIES, CACHE_BYTES)
        self.runner = ExplainRunner(state.settings.explain_workers)

    @classmethod
    def of(cls, request: Request) -> ExplainServing:
        """The app's service, made on first use (on the event loop, so without a race)."""
        app_state = request.app.state
        serving: ExplainServing | None = getattr(app_state, "explain_serving", None)
        if serving is None:
            serving = cls(app_state.lm)
            app_state.explain_serving = serving
        return serving

    # ---- plumbing ----------------------------------------------------------------------------
    async def prepare(self, request: Request, body: PromptFields) -> Prompt:
        """Resolve the model and tokenize (off the event loop: prompts can be long)."""
        served = self.state.resolve(body.model)
        prompt = await tokenizing(served, lambda: encode_prompt(served, body))
        request.state.log = {"model": served.id, "tokens_in": len(prompt.tokens), "tokens_out": 0}
        return prompt

    async def run(self, request: Request, work: Work[T]) -> T:
        """`work(should_stop)` on an explain worker (see `explain_runner`)."""
        return await self.runner.run(request, self.state.settings.request_timeout, work)

    def traced(self, prompt: Prompt, should_stop: ShouldStop) -> tuple[TracedPrompt, bool]:
        """The cached trace of the prompt (call on the worker thread)."""
        served = prompt.served
        return self.cache.get_or_build(
            (served.id, tuple(prompt.tokens)),
            lambda: trace_prompt(
                served.id, served.model, prompt.tokens, prompt.decode, should_stop=should_stop
            ),
        )

    @staticmethod
    def _layer_head(prompt: Prompt, layer: int, head: int | None = None) -> None:
        cfg = prompt.served.model.cfg
        checked("layer", check_layer, layer, cfg.n_layers)
        if head is not None:
            checked("head", check_head, head, cfg.n_heads)

    # ---- endpoints ---------------------------------------------------------------------------
    async def explain(self, request: Request, body: ExplainRequest) -> ExplainResponse:
        prompt = await self.prepare(request, body)
        target, saliency_token = body.target, None
        if body.completion_target is not None:
            target, saliency_token = self._completion_position(prompt, body.completion_target)
        target = checked("target", check_position, target, len(prompt.tokens), "target")

        def work(should_stop: ShouldStop) -> ExplainResponse:
            start = time.perf_counter()
            entry, cached = self.traced(prompt, should_stop)
            traced = time.perf_counter() - start
            ex = explain_traced(
                entry,
                target=target,
                tau=body.tau,
                renormalise=body.renormalise,
                norm=body.norm,
                k=body.k,
                saliency=body.saliency,
                saliency_token=saliency_token,
                decode=prompt.decode,
                prompt=prompt.text,
                should_stop=should_stop,
            )
            out = ex.to_dict()
            out["timings"] = {"trace": round(traced, 4), **out["timings"]}
            out["next_token"] = next_token(entry, target, prompt.decode)
            if body.route_check:
                check_cancelled(should_stop, "the route check")
                start = time.perf_counter()
                # The token explained: the top prediction, or the completion's own token.
                watched = ex.prediction[0].token if saliency_token is None else saliency_token
                model = isolated(entry.view.model)
                check = route_faithfulness(model, entry.tokens, ex.routes, watched).to_dict()
                out["route_check"] = {**check, "target_text": prompt.decode(check["target"])}
                out["timings"]["route_check"] = round(time.perf_counter() - start, 4)
            return ExplainResponse(**{**out, **prompt.echo(entry, cached)})

        return await self.run(request, work)

    @staticmethod
    def _completion_position(prompt: Prompt, index: int) -> tuple[int, int]:
        """(position whose prediction produced completion token `index`, that token's id)."""
        n_completion = len(prompt.tokens) - prompt.n_prompt_tokens
        if n_completion == 0:
            raise FieldError("completion_target needs a completion", "completion_target")
        if not 0 <= index < n_completion or prompt.n_prompt_tokens + index == 0:
            raise APIError(
                400,
                f"completion_target {index} is out of range; the completion has {n_completion} "
                f"tokens (0..{n_completion - 1})",
                param="completion_target",
                code=OUT_OF_RANGE,
            )
        position = prompt.n_prompt_tokens + index
        return position - 1, prompt.tokens[position]

    async def routes(self, request: Request, body: RoutesRequest) -> RoutesResponse:
        prompt = await self.prepare(request, body)
        target = checked("target", check_position, body.target, len(prompt.tokens), "target")

        def work(should_stop: ShouldStop) -> RoutesResponse:
            entry, cached = self.traced(prompt, should_stop)
            flow = entry.flow(body.norm, should_stop=should_stop)
            routes = flow.routes(target, body.tau, renormalise=body.renormalise)
            return RoutesResponse(
                target=target, routes=routes.to_dict(), **prompt.echo(entry, cached)
            )

        return await self.run(request, work)

    async def head(self, request: Request, body: HeadRequest) -> HeadResponse:
        prompt = await self.prepare(request, body)
        n = len(prompt.tokens)
        self._layer_head(prompt, body.layer, body.head)
        target = checked("target", check_position, body.target, n, "target")
        source = None
        if body.source is not None:
            source = checked("source", check_position, body.source, n, "source")

        def work(should_stop: ShouldStop) -> HeadResponse:
            entry, cached = self.traced(prompt, should_stop)
            view, flow = entry.view, entry.flow(body.norm, should_stop=should_stop)
            pattern = attention_pattern(view, body.layer, body.head)
            promotion = promoted_by_head(
                view.model, view, body.layer, body.head, target, body.k, prompt.decode
            )
            edge = None
            if source is not None:
                edge = head_contributions(flow, body.layer, target, source).to_dict()
            share = float(head_importance(flow, target)[pattern.layer, pattern.head])
            return HeadResponse(
                layer=pattern.layer,
                head=pattern.head,
                label=pattern.label,
                target=target,
                source=source,
                importance=round(share, 7),
                attention=pattern.to_dict(),
                contribution=head_contribution_map(flow, body.layer, body.head).to_dict(),
                promotion=promotion.to_dict(),
                edge=edge,
                **prompt.echo(entry, cached),
            )

        return await self.run(request, work)

    async def neurons(self, request: Request, body: NeuronsRequest) -> NeuronsResponse:
        prompt = await self.prepare(request, body)
        self._layer_head(prompt, body.layer)
        position = checked(
            "position", check_position, body.position, len(prompt.tokens), "position"
        )

        def work(should_stop: ShouldStop) -> NeuronsResponse:
            entry, cached = self.traced(prompt, should_stop)
            view, k = entry.view, body.vocab_k
            result = top_neurons(view, body.layer, position, k=body.k, norm=body.norm)
            out = result.to_dict()
            for row in out["neurons"]:
                found = promoted_by_neuron(
                    view.model, view, result.layer, row["neuron"], k, prompt.decode
                ).to_dict()
                row["promoted"], row["suppressed"] = found["promoted"], found["suppressed"]
            block = promoted_by_block(
                view.model, view, "mlp", result.layer, result.position, k, prompt.decode
            )
            return NeuronsResponse(**out, block=block.to_dict(), **prompt.echo(entry, cached))

        return await self.run(request, work)

    async def lens(self, request: Request, body: LensRequest) -> LensResponse:
        prompt = await self.prepare(request, body)
        position, node = body.position, body.node
        if node_position(node) is not None:
            position = node_position(node) if position is None else position
            node = node.rsplit("/", 1)[0]
        checked("node", parse_node, node, prompt.served.model.cfg.n_layers)
        n = len(prompt.tokens)
        position = checked(
            "position", check_position, -1 if position is None else position, n, "position"
        )

        def work(should_stop: ShouldStop) -> LensResponse:
            entry, cached = self.traced(prompt, should_stop)
            view = entry.view
            result = logit_lens(
                view.model,
                view,
                node,
                position,
                k=body.k,
                final_norm=body.final_norm,
                decode=prompt.decode,
            )
            return LensResponse(**result.to_dict(), **prompt.echo(entry, cached))

        return await self.run(request, work)

    async def saliency(self, request: Request, body: SaliencyRequest) -> SaliencyResponse:
        prompt = await self.prepare(request, body)
        target = checked("target", check_position, body.target, len(prompt.tokens), "target")
        token, foil = await tokenizing(
            prompt.served,
            lambda: (token_id(prompt, body.token, "token"), token_id(prompt, body.foil, "foil")),
        )

        def work(should_stop: ShouldStop) -> SaliencyResponse:
            entry, cached = self.traced(prompt, should_stop)
            view, ids, model = entry.view, entry.tokens, entry.view.model
            if body.method == "attention_rollout":
                result = attention_rollout(view, target, residual=body.residual)
            elif body.method == "integrated_gradients":
                result = integrated_gradients(
                    model,
                    ids,
                    target,
                    token,
                    foil,
                    body.score,
                    body.n_steps,
                    memory_budget=IG_MEMORY_BUDGET,
                    should_stop=should_stop,
                )
            else:
                result = gradient_x_input(
                    model, ids, target, token, foil, body.score, should_stop=should_stop
                )
            out = {**result.to_dict(), **prompt.echo(entry, cached)}
            out["target_text"] = None if result.target is None else prompt.decode(result.target)
            out["foil_text"] = None if result.foil is None else prompt.decode(result.foil)
            return SaliencyResponse(**out)

        return await self.run(request, work)
