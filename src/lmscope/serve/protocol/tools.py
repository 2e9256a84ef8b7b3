"""Structured output and tool calling, as OpenAI's API types them: `tools`, `tool_choice`,
legacy `functions`/`function_call`, and `response_format`. The server plans them in
`serve.structured`; these models only check their shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from lmscope.serve.protocol.common import (
    FieldError,
    StrictBool,
    Text,
)

FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDef(BaseModel):
    """A function the model may call: its name, what it does, and a JSON schema of its
    arguments."""

    name: FunctionName
    description: Text | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON schema of the arguments object"
    )
    strict: StrictBool | None = None


class ToolDef(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: FunctionName


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: FunctionName
    description: Text | None = None
    json_schema: dict[str, Any] = Field(alias="schema", description="a JSON schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """`{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise FieldError(
                "response_format needs json_schema exactly when its type is 'json_schema'",
                "response_format",
            )
        return self

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "properties": {"type": {"enum": ["text", "json_object"]}},
                    "not": {"required": ["json_schema"]},
                },
                {
                    "properties": {
                        "type": {"const": "json_schema"},
                        "json_schema": {"type": "object"},
                    },
                    "required": ["json_schema"],
                },
            ]
        }
    )
