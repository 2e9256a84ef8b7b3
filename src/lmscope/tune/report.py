"""What a study found: the best trial and its config, a table of every trial, parameter
importances, compute used; written as a ready `lmscope train` YAML, JSON (for model cards) and
an offline HTML page.

    lmscope tune report runs/tune/tiny         # a study directory (its study.db)
    lmscope tune report NAME --storage URL     # a study in a database
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from lmscope.files import atomic_write_text
from lmscope.train.config import apply_overrides
from lmscope.tune.errors import TuneError
from lmscope.tune.space import Param, SearchSpace, literal
from lmscope.tune.storage import DB_FILE, default_url, safe_url
from lmscope.tune.study import META

MIN_IMPORTANCE_TRIALS = 5


def load_study(url: str, name: str | None = None) -> optuna.Study:
    """A study read back from storage (the only one there when `name` is None)."""
    from optuna.storages import RDBStorage

    try:
        storage = RDBStorage(url, skip_table_creation=True)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TuneError(f"cannot read studies from {safe_url(url)}: {first}") from None
    if name is None:
        if len(names) != 1:
            raise TuneError(f"{safe_url(url)} holds studies {names}; name one with --study")
        name = names[0]
    if name not in names:
        raise TuneError(f"no study '{name}' in {safe_url(url)}; it holds: {', '.join(names)}")
    return optuna.load_study(study_name=name, storage=storage)


def resolve(study: str, storage: str | None) -> tuple[str, str | None]:
    """(storage URL, study name) from the report command's STUDY argument."""
    if storage is not None:
        return storage, study
    path = Path(study)
    if (path / DB_FILE).is_file():
        return default_url(path), None
    raise TuneError(
        f"{study} is not a study directory (no {DB_FILE} in it); give a study directory, or a "
        "study name with --storage URL"
    )


def meta(study: optuna.Study) -> dict[str, Any]:
    found = study.user_attrs.get(META)
    if not isinstance(found, dict):
        raise TuneError(f"study '{study.study_name}' was not made by lmscope tune")
    return found


def space_of(info: dict[str, Any]) -> SearchSpace:
    params = []
    for name, spec in info["space"].items():
        params.append(
            Param(
                name,
                spec["type"],
                low=spec.get("low"),
                high=spec.get("high"),
                log=bool(spec.get("log")),
                step=spec.get("step"),
                choices=tuple(spec.get("choices", ())),
                sets=spec.get("set", {}),
                when={k: tuple(v) for k, v in spec.get("when", {}).items()},
            )
        )
    return SearchSpace(params)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (several)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return []
    return [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)


def importances(study: optuna.Study) -> list[dict[str, float]]:
    """Per objective, each parameter's share of the objective's variation (PED-ANOVA); none
    from fewer than MIN_IMPORTANCE_TRIALS complete trials (a share of two points is noise)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: list[dict[str, float]] = []
    for index in range(len(study.directions)):
        if len(done) < MIN_IMPORTANCE_TRIALS or not any(t.params for t in done):
            out.append({})
            continue

        def target(trial: FrozenTrial, i: int = index) -> float:
            return float(trial.values[i])

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(
                    study, evaluator=PedAnovaImportanceEvaluator(), target=target
                )
        except (RuntimeError, ValueError):  # e.g. one distinct value for every parameter
            found = {}
        out.append({k: float(v) for k, v in found.items()})
    return out


def best_config(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """The training config of a trial: base + its parameters + its seed, out_dir beside it."""
    info = meta(study)
    overrides = space_of(info).overrides(trial.params)
    data = apply_overrides(copy.deepcopy(info["base"]), overrides)
    data.setdefault("train", {})["seed"] = trial.user_attrs.get("seed", 0)
    data["out_dir"] = f"runs/{study.study_name}-best"
    return data


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    curve = trial.user_attrs.get("curve") or sorted(trial.intermediate_values.items())
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": trial.values,
        "params": trial.params,
        "tokens": trial.user_attrs.get("tokens", 0),
        "seconds": trial.user_attrs.get("train_s"),
        "seed": trial.user_attrs.get("seed"),
        "out_dir": trial.user_attrs.get("out_dir"),
        "error": trial.user_attrs.get("error"),
        "retry_of": trial.system_attrs.get("failed_trial"),
        "curve": [[int(s), float(v)] for s, v in curve],
    }


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Failed trials that were queued again (interrupted, or stale after their worker died)."""
    # Optuna's retry callback names the failed trial on its copy (what `retried_trial_number`,
    # an experimental API, reads).
    found = (t.system_attrs.get("failed_trial") for t in trials)
    return {int(n) for n in found if n is not None}


