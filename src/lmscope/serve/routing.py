"""Served model ids, aliases and weighted A/B routes, parsed from the command line."""

from __future__ import annotations

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
        roll = rng.random()
        acc = 0.0
        for model_id, weight in self.targets:
            acc += weight
            if roll < acc:
                return model_id
        return self.targets[-1][0]


def parse_model_spec(text: str) -> ModelSpec:
    """`ID=SOURCE`, or a bare SOURCE whose id is the source itself."""
    if "=" in text:
        model_id, source = (part.strip() for part in text.split("=", 1))
    else:
        model_id = source = text.strip()
    if not model_id or not source:
        raise RoutingError(f"bad --model {text!r}: expected ID=PATH_OR_NAME, e.g. v1=./checkpoint")
    return ModelSpec(model_id, source)


def parse_route(text: str, known: set[str]) -> Route:
    """`ALIAS=ID:WEIGHT,ID:WEIGHT`; weights are normalised to sum to 1."""
    if "=" not in text:
        raise RoutingError(f"bad --route {text!r}: expected ALIAS=ID:WEIGHT,ID:WEIGHT")
    alias, spec = (part.strip() for part in text.split("=", 1))
    targets: list[tuple[str, float]] = []
    for item in spec.split(","):
        model_id, _, weight_text = item.strip().partition(":")
        if model_id not in known:
            raise RoutingError(
                f"--route {alias}: unknown model id {model_id!r}; served ids: {', '.join(sorted(known))}"
            )
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise RoutingError(f"--route {alias}: weight {weight_text!r} is not a number") from None
        if weight < 0:
            raise RoutingError(f"--route {alias}: weight {weight} is negative")
        targets.append((model_id, weight))
    total = sum(w for _, w in targets)
    if not targets or total <= 0:
        raise RoutingError(f"--route {alias}: weights must sum to more than 0")
    if alias in known:
        raise RoutingError(f"--route alias {alias!r} clashes with a served model id")
    return Route(alias, [(m, w / total) for m, w in targets])


@dataclass
class Router:
    """Resolves a requested model name to a served id (alias routes drawn at random)."""

    model_ids: list[str]
    routes: dict[str, Route] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def names(self) -> list[str]:
        return [*self.model_ids, *self.routes]

    def resolve(self, requested: str | None) -> str | None:
        """The served id for `requested`; the first model when none is named; None if unknown."""
        if not requested:
            return self.model_ids[0]
        if requested in self.model_ids:
            return requested
        route = self.routes.get(requested)
        return route.pick(self.rng) if route else None
