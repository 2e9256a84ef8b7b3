"""Every dotted key of the training config, and the check of one `key=value` override, for tools
that vary config values (hyperparameter search, sweeps) without writing a YAML file each time.

    config_keys()                      -> ["checkpoint.every", ..., "optim.lr", ...]
    validate_override("optim.lr=3e-4") -> ("optim.lr", 0.0003)
    validate_override("optim.lr=-1")   -> TrainConfigError: optim.lr must be a positive number, ...
    with_overrides(config, ["optim.lr=3e-4", "train.max_steps=500"]) -> a new, validated config
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from lmscope.model.config import ModelConfig
from lmscope.train.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    model_value,
    parse_override,
)
from lmscope.train.config_errors import describe, section_at, section_class, unknown_key_message
from lmscope.train.errors import TrainConfigError


def _walk(cls: type[BaseModel], prefix: str) -> list[str]:
    keys: list[str] = []
    for name, info in cls.model_fields.items():
        key = f"{prefix}{name}"
        section = section_class(info.annotation)
        if section is not None:
            keys.extend(_walk(section, f"{key}."))
        elif cls is TrainConfig and name == "model":
            keys.extend(f"model.{f.name}" for f in dataclasses.fields(ModelConfig))
        else:
            keys.append(key)
    return keys


def config_keys() -> list[str]:
    """Every settable dotted key, sorted (`model.*` are ModelConfig fields)."""
    return sorted(_walk(TrainConfig, ""))


def _check_key(keys: list[str]) -> None:
    dotted = ".".join(keys)
    if dotted in config_keys():
        return
    # Name the first part that is wrong, with the keys valid at that level.
    for depth in range(len(keys)):
        parents = keys[:depth]
        if parents == ["model"]:
            known = [f.name for f in dataclasses.fields(ModelConfig)]
        else:
            section = section_at(TrainConfig, parents)
            if section is None:
                break
            known = list(section.model_fields)
        if keys[depth] not in known:
            raise TrainConfigError(unknown_key_message(".".join(parents), keys[depth], known))
    close = difflib.get_close_matches(dotted, config_keys(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise TrainConfigError(f"'{dotted}' is not a settable config key{hint}")


def _check_value(keys: list[str], value: Any) -> Any:
    """The value as the config would hold it; TrainConfigError if its type or range is wrong."""
    if keys[0] == "model":
        return model_value(keys[1], value)
    section = section_at(TrainConfig, keys[:-1])
    assert section is not None  # _check_key found the key
    try:
        checked = section.model_validate({keys[-1]: value})
    except ValidationError as err:
        raise TrainConfigError(describe(err, TrainConfig, ".".join(keys[:-1]))) from None
    return getattr(checked, keys[-1])


def validate_override(override: str, base: dict[str, Any] | None = None) -> tuple[str, Any]:
    """Check one `section.key=value` override; return (dotted key, value as the config holds it).

    Without `base` the key and the value's type and range are checked on their own; with `base`
    (a config as plain data) the override is also applied to a copy of it and the whole config
    validated, which catches combinations (heads that do not divide d_model, LoRA with frozen
    layers)."""
    keys, value = parse_override(override)
    _check_key(keys)
    checked = _check_value(keys, value)
    if base is not None:
        config_from_dict(apply_overrides(copy.deepcopy(base), [override]))
    return ".".join(keys), checked


def with_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A new validated config: `config` with `section.key=value` overrides applied (the
    original is left as it was)."""
    for override in overrides:
        validate_override(override)
    return config_from_dict(apply_overrides(config.to_dict(), overrides))
