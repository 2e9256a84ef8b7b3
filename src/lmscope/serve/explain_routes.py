"""Explanations over HTTP: routes, heads, neurons, logit lens and saliency of a prompt, and
bias probes.

Thin routes: the typed requests and responses are in `protocol.explain`, the logic in
`serving_explain.ExplainServing`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from lmscope.serve.openapi_doc import error_responses
from lmscope.serve.protocol.explain import (
    BiasRequest,
    BiasResponse,
    ExplainRequest,
    ExplainResponse,
    HeadRequest,
    HeadResponse,
    LensRequest,
    LensResponse,
    NeuronsRequest,
    NeuronsResponse,
    RoutesRequest,
    RoutesResponse,
    SaliencyRequest,
    SaliencyResponse,
)
from lmscope.serve.serving_bias import explain_bias
from lmscope.serve.serving_explain import ExplainServing

router = APIRouter(tags=["explain"])
# 408 and 499: a long explanation stops when the request times out or its client leaves.
EXPLAIN_ERRORS = error_responses(400, 401, 404, 408, 413, 415, 429, 499, 503)


@router.post("/v1/explain", response_model=ExplainResponse, responses=EXPLAIN_ERRORS)
async def explain_prompt(body: ExplainRequest, request: Request) -> ExplainResponse:
    """The full explanation of one target position: routes, lens, heads, neurons, saliency."""
    return await ExplainServing.of(request).explain(request, body)


@router.post("/v1/explain/routes", response_model=RoutesResponse, responses=EXPLAIN_ERRORS)
async def explain_routes(body: RoutesRequest, request: Request) -> RoutesResponse:
    """Only the route graph (cheap on a cached prompt: re-thresholding for the tau slider)."""
    return await ExplainServing.of(request).routes(request, body)


@router.post("/v1/explain/head", response_model=HeadResponse, responses=EXPLAIN_ERRORS)
async def explain_head(body: HeadRequest, request: Request) -> HeadResponse:
    """One head: its attention pattern, its contribution map and the tokens it promotes."""
    return await ExplainServing.of(request).head(request, body)


@router.post("/v1/explain/neurons", response_model=NeuronsResponse, responses=EXPLAIN_ERRORS)
async def explain_neurons(body: NeuronsRequest, request: Request) -> NeuronsResponse:
    """The top neurons of one MLP at a position, each with its vocabulary projection."""
    return await ExplainServing.of(request).neurons(request, body)


@router.post("/v1/explain/lens", response_model=LensResponse, responses=EXPLAIN_ERRORS)
async def explain_lens(body: LensRequest, request: Request) -> LensResponse:
    """The logit lens of one residual node, with each token's rank at the previous node."""
    return await ExplainServing.of(request).lens(request, body)


@router.post("/v1/explain/saliency", response_model=SaliencyResponse, responses=EXPLAIN_ERRORS)
async def explain_saliency(body: SaliencyRequest, request: Request) -> SaliencyResponse:
    """Input attribution of one prediction by gradient x input, integrated gradients or
    attention rollout."""
    return await ExplainServing.of(request).saliency(request, body)


@router.post("/v1/explain/bias", response_model=BiasResponse, responses=EXPLAIN_ERRORS)
async def explain_bias_probes(body: BiasRequest, request: Request) -> BiasResponse:
    """Bias probes: the probability gap of each target between groups (95% bootstrap CI) and
    the heads and neurons carrying it; `probes` is "builtin" or probes as in a probe YAML file
    (at most 200 filled prompts)."""
    return await explain_bias(request, body)
