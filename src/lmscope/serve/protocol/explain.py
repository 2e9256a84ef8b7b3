"""Typed requests and responses of the explanation endpoints (`/v1/explain*`).

Every request names its prompt the same way (`prompt` text or token ids, or chat `messages`,
plus an optional `completion` appended after it) so the endpoints stay stateless. Text fields
refuse lone UTF-16 surrogates and integers refuse booleans (see `protocol.common`), so bad input
is a 400 naming the field before any tokenizer sees it.

Responses type the fields the server composes; the nested results (a route graph, a lens row)
are the explain library's own `to_dict()` output and stay JSON objects here. Responses that
embed a library result at the top level allow extra keys, so a field the library adds reaches
clients instead of failing the request.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from lmscope.explain.errors import ThresholdError, check_tau
from lmscope.serve.protocol.chat import ChatMessage
from lmscope.serve.protocol.common import (
    FieldError,
    NonEmptyText,
    Number,
    StrictBool,
    StrictInt,
    Text,
    given,
    json_numbers,
)
from lmscope.serve.protocol.sampling import TokenIds

JsonObject = dict[str, Any]


def _tau(value: float) -> float:
    try:
        return check_tau(value)
    except ThresholdError as err:
        raise ValueError(str(err)) from None


Tau = Annotated[Number, Field(json_schema_extra={"minimum": 0, "maximum": 1}), AfterValidator(_tau)]
TopK = Annotated[StrictInt, Field(ge=1, le=100)]


# Text first: a string's own error (e.g. a lone surrogate) is the one reported for the field.
TokenRef = NonEmptyText | Annotated[StrictInt, Field(ge=0)]


# A residual node the lens reads, optionally with a position (a route-graph node id).
NODE_PATTERN = r"^(embed|L[0-9]{1,4}/resid_(mid|post))(/[0-9]{1,6})?$"


def _node_format(value: str) -> str:
    if re.fullmatch(NODE_PATTERN, value) is None:
        raise ValueError(
            f"unknown residual node {value!r}; use 'embed', 'L<layer>/resid_mid' or "
            "'L<layer>/resid_post', optionally followed by '/<position>'"
        )
    return value


# ---- requests --------------------------------------------------------------------------------
class PromptFields(BaseModel):
    """How every explain request names its prompt."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [given("prompt"), given("messages")]},
    )

    model: Text | None = None
    prompt: NonEmptyText | TokenIds | None = Field(
        default=None, description="text (tokenized like /v1/completions) or token ids"
    )
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = Field(
        default=None, description="chat messages, rendered with the model's chat template"
    )
    completion: Text | None = Field(
        default=None, description="generated text appended after the prompt (no special tokens)"
    )
    norm: Literal["l1", "l2"] = "l1"

    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"target", "completion_target", "k", "layer", "head", "source", "position", "vocab_k"}
        | {"n_steps", "token", "foil"}
    )

    @model_validator(mode="before")
    @classmethod
    def _json_numbers(cls, data: Any) -> Any:
        """NaN and infinity refused with the field named; 3.0 counts as 3 where an integer is
        wanted, token ids included (JSON Schema's `integer` accepts it)."""
        data = json_numbers(data, cls._INT_FIELDS)
        if isinstance(data, dict) and isinstance(data.get("prompt"), list):
            data["prompt"] = [
                int(v) if isinstance(v, float) and v.is_integer() else v for v in data["prompt"]
            ]
        return data

    @model_validator(mode="after")
    def _one_prompt(self) -> PromptFields:
        if self.prompt is None and self.messages is None:
            raise FieldError("give prompt (text or token ids) or chat messages", "prompt")
        if self.prompt is not None and self.messages is not None:
            raise FieldError("give prompt or messages, not both", "messages")
        return self


class ExplainRequest(PromptFields):
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [given("prompt"), given("messages")],
            "allOf": [
                {
                    "if": given("completion_target"),
                    "then": {
                        "required": ["completion"],
                        "properties": {"completion": {"type": "string", "minLength": 1}},
                    },
                }
            ],
        }
    )

    target: StrictInt = Field(
        default=-1, description="token position whose prediction is explained"
    )
    completion_target: StrictInt | None = Field(
        default=None,
        description="index of a completion token (0 = first); explains the prediction of it "
        "(position n_prompt_tokens + index - 1) and overrides target",
    )
    tau: Tau = Field(default=0.04, description="route threshold in [0, 1]")
    renormalise: StrictBool = False
    k: TopK = 10
    saliency: StrictBool = True
    route_check: StrictBool = Field(
        default=False,
        description="also ablate the route's heads and MLP blocks against as many random ones "
        "off the route and report the target's log-probability drop (12 more forward passes)",
    )

    @model_validator(mode="after")
    def _completion_target_needs_completion(self) -> ExplainRequest:
        if self.completion_target is not None and not self.completion:
            raise FieldError("completion_target needs a completion", "completion_target")
        return self


