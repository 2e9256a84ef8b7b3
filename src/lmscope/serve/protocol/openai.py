"""The model list of the OpenAI subset lmscope serves. Completions live in `completions`, chat
completions in `chat` (with `tools` for structured output), the options they share in
`sampling`; the package re-exports them all."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lmscope.serve.protocol.common import now


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "lmscope"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
