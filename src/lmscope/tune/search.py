"""The search file: what `lmscope tune SEARCH.yaml` reads.

base: tiny.yaml                  # the training config (the YAML `lmscope train` takes),
                                 # relative to this file; or an inline mapping
overrides: {train.max_steps: 200}   # fixed changes to the base for every trial
space: {optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}, ...}
objective: val_loss              # or {metric: val_loss, direction: minimize}, or a list
budget: {trials: 20}             # and/or minutes (this run) and tokens (whole study)
sampler: tpe                     # grid | random | tpe | gp | cmaes | qmc, or {name: ..., options}
pruner: asha                     # median | asha | hyperband | none, or {name: ..., options}
seed: 0
trial_seed: per_trial            # per_trial: train.seed + trial number; fixed: train.seed
study: {name: tiny, dir: runs/tune/tiny, heartbeat_s: 10, grace_s: 60, max_retry: 2}
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmscope.train.config import config_from_dict, read_yaml
from lmscope.train.config_keys import validate_override
from lmscope.train.errors import TrainConfigError
from lmscope.tune.errors import TuneError
from lmscope.tune.evaluation import PREFIX, EvalSettings, parse_eval, split_metric
from lmscope.tune.space import SearchSpace, literal, parse_space

TOP_KEYS = (
    "base",
    "overrides",
    "space",
    "objective",
    "budget",
    "sampler",
    "pruner",
    "seed",
    "trial_seed",
    "study",
    "eval",
)
# metric -> (direction it improves in, a validation loss the trainer reports while training)
METRICS = {
    "val_loss": ("minimize", True),  # the best validation loss of the run
    "final_val_loss": ("minimize", True),  # the validation loss at the last step
    "val_perplexity": ("minimize", True),
    "test_loss": ("minimize", False),
    "train_loss": ("minimize", False),
    "tokens": ("minimize", False),  # tokens trained
    "seconds": ("minimize", False),  # training time
    "parameters": ("minimize", False),  # model parameters
}
SAMPLERS = ("grid", "random", "tpe", "gp", "cmaes", "qmc")
PRUNERS = ("median", "asha", "hyperband", "none")
STUDY_KEYS = ("name", "dir", "heartbeat_s", "grace_s", "max_retry")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # minimize | maximize


@dataclass(frozen=True)
class Budget:
    trials: int | None = None  # trials to finish (finished, pruned or failed), whole study
    minutes: float | None = None  # wall-clock of this run: no new trial starts after it
    tokens: int | None = None  # tokens trained by the whole study: no new trial after it


@dataclass
class Search:
    name: str
    base: dict[str, Any]  # the training config as plain data, search-file overrides applied
    space: SearchSpace
    objectives: list[Objective]
    budget: Budget
    sampler: str
    sampler_options: dict[str, Any]
    pruner: str
    pruner_options: dict[str, Any]
    seed: int = 0
    trial_seed: str = "per_trial"
    study_dir: Path = Path("runs/tune")
    heartbeat_s: int = 10
    grace_s: int = 60
    max_retry: int = 2
    raw: dict[str, Any] = field(default_factory=dict)
    evaluation: EvalSettings | None = None  # `lmscope eval` tasks for eval:TASK:METRIC

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def fingerprint(self) -> str:
        """What must not change when a study resumes: base config, space and objectives."""
        what = {
            "base": self.base,
            "space": self.space.describe(),
            "objectives": [(o.metric, o.direction) for o in self.objectives],
            "sampler": self.sampler,
            "eval": None if self.evaluation is None else str(self.evaluation.tasks),
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _nearest(word: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"


def _positive_int(section: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TuneError(f"{section}.{key} must be a positive whole number, got {value!r}")
    return value


def _base(raw: Any, folder: Path) -> dict[str, Any]:
    if raw is None:
        raise TuneError("base is missing: name the training config (a YAML `lmscope train` takes)")
    if isinstance(raw, dict):
        return copy.deepcopy(raw)
    if not isinstance(raw, str):
        raise TuneError("base must be a path to a training config or a mapping")
    path = Path(raw)
    if not path.is_absolute() and not path.exists():
        path = folder / path
    try:
        return read_yaml(path)
    except TrainConfigError as err:
        raise TuneError(f"base: {err}") from None


def _apply_fixed(base: dict[str, Any], raw: Any, space: SearchSpace) -> dict[str, Any]:
    """Fixed overrides applied to the base; the result validated as a whole."""
    from lmscope.train.config import apply_overrides

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TuneError("overrides must map dotted config keys to values")
    items = []
    for key, value in raw.items():
        if key in space.by_name:
            raise TuneError(f"'{key}' is both in overrides and in the search space; keep one")
        item = f"{key}={literal(value)}"
        try:
            validate_override(item)
        except TrainConfigError as err:
            raise TuneError(f"overrides: {err}") from None
        items.append(item)
    apply_overrides(base, items)
    try:
        config_from_dict(copy.deepcopy(base))
    except TrainConfigError as err:
        raise TuneError(f"base config: {err}") from None
    return base


def _objectives(raw: Any) -> list[Objective]:
    items = raw if isinstance(raw, list) else [raw if raw is not None else "val_loss"]
    if not items:
        raise TuneError("objective must name at least one metric")
    out = []
    for item in items:
        spec = {"metric": item} if isinstance(item, str) else item
        if not isinstance(spec, dict) or not isinstance(spec.get("metric"), str):
            raise TuneError("each objective is a metric name or {metric: ..., direction: ...}")
        metric = spec["metric"]
        if metric.startswith(PREFIX):
            split_metric(metric)
            if spec.get("direction") is None:
                raise TuneError(f"objective {metric}: give direction: minimize or maximize")
        elif metric not in METRICS:
            raise TuneError(f"unknown objective metric '{metric}'{_nearest(metric, list(METRICS))}")
        direction = spec.get("direction") or METRICS[metric][0]
        if direction not in ("minimize", "maximize"):
            raise TuneError(f"objective {metric}: direction must be minimize or maximize")
        out.append(Objective(metric, direction))
    if len({o.metric for o in out}) != len(out):
        raise TuneError("objective names the same metric twice")
    return out


def _named(raw: Any, what: str, known: tuple[str, ...], default: str) -> tuple[str, dict]:
    if raw is None:
        return default, {}
    options: dict[str, Any] = {}
    if isinstance(raw, dict):
        options = {k: v for k, v in raw.items() if k != "name"}
        raw = raw.get("name")
    name = {"successive_halving": "asha", "sh": "asha", "bayes": "tpe"}.get(raw, raw)
    if name not in known:
        raise TuneError(f"unknown {what} {raw!r}{_nearest(str(raw), known)}")
    return name, options


def _budget(raw: Any) -> Budget:
    if isinstance(raw, int) and not isinstance(raw, bool):  # `budget: 20` means 20 trials
        raw = {"trials": raw}
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise TuneError("budget must be a mapping: {trials: N, minutes: M, tokens: T}")
    unknown = sorted(set(raw) - {"trials", "minutes", "tokens"})
    if unknown:
        raise TuneError(f"unknown budget key '{unknown[0]}'; use trials, minutes or tokens")
    trials = raw.get("trials")
    tokens = raw.get("tokens")
    minutes = raw.get("minutes")
    if minutes is not None:
        ok = isinstance(minutes, int | float) and not isinstance(minutes, bool)
        if not ok or not math.isfinite(minutes) or minutes <= 0:
            raise TuneError(f"budget.minutes must be a positive number, got {minutes!r}")
    return Budget(
        trials=None if trials is None else _positive_int("budget", "trials", trials),
        minutes=None if minutes is None else float(minutes),
        tokens=None if tokens is None else _positive_int("budget", "tokens", tokens),
    )


def _study(raw: Any, default_name: str) -> dict[str, Any]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise TuneError("study must be a mapping: {name, dir, heartbeat_s, grace_s, max_retry}")
    for key in raw:
        if key not in STUDY_KEYS:
            raise TuneError(f"unknown study key '{key}'{_nearest(key, STUDY_KEYS)}")
    name = str(raw.get("name") or default_name)
    out: dict[str, Any] = {"name": name, "dir": Path(raw.get("dir") or f"runs/tune/{name}")}
    out["heartbeat_s"] = _positive_int("study", "heartbeat_s", raw.get("heartbeat_s", 10))
    out["grace_s"] = _positive_int("study", "grace_s", raw.get("grace_s", 60))
    if out["grace_s"] <= out["heartbeat_s"]:
        raise TuneError("study.grace_s must be longer than study.heartbeat_s")
    retry = raw.get("max_retry", 2)
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise TuneError(f"study.max_retry must be a whole number >= 0, got {retry!r}")
    out["max_retry"] = retry
    return out


def parse_search(raw: Any, folder: Path = Path("."), default_name: str = "study") -> Search:
    """A checked Search from the search file's data; TuneError names the first problem."""
    if not isinstance(raw, dict):
        raise TuneError("a search file must be a mapping with base, space, objective, budget...")
    for key in raw:
        if key not in TOP_KEYS:
            raise TuneError(f"unknown search file key '{key}'{_nearest(str(key), TOP_KEYS)}")
    space = parse_space(raw.get("space"))
    base = _apply_fixed(_base(raw.get("base"), folder), raw.get("overrides"), space)
    objectives = _objectives(raw.get("objective"))
    sampler, sampler_options = _named(raw.get("sampler"), "sampler", SAMPLERS, "tpe")
    evaluation = parse_eval(raw.get("eval"), folder, [o.metric for o in objectives])
    prunable = len(objectives) == 1 and METRICS.get(objectives[0].metric, ("", False))[1]
    prunable = prunable and objectives[0].direction == "minimize"
    pruner, pruner_options = _named(
        raw.get("pruner"), "pruner", PRUNERS, "median" if prunable else "none"
    )
    if pruner != "none" and not prunable:
        raise TuneError(
            f"pruner {pruner} stops trials on their validation loss, which needs one objective "
            "that is a validation loss to minimise; set pruner: none"
        )
    if len(objectives) > 1 and sampler == "cmaes":
        raise TuneError("the cmaes sampler handles one objective; use tpe or random for several")
    budget = _budget(raw.get("budget"))
    if sampler == "grid":
        points = len(space.grid())
        budget = Budget(min(budget.trials or points, points), budget.minutes, budget.tokens)
    elif budget == Budget():
        raise TuneError("budget is missing: give budget.trials, budget.minutes or budget.tokens")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TuneError(f"seed must be a whole number, got {seed!r}")
    trial_seed = raw.get("trial_seed", "per_trial")
    if trial_seed not in ("per_trial", "fixed"):
        raise TuneError("trial_seed must be per_trial or fixed")
    study = _study(raw.get("study"), default_name)
    return Search(
        name=study["name"],
        base=base,
        space=space,
        objectives=objectives,
        budget=budget,
        sampler=sampler,
        sampler_options=sampler_options,
        pruner=pruner,
        pruner_options=pruner_options,
        seed=seed,
        trial_seed=trial_seed,
        study_dir=study["dir"],
        heartbeat_s=study["heartbeat_s"],
        grace_s=study["grace_s"],
        max_retry=study["max_retry"],
        raw=raw,
        evaluation=evaluation,
    )


def load_search(path: str | Path) -> Search:
    path = Path(path)
    if not path.is_file():
        raise TuneError(f"search file not found: {path} (see examples/search_tiny.yaml)")
    try:
        raw = read_yaml(path)
    except TrainConfigError as err:
        raise TuneError(str(err)) from None
    return parse_search(raw, path.parent, default_name=path.stem)
