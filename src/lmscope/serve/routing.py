"""Served model ids, aliases and weighted A/B routes, parsed from the command line."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field


class RoutingError(ValueError):
    """A --model or --route specification that cannot be used."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    source: str  # a registered name or a path


@dataclass
class Route:
    alias: str
    targets: list[tuple[str, float]]  # (model id, weight), weights summing to 1

    def pick(self, rng: random.Random) -> str:
        """A model id drawn with probability equal to its weight (never one of weight 0)."""
        live = [(model_id, weight) for model_id, weight in self.targets if weight > 0]
        return rng.choices([m for m, _ in live], weights=[w for _, w in live])[0]

    def pick_sticky(self, user: str) -> str:
        """The model id for `user`, the same on every request and every replica: a hash of
        alias and user, read as a uniform number in [0, 1), against the cumulative weights."""
        digest = hashlib.sha256(f"{self.alias}\x00{user}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        cumulative = 0.0
        live = [(model_id, weight) for model_id, weight in self.targets if weight > 0]
        for model_id, weight in live:
            cumulative += weight
            if point < cumulative:
                return model_id
        return live[-1][0]  # rounding left the last sliver of [0, 1)


def parse_model_spec(text: str) -> ModelSpec:
    """`ID=SOURCE`, or a bare SOURCE whose id is the source itself."""
    if "=" in text:
        model_id, source = (part.strip() for part in text.split("=", 1))
    else:
        model_id = source = text.strip()
    if not model_id or not source:
        raise RoutingError(f"bad --model {text!r}: expected ID=PATH_OR_NAME, e.g. v1=./checkpoint")
    return ModelSpec(model_id, source)


ROUTE_FORM = "expected ALIAS=ID:WEIGHT,ID:WEIGHT, e.g. chat=v1:0.8,v2:0.2"


def _parse_weight(alias: str, model_id: str, text: str) -> float:
    if not text.strip():
        return 1.0
    try:
        weight = float(text)
    except ValueError:
        raise RoutingError(
            f"--route {alias}: weight {text.strip()!r} of {model_id!r} is not a number"
        ) from None
    if not math.isfinite(weight) or weight < 0:
        raise RoutingError(
            f"--route {alias}: weight {text.strip()!r} of {model_id!r} must be a finite number >= 0"
        )
    return weight


def parse_route(text: str, known: set[str]) -> Route:
    """`ALIAS=ID:WEIGHT,ID:WEIGHT` (a missing weight is 1); weights are normalised to sum to 1."""
    alias, eq, spec = (part.strip() for part in text.partition("="))
    if not eq or not alias or not spec:
        raise RoutingError(f"bad --route {text!r}: {ROUTE_FORM}")
    if alias in known:
        raise RoutingError(f"--route alias {alias!r} clashes with a served model id")
    targets: list[tuple[str, float]] = []
    for item in spec.split(","):
        model_id, _, weight_text = (part.strip() for part in item.partition(":"))
        if not model_id:
            raise RoutingError(f"bad --route {text!r}: an empty model id; {ROUTE_FORM}")
        if model_id not in known:
            raise RoutingError(
                f"--route {alias}: unknown model id {model_id!r}; "
                f"served ids: {', '.join(sorted(known))}"
            )
        if model_id in (m for m, _ in targets):
            raise RoutingError(f"--route {alias}: model id {model_id!r} is listed twice")
        targets.append((model_id, _parse_weight(alias, model_id, weight_text)))
    total = sum(w for _, w in targets)
    if total <= 0:
        raise RoutingError(f"--route {alias}: weights must sum to more than 0")
    return Route(alias, [(m, w / total) for m, w in targets])


def parse_routes(texts: list[str], known: set[str]) -> dict[str, Route]:
    """Every --route, by alias; an alias given twice is an error (not a silent override)."""
    routes: dict[str, Route] = {}
    for text in texts:
        route = parse_route(text, known)
        if route.alias in routes:
            raise RoutingError(f"--route alias {route.alias!r} is given twice; give it once")
        routes[route.alias] = route
    return routes


@dataclass
class Router:
    """Resolves a requested model name to a served id (alias routes drawn at random)."""

    model_ids: list[str]
    routes: dict[str, Route] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def names(self) -> list[str]:
        return [*self.model_ids, *self.routes]

    def resolve(self, requested: str | None, user: str | None = None) -> str | None:
        """The served id for `requested`; the first model when none is named; None if unknown.
        An alias route assigns a user (the request's `user` field or header) stickily."""
        if not requested:
            return self.model_ids[0]
        if requested in self.model_ids:
            return requested
        route = self.routes.get(requested)
        if route is None:
            return None
        return route.pick_sticky(user) if user else route.pick(self.rng)