class RoutesRequest(PromptFields):
    target: StrictInt = -1
    tau: Tau = 0.04
    renormalise: StrictBool = False


class HeadRequest(PromptFields):
    layer: StrictInt
    head: Annotated[StrictInt, Field(ge=0)]
    target: StrictInt = Field(default=-1, description="query position (the edge's target token)")
    source: StrictInt | None = Field(default=None, description="key position of an attention edge")
    k: TopK = 10


class NeuronsRequest(PromptFields):
    layer: StrictInt
    position: StrictInt = -1
    k: TopK = 10
    vocab_k: Annotated[StrictInt, Field(ge=1, le=50)] = Field(
        default=5, description="tokens shown per neuron"
    )


class LensRequest(PromptFields):
    node: Annotated[Text, AfterValidator(_node_format)] = Field(
        description="'embed', 'L3/resid_mid', 'L3/resid_post' or a route node id of one of "
        "them ('L3/resid_post/5': position 5)",
        json_schema_extra={"pattern": NODE_PATTERN},
    )
    position: StrictInt | None = Field(
        default=None, description="default: from the node id, else -1"
    )
    k: TopK = 10
    final_norm: StrictBool = True


SaliencyMethod = Literal["gradient_x_input", "integrated_gradients", "attention_rollout"]


class SaliencyRequest(PromptFields):
    method: SaliencyMethod = "gradient_x_input"
    target: StrictInt = Field(default=-1, description="position whose prediction is attributed")
    token: TokenRef | None = Field(default=None, description="token explained (default: top)")
    foil: TokenRef | None = Field(default=None, description="contrast token: score(token - foil)")
    score: Literal["logit", "logprob"] = "logit"
    n_steps: Annotated[StrictInt, Field(ge=1, le=512)] = 32
    residual: Annotated[Number, Field(ge=0.0, le=1.0)] = Field(
        default=0.5, description="attention rollout only"
    )


# ---- responses -------------------------------------------------------------------------------
class PromptEcho(BaseModel):
    """What every explain response says about the prompt it explained."""

    model: str
    tokens: list[int]
    token_strs: list[str]
    n_prompt_tokens: int
    cached: bool = Field(description="the prompt's trace came from the server's cache")
    weights: str = Field(
        "float32",
        description="the weights explained: those served, e.g. 'int8 (dequantized)' under "
        "`serve --quantize int8` (the run-time rounding of activations is not in them)",
    )


class NextToken(BaseModel):
    """The token that actually follows the target in the text, as the model ranked it."""

    token: int
    text: str
    rank: int
    prob: float


class RouteCheck(BaseModel):
    """The causal check of a route graph (`lmscope.explain.causal.route_faithfulness`)."""

    target: int = Field(description="the token id whose log-probability is watched")
    target_text: str
    clean_logprob: float
    components: list[str] = Field(description="the heads (LxHy) and MLP blocks on the route")
    route_drop: float = Field(description="log-prob drop when the route's components are ablated")
    random_drops: list[float] = Field(description="the same for random off-route sets")
    random_drop: float
    score: float = Field(description="route_drop - random_drop: large for a faithful route")
    mode: str
    meta: JsonObject


class ExplainResponse(PromptEcho):
    model_config = ConfigDict(extra="allow")

    prompt: str | None
    target: int
    tau: float
    renormalise: bool
    norm: str
    n_layers: int
    n_heads: int
    prediction: list[JsonObject]
    routes: JsonObject
    lens: list[JsonObject]
    trajectory: JsonObject
    top_heads: list[list[Any]]
    head_importance: list[list[float]]
    neurons: list[JsonObject]
    promotions: list[JsonObject]
    saliency: list[JsonObject]
    timings: dict[str, float]
    next_token: NextToken | None
    route_check: RouteCheck | None = Field(default=None, description="with route_check=true")


class RoutesResponse(PromptEcho):
    target: int
    routes: JsonObject


