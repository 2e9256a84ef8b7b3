"""Explanations over HTTP: routes, heads, neurons, logit lens and saliency of a prompt.

Thin routes: the typed requests and responses are in `protocol.explain`, the logic in
`serving_explain.ExplainServing`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from lmscope.serve.protocol.explain import (
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
from lmscope.serve.serving_explain import ExplainServing

router = APIRouter(tags=["explain"])


@router.post("/v1/explain", response_model=ExplainResponse)
async def explain_prompt(body: ExplainRequest, request: Request) -> ExplainResponse:
    """The full explanation of one target position: routes, lens, heads, neurons, saliency."""
    return await ExplainServing.of(request).explain(request, body)


@router.post("/v1/explain/routes", response_model=RoutesResponse)
async def explain_routes(body: RoutesRequest, request: Request) -> RoutesResponse:
    """Only the route graph (cheap on a cached prompt: re-thresholding for the tau slider)."""
    return await ExplainServing.of(request).routes(request, body)


@router.post("/v1/explain/head", response_model=HeadResponse)
async def explain_head(body: HeadRequest, request: Request) -> HeadResponse:
    """One head: its attention pattern, its contribution map and the tokens it promotes."""
    return await ExplainServing.of(request).head(request, body)


@router.post("/v1/explain/neurons", response_model=NeuronsResponse)
async def explain_neurons(body: NeuronsRequest, request: Request) -> NeuronsResponse:
    """The top neurons of one MLP at a position, each with its vocabulary projection."""
    return await ExplainServing.of(request).neurons(request, body)


@router.post("/v1/explain/lens", response_model=LensResponse)
async def explain_lens(body: LensRequest, request: Request) -> LensResponse:
    """The logit lens of one residual node, with each token's rank at the previous node."""
    return await ExplainServing.of(request).lens(request, body)


@router.post("/v1/explain/saliency", response_model=SaliencyResponse)
async def explain_saliency(body: SaliencyRequest, request: Request) -> SaliencyResponse:
    """Input attribution of one prediction by gradient x input, integrated gradients or
    attention rollout."""
    return await ExplainServing.of(request).saliency(request, body)
