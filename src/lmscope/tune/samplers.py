"""Optuna samplers and pruners by their names in the search file.

Grid search does not use Optuna's GridSampler: every grid point is put in the study's queue once
when the study is made (see study.py), so any number of workers run each point exactly once.
Pruners see the trainer's validation losses at the steps it evaluates (`eval.every`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import optuna

from lmscope.tune.errors import TuneError
from lmscope.tune.search import Search

# optional packages each sampler imports when it first samples
NEEDS = {"cmaes": [("cmaes", "cmaes")], "gp": [("scipy", "scipy")], "qmc": [("scipy", "scipy")]}


def _build(kind: str, name: str, factory: Any, options: dict[str, Any]) -> Any:
    try:
        return factory(**options)
    except (TypeError, ValueError) as err:
        reason = str(err).splitlines()[0]
        raise TuneError(f"{kind} {name}: bad option ({reason})") from None


def make_sampler(search: Search, seed: int | None, parallel: bool) -> optuna.samplers.BaseSampler:
    """The sampler; `parallel` (several workers) turns on TPE's constant liar, so workers that
    ask at the same moment are steered apart."""
    options = dict(search.sampler_options)
    s = optuna.samplers
    for module, package in NEEDS.get(search.sampler, ()):
        if importlib.util.find_spec(module) is None:
            raise TuneError(f"sampler {search.sampler} needs {package}: pip install {package}")
    if search.sampler in ("grid", "random"):  # grid: every point is queued, nothing to sample
        return _build("sampler", search.sampler, s.RandomSampler, {"seed": seed, **options})
    if search.sampler == "tpe":
        defaults = {"seed": seed, "multivariate": True, "constant_liar": parallel}
        return _build("sampler", "tpe", s.TPESampler, {**defaults, **options})
    if search.sampler == "gp":
        return _build("sampler", "gp", s.GPSampler, {"seed": seed, **options})
    if search.sampler == "cmaes":
        defaults = {"seed": seed, "warn_independent_sampling": False}
        return _build("sampler", "cmaes", s.CmaEsSampler, {**defaults, **options})
    return _build("sampler", "qmc", s.QMCSampler, {"seed": seed, **options})


def make_pruner(search: Search) -> optuna.pruners.BasePruner:
    """The pruner, its resources in training steps: the first report is at `eval.every`, the
    last at `train.max_steps`."""
    p = optuna.pruners
    options = dict(search.pruner_options)
    every = int(search.base.get("eval", {}).get("every", 200) or 0)
    max_steps = int(search.base.get("train", {}).get("max_steps", 1000))
    if search.pruner != "none" and (every <= 0 or every >= max_steps):
        raise TuneError(
            f"pruner {search.pruner} needs validation losses during training: set eval.every "
            f"below train.max_steps ({max_steps}) in the base config, or pruner: none"
        )
    if search.pruner == "median":
        defaults = {"n_startup_trials": 4, "n_warmup_steps": 0}
        return _build("pruner", "median", p.MedianPruner, {**defaults, **options})
    if search.pruner == "asha":
        defaults = {"min_resource": every, "reduction_factor": 3}
        return _build("pruner", "asha", p.SuccessiveHalvingPruner, {**defaults, **options})
    if search.pruner == "hyperband":
        defaults = {"min_resource": every, "max_resource": max_steps, "reduction_factor": 3}
        return _build("pruner", "hyperband", p.HyperbandPruner, {**defaults, **options})
    return p.NopPruner()