class HeadResponse(PromptEcho):
    layer: int
    head: int
    label: str
    target: int
    source: int | None
    importance: float = Field(description="the head's share of the target's attention flow")
    attention: JsonObject
    contribution: JsonObject
    promotion: JsonObject
    edge: JsonObject | None


class NeuronsResponse(PromptEcho):
    model_config = ConfigDict(extra="allow")

    layer: int
    position: int
    norm: str
    neurons: list[JsonObject]
    block: JsonObject


class LensResponse(PromptEcho):
    model_config = ConfigDict(extra="allow")

    node: str
    position: int
    final_norm: bool
    entropy: float
    previous: str | None
    top: list[JsonObject]


class SaliencyResponse(PromptEcho):
    model_config = ConfigDict(extra="allow")

    method: str
    position: int
    target: int | None
    foil: int | None
    score: str
    scores: list[float]
    meta: JsonObject
    target_text: str | None
    foil_text: str | None


# ---- bias probes (POST /v1/explain/bias) -----------------------------------------------------
Name = Annotated[Text, Field(min_length=1, max_length=100)]
Word = Annotated[NonEmptyText, Field(max_length=100)]
WordList = Annotated[list[Word], Field(min_length=1, max_length=200)]


GROUP_SLOT = r"\{group\}"  # (unanchored) a template names the {group} slot


class ProbeSpec(BaseModel):
    """One probe, as in a probe YAML file (see `lmscope.explain.bias_probes`)."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    template: Annotated[NonEmptyText, Field(max_length=500, pattern=GROUP_SLOT)] = Field(
        description="text with a {group} slot and optionally other {slot}s, e.g. "
        "'The {group} worked as a'",
        json_schema_extra={"pattern": GROUP_SLOT},
    )
    groups: Annotated[dict[Name, WordList], Field(min_length=2, max_length=20)] = Field(
        description="group name -> words filling {group}; the first group is the reference"
    )
    slots: Annotated[dict[Name, WordList], Field(max_length=8)] = Field(
        default_factory=dict, description="other slot name -> words (every combination)"
    )
    targets: Annotated[list[Word], Field(min_length=1, max_length=20)] = Field(
        description="continuations whose probability is compared, with their leading space"
    )


def _probe_kind(value: Any) -> str:
    return "probe-list" if isinstance(value, list) else "set-name"


# A list is checked as probes only (its errors name the probe's field), anything else as a name.
# The tags are not identifiers, so they stay out of an error's `param`.
ProbeSet = Annotated[
    Annotated[Literal["builtin"], Tag("set-name")]
    | Annotated[list[ProbeSpec], Field(min_length=1, max_length=20), Tag("probe-list")],
    Discriminator(_probe_kind),
]


class BiasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset({"n_boot", "seed", "k"})

    model: Text | None = None
    probes: ProbeSet = Field(
        default="builtin",
        description="'builtin' (the built-in gender and age probes) or probes as in a probe YAML "
        "file; at most 200 filled prompts in all",
    )
    n_boot: Annotated[StrictInt, Field(ge=1, le=10000)] = Field(
        default=1000, description="bootstrap resamples of the gap's 95% CI"
    )
    seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] = 0
    components: StrictBool = Field(
        default=True, description="rank the heads and neurons carrying each group's difference"
    )
    tau: Tau = Field(default=0.04, description="route threshold of the component importances")
    k: Annotated[StrictInt, Field(ge=1, le=50)] = Field(
        default=5, description="heads and neurons listed per group"
    )

    @model_validator(mode="before")
    @classmethod
    def _json_numbers(cls, data: Any) -> Any:
        return json_numbers(data, cls._INT_FIELDS)


class ProbeOutcome(BaseModel):
    """One probe's result (`lmscope.explain.bias.ProbeResult.to_dict()`)."""

    name: str
    template: str
    reference: str = Field(description="the group every gap is measured against")
    groups: dict[str, int] = Field(description="filled prompts per group")
    targets: list[JsonObject] = Field(
        description="per target: mean probability per group and, per other group, the gap with "
        "its 95% bootstrap CI"
    )
    components: dict[str, dict[str, list[JsonObject]]] = Field(
        description="per other group: heads and neurons ranked by |mean importance difference|"
    )


class BiasResponse(BaseModel):
    model: str
    weights: str
    n_prompts: int
    probes: list[ProbeOutcome]
    meta: JsonObject
