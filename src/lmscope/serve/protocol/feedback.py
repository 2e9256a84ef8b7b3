"""Feedback on a response (online A/B tests): exactly one of a thumb, a 1-5 rating or a score
in [0, 1], for the `id` of a completion or chat completion this server answered."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmscope.serve.protocol.common import (
    NonEmptyText,
    Number,
    StrictInt,
    Text,
    given,
    json_numbers,
)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [given("thumbs"), given("rating"), given("score")]},
    )

    response_id: NonEmptyText = Field(description="The `id` of the answer being rated.")
    thumbs: Literal["up", "down"] | None = None
    rating: StrictInt | None = Field(default=None, ge=1, le=5)
    score: Number | None = Field(default=None, ge=0.0, le=1.0)
    comment: Text | None = Field(default=None, max_length=2000)

    @model_validator(mode="before")
    @classmethod
    def _json_numbers(cls, data: Any) -> Any:
        return json_numbers(data, frozenset({"rating"}))  # a rating of 4.0 is 4

    @model_validator(mode="after")
    def _exactly_one(self) -> FeedbackRequest:
        chosen = [name for name in ("thumbs", "rating", "score") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "give exactly one of thumbs ('up'/'down'), rating (1-5) or score (0-1)"
            )
        return self

    def kind_value_satisfaction(self) -> tuple[str, float, float]:
        """(kind, value as given, satisfaction on [0, 1])."""
        if self.thumbs is not None:
            up = float(self.thumbs == "up")
            return "thumbs", up, up
        if self.rating is not None:
            return "rating", float(self.rating), (self.rating - 1) / 4
        assert self.score is not None
        return "score", self.score, self.score


class FeedbackResponse(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    response_id: str
    satisfaction: float
