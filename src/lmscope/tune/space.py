"""A search space over dotted training-config keys: parsed, checked against the config, sampled
through an Optuna trial, and enumerated for grid search.

    optim.lr:              {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    schedule.warmup_steps: {type: int, low: 0, high: 40, step: 10}
    model.d_model:         [64, 128]                          # a list is a categorical
    finetune:              {type: categorical, choices: [full, lora],
                            set: {lora: {finetune.lora.r: 8}}}  # a choice that sets keys
    finetune.lora.r:       {type: int, low: 4, high: 64, log: true, when: {finetune: lora}}

A parameter is a config key (its values are checked against that key's type and range), or a
categorical with `set`, whose choices stand for groups of keys. `when` makes a parameter exist
only for some values of a categorical parameter before it.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from lmscope.train.config_keys import validate_override
from lmscope.train.errors import TrainConfigError
from lmscope.tune.errors import TuneError

Scalar = None | bool | int | float | str
_FIELDS = {
    "float": {"type", "low", "high", "log", "step", "grid", "when"},
    "int": {"type", "low", "high", "log", "step", "grid", "when"},
    "categorical": {"type", "choices", "set", "when"},
}
GRID_LIMIT = 100_000


def literal(value: Any) -> str:
    """A value as a YAML literal that reads back as the same value (1e-05 -> '1.0e-05': YAML
    1.1 reads '1e-05' as a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Scalar, ...] = ()
    sets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # choice -> key: value
    when: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)
    grid: tuple[Scalar, ...] | None = None

    @property
    def is_key(self) -> bool:
        """A config key itself (not a categorical whose choices set keys)."""
        return not self.sets

    def suggest(self, trial: Any) -> Scalar:
        if self.kind == "float":
            assert self.low is not None and self.high is not None
            return float(
                trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
            )
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            step = int(self.step or 1)
            return int(
                trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
            )
        return trial.suggest_categorical(self.name, list(self.choices))  # type: ignore[no-any-return]

    def grid_values(self) -> tuple[Scalar, ...]:
        if self.grid is not None:
            return self.grid
        if self.kind == "categorical":
            return self.choices
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise TuneError(
                f"search space '{self.name}': the grid sampler needs a step or `grid: [values]` "
                "for a float range"
            )
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return tuple(round(self.low + i * self.step, 12) for i in range(count))

    def overrides(self, value: Scalar) -> dict[str, Any]:
        """The config keys this parameter's value sets."""
        if self.sets:
            return dict(self.sets.get(str(value), {}))
        return {self.name: value}


