"""Online A/B over HTTP: `POST /v1/feedback` rates an answer, `GET /v1/experiments` is the live
report of every experiment (what the explorer's Experiments tab shows)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from lmscope.serve.errors import APIError
from lmscope.serve.experiments import Experiments
from lmscope.serve.feedback import UnknownResponseError
from lmscope.serve.openapi_doc import error_responses
from lmscope.serve.protocol.common import new_id
from lmscope.serve.protocol.feedback import FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["experiments"])


def _experiments(request: Request) -> Experiments:
    experiments: Experiments | None = request.app.state.lm.experiments
    if experiments is None:
        raise APIError(
            404,
            "this server records no experiments; start it with --route (and --feedback-db)",
            code="experiments_disabled",
        )
    return experiments


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    responses=error_responses(400, 401, 404, 413, 415),
)
async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    """Record a user's satisfaction with an answer; 200 means it is stored durably."""
    experiments = _experiments(request)
    kind, value, satisfaction = body.kind_value_satisfaction()
    feedback_id = new_id("fb")
    try:
        await asyncio.to_thread(
            experiments.store.add_feedback,
            feedback_id, body.response_id, kind, value, satisfaction, body.comment,
        )  # fmt: skip
    except UnknownResponseError:
        raise APIError(
            404,
            f"no answer with id {body.response_id!r} was recorded; send the `id` of a "
            "completion this server answered through an experiment alias",
            param="response_id",
            code="response_not_found",
        ) from None
    return FeedbackResponse(id=feedback_id, response_id=body.response_id, satisfaction=satisfaction)


@router.get("/v1/experiments", responses=error_responses(401, 404))
async def experiments_report(request: Request) -> dict[str, Any]:
    """Every experiment's live report (counts, satisfaction, the sequential test, SRM)."""
    from lmscope.evaluate.abtest import ab_report

    store = _experiments(request).store

    def build() -> list[dict[str, Any]]:
        responses, ratings = store.rows("responses"), store.rows("feedback")
        configured = store.rows("experiments")
        aliases = list(dict.fromkeys(e["alias"] for e in configured))
        return [ab_report(responses, ratings, configured, alias) for alias in aliases]

    return {"object": "list", "data": await asyncio.to_thread(build)}