def export(study: optuna.Study) -> dict[str, Any]:
    """Everything the report shows, as plain data (the JSON export for model cards)."""
    info = meta(study)
    trials = study.get_trials(deepcopy=False)
    best = best_trials(study)
    rows = [trial_row(t) for t in trials]
    return {
        "study": study.study_name,
        "objectives": info["objectives"],
        "sampler": info["sampler"],
        "pruner": info["pruner"],
        "budget": info["budget"],
        "space": info["space"],
        "base_config": info["base"],
        "counts": {
            **{s.name: sum(t.state == s for t in trials) for s in TrialState},
            "RETRIED": len(retried_numbers(trials)),  # of FAIL: queued again, not lost
        },
        "totals": {
            "tokens": sum(int(r["tokens"] or 0) for r in rows),
            "seconds": round(sum(float(r["seconds"] or 0) for r in rows), 3),
        },
        "best": [trial_row(t) for t in best],
        "best_config": best_config(study, best[0]) if best else None,
        "importances": [
            {"objective": o["metric"], "params": imp}
            for o, imp in zip(info["objectives"], importances(study), strict=True)
        ],
        "trials": rows,
    }


def _value(values: list[float] | None) -> str:
    if not values:
        return "-"
    return ", ".join(f"{v:.4f}" if math.isfinite(v) else str(v) for v in values)


def _param_text(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The printed report (from `export`): counts, compute, best trial, importances."""
    c = data["counts"]
    retried = c.get("RETRIED", 0)
    metrics = ", ".join(o["metric"] for o in data["objectives"])
    lines = [
        f"study {data['study']}: {c['COMPLETE']} complete, {c['PRUNED']} pruned, "
        f"{c['FAIL'] - retried} failed, {retried} interrupted and queued again, "
        f"{c['RUNNING']} running, {c['WAITING']} waiting; "
        f"{data['totals']['tokens']:,} tokens, {data['totals']['seconds']:.1f} s of training"
    ]
    if not data["best"]:
        lines.append("no trial has completed yet")
        return lines
    for row in data["best"]:
        params = ", ".join(f"{k}={_param_text(v)}" for k, v in row["params"].items())
        lines.append(f"best trial {row['number']}: {metrics} = {_value(row['values'])}; {params}")
    for entry in data["importances"]:
        if entry["params"]:
            shares = ", ".join(f"{k} {v:.2f}" for k, v in entry["params"].items())
            lines.append(f"importance for {entry['objective']}: {shares}")
        elif c["COMPLETE"] < MIN_IMPORTANCE_TRIALS:
            lines.append(
                f"importance for {entry['objective']}: needs {MIN_IMPORTANCE_TRIALS} complete "
                f"trials ({c['COMPLETE']} so far)"
            )
    return lines


def table_lines(data: dict[str, Any]) -> list[str]:
    names = sorted({k for r in data["trials"] for k in r["params"]})
    head = ["#", "state", "value", *names, "tokens", "seconds"]
    rows = [head]
    for r in data["trials"]:
        cells = [str(r["number"]), r["state"].lower(), _value(r["values"])]
        cells += [_param_text(r["params"][n]) if n in r["params"] else "" for n in names]
        cells += [f"{int(r['tokens'] or 0):,}", f"{float(r['seconds'] or 0):.1f}"]
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def write_report(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """best.yaml, study.json and report.html in `out_dir` (each written atomically)."""
    from lmscope.tune.html import render_html

    data = export(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "study.json", "html": out_dir / "report.html"}
    atomic_write_text(paths["json"], json.dumps(data, indent=2, default=str))
    atomic_write_text(paths["html"], render_html(data))
    if data["best_config"] is not None:
        paths["config"] = out_dir / "best.yaml"
        header = (
            f"# best trial {data['best'][0]['number']} of study {data['study']} "
            f"({', '.join(o['metric'] for o in data['objectives'])} = "
            f"{_value(data['best'][0]['values'])})\n# lmscope train {paths['config']}\n"
        )
        text = yaml.safe_dump(data["best_config"], sort_keys=False)
        atomic_write_text(paths["config"], header + text)
    return paths


__all__ = ["export", "literal", "load_study", "resolve", "summary_lines", "write_report"]