class SearchSpace:
    """Parameters in the order they are sampled (a `when` parameter after the one it names)."""

    def __init__(self, params: list[Param]) -> None:
        self.params = params
        self.by_name = {p.name: p for p in params}

    def active(self, values: Mapping[str, Scalar], param: Param) -> bool:
        return all(
            name in values and values[name] in allowed for name, allowed in param.when.items()
        )

    def suggest(self, trial: Any) -> dict[str, Scalar]:
        """Sample every active parameter through an Optuna trial; {name: value}."""
        values: dict[str, Scalar] = {}
        for param in self.params:
            if self.active(values, param):
                values[param.name] = param.suggest(trial)
        return values

    def overrides(self, values: Mapping[str, Scalar]) -> list[str]:
        """`key=value` training-config overrides for sampled values."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            out.update(self.by_name[name].overrides(value))
        return [f"{key}={literal(value)}" for key, value in out.items()]

    def grid(self) -> list[dict[str, Scalar]]:
        """Every point of the grid (conditional parameters only where their condition holds)."""
        points: list[dict[str, Scalar]] = [{}]
        for param in self.params:
            grown: list[dict[str, Scalar]] = []
            for point in points:
                if self.active(point, param):
                    grown.extend({**point, param.name: v} for v in param.grid_values())
                else:
                    grown.append(point)
                if len(grown) > GRID_LIMIT:
                    raise TuneError(
                        f"the grid has more than {GRID_LIMIT} points; use fewer values or a "
                        "sampler such as tpe or random"
                    )
            points = grown
        return points

    def describe(self) -> dict[str, Any]:
        """Plain data for the study record and the JSON export."""
        out: dict[str, Any] = {}
        for p in self.params:
            item: dict[str, Any] = {"type": p.kind}
            if p.kind == "categorical":
                item["choices"] = list(p.choices)
            else:
                item.update(low=p.low, high=p.high, log=p.log, step=p.step)
            if p.sets:
                item["set"] = {k: dict(v) for k, v in p.sets.items()}
            if p.when:
                item["when"] = {k: list(v) for k, v in p.when.items()}
            out[p.name] = item
        return out


# ---- parsing --------------------------------------------------------------------------------------


def _fail(name: str, message: str) -> TuneError:
    return TuneError(f"search space '{name}': {message}")


def _number(name: str, spec: Mapping[str, Any], key: str, kind: str) -> float | int:
    value: Any = spec.get(key)
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value):
        raise _fail(name, f"{key} must be a finite number, got {spec.get(key)!r}")
    if kind == "int":
        if float(value) != int(value):
            raise _fail(name, f"{key} must be a whole number for an int range, got {value!r}")
        return int(value)
    return float(value)


def _check_against_config(name: str, values: list[Any]) -> None:
    """Each value must be valid for the config key `name` (names a wrong key's nearest valid
    name)."""
    for value in values:
        try:
            validate_override(f"{name}={literal(value)}")
        except TrainConfigError as err:
            raise _fail(name, str(err)) from None


def _range(name: str, spec: Mapping[str, Any], kind: str) -> dict[str, Any]:
    low, high = _number(name, spec, "low", kind), _number(name, spec, "high", kind)
    if low >= high:
        what = "is empty" if low > high else "holds one value; fix it with `overrides` instead"
        raise _fail(name, f"the range low={low} .. high={high} {what}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _fail(name, f"log must be true or false, got {log!r}")
    step = None if spec.get("step") is None else _number(name, spec, "step", kind)
    if log and low <= 0:
        raise _fail(name, f"a log range needs low > 0, got {low}")
    if step is not None:
        if step <= 0 or step > high - low:
            raise _fail(name, f"step must be in (0, high - low], got {step}")
        if log and (kind == "float" or step != 1):
            raise _fail(name, "log and step cannot be combined")
    grid = spec.get("grid")
    if grid is not None:
        if not isinstance(grid, list) or not grid:
            raise _fail(name, "grid must be a non-empty list of values")
        for v in grid:
            if not (isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high):
                raise _fail(name, f"grid value {v!r} is not a number in [{low}, {high}]")
        grid = tuple(int(v) if kind == "int" else float(v) for v in grid)
    return {"low": low, "high": high, "log": log, "step": step, "grid": grid}


def _choices(name: str, spec: Mapping[str, Any]) -> tuple[Scalar, ...]:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _fail(name, "choices must be a non-empty list")
    for choice in choices:
        if not (choice is None or isinstance(choice, bool | int | float | str)):
            raise _fail(
                name,
                f"choice {choice!r} is not a plain value; give the choice a name and list its "
                "keys under `set`",
            )
    if len({literal(c) for c in choices}) != len(choices):
        raise _fail(name, "choices repeat a value")
    return tuple(choices)


def _sets(name: str, spec: Mapping[str, Any], choices: tuple[Scalar, ...]) -> dict[str, Any]:
    raw = spec.get("set")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(name, "set must map each choice to the config keys it sets")
    named = {str(c) for c in choices}
    sets: dict[str, dict[str, Any]] = {}
    for choice, keys in raw.items():
        if str(choice) not in named:
            raise _fail(name, f"set names {choice!r}, which is not one of the choices")
        if keys is not None and not isinstance(keys, dict):
            raise _fail(name, f"set.{choice} must map config keys to values")
        for key, value in (keys or {}).items():
            _check_against_config(str(key), [value])
        sets[str(choice)] = dict(keys or {})
    return sets


def _param(name: str, spec: Any) -> Param:
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise _fail(name, "give a mapping with a type (float, int, categorical) or a list")
    kind = spec.get("type")
    if kind not in _FIELDS:
        raise _fail(name, f"type must be float, int or categorical, got {kind!r}")
    unknown = sorted(set(spec) - _FIELDS[kind])
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(_FIELDS[kind]), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _fail(name, f"unknown field '{unknown[0]}' for a {kind} parameter{hint}")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise _fail(name, "when must map a categorical parameter to its value(s)")
    conditions = {str(k): tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    if kind == "categorical":
        choices = _choices(name, spec)
        sets = _sets(name, spec, choices)
        if not sets:
            _check_against_config(name, list(choices))
        return Param(name, kind, choices=choices, sets=sets, when=conditions)
    bounds = _range(name, spec, kind)
    _check_against_config(name, [bounds["low"], bounds["high"]])
    return Param(name, kind, when=conditions, **bounds)


def _ordered(params: list[Param]) -> list[Param]:
    """Conditions before the parameters that depend on them; unknown names and cycles refused."""
    by_name = {p.name: p for p in params}
    for p in params:
        for other, allowed in p.when.items():
            target = by_name.get(other)
            if target is None:
                raise _fail(p.name, f"when names '{other}', which is not in the search space")
            if target.kind != "categorical":
                raise _fail(p.name, f"when needs a categorical parameter; '{other}' is not")
            missing = [v for v in allowed if v not in target.choices]
            if missing:
                raise _fail(p.name, f"when: {missing[0]!r} is not a choice of '{other}'")
    done: list[Param] = []
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(o in {d.name for d in done} for o in p.when)]
        if not ready:
            raise _fail(pending[0].name, "its `when` conditions form a cycle")
        done.extend(ready)
        pending = [p for p in pending if p not in ready]
    return done


def parse_space(raw: Any) -> SearchSpace:
    if not isinstance(raw, dict) or not raw:
        raise TuneError("space must map config keys to ranges or choices (at least one)")
    params = [_param(str(name), spec) for name, spec in raw.items()]
    set_keys = [k for p in params for v in p.sets.values() for k in v]
    for key in set_keys:
        if key in {p.name for p in params}:
            raise _fail(key, "is both searched and set by another parameter's choice")
    return SearchSpace(_ordered(params))


__all__ = ["Param", "SearchSpace", "literal", "parse_space"]
