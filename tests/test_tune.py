"""`lmscope tune`: search files (checked against the training config), studies that finish exactly
their budget, real training runs per trial, crashes recorded, resume, stale trials retried, and
the report. Every trial trains a 1-layer, 16-wide model for a dozen steps."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import typer
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from lmscope.train.config import load_config
from lmscope.tune.errors import TuneError
from lmscope.tune.report import export, load_study, summary_lines, write_report
from lmscope.tune.run import run_search
from lmscope.tune.samplers import make_pruner, make_sampler
from lmscope.tune.search import parse_search
from lmscope.tune.space import literal, parse_space
from lmscope.tune.storage import default_url, open_storage
from lmscope.tune.study import claim, open_study
from train_support import prepared_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("tune-data"), 30_000, vocab_size=300)


def base_config(data_dir: Path) -> dict[str, Any]:
    return {
        "out_dir": "unused",
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
        "data": {"dir": str(data_dir), "context": 16},
        "train": {"max_steps": 12, "batch_size": 4, "seed": 1},
        "optim": {"lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "eval": {"every": 4, "batches": 2, "test_at_end": False},
        "checkpoint": {"every": 0, "keep_last": 1},
        "log": {"every": 4, "tensorboard": False, "progress": False, "mlflow": "off"},
    }


SPACE = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "schedule.warmup_steps": {"type": "int", "low": 0, "high": 4},
    "model.dropout": [0.0, 0.1],
}


def write_search(tmp: Path, data_dir: Path, **fields: Any) -> Path:
    search = {
        "base": base_config(data_dir),
        "space": SPACE,
        "budget": {"trials": 5},
        "sampler": "tpe",
        "pruner": "asha",
        "study": {"name": "t", "dir": str(tmp / "study")},
        **fields,
    }
    path = tmp / "search.yaml"
    path.write_text(yaml.safe_dump(search))
    return path


def trials_of(tmp: Path, name: str = "t") -> list[optuna.trial.FrozenTrial]:
    return load_study(default_url(tmp / "study"), name).get_trials()


# ---- the search file ------------------------------------------------------------------------------


def test_literal_reads_back_as_the_same_value() -> None:
    for value in (1e-05, 3e-4, 0.1, 7, True, None, "cosine", {"r": 8}, 1e20):
        assert yaml.safe_load(literal(value)) == value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"optim.lerning_rate": {"type": "float", "low": 0.1, "high": 1}}},
         "did you mean 'optim.lr'"),
        ({"space": {"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "is empty"),
        ({"space": {"optim.lr": {"type": "float", "low": 0.1, "high": 0.1}}}, "holds one value"),
        ({"space": {"optim.lr": {"type": "float", "low": 0, "high": 1, "log": True}}},
         "needs low > 0"),
        ({"space": {"optim.lr": {"type": "float", "low": -1.0, "high": 1}}}, "must be"),
        ({"space": {"model.d_model": []}}, "non-empty list"),
        ({"space": {"model.d_model": [16, 16]}}, "repeat"),
        ({"space": {"optim.lr": {"type": "float", "low": 0.1, "hgh": 1}}}, "did you mean 'high'"),
        ({"space": {"train.batch_size": {"type": "int", "low": 1.5, "high": 4}}}, "whole number"),
        ({"space": {"finetune.lora.r": {"type": "int", "low": 2, "high": 8,
                                        "when": {"mode": "lora"}}}}, "not in the search space"),
        ({"budget": {"trials": 0}}, "budget.trials must be a positive whole number"),
        ({"budget": 0}, "budget.trials must be a positive whole number"),
        ({"budget": {"tokens": -5}}, "budget.tokens must be a positive whole number"),
        ({"budget": {}}, "budget is missing"),
        ({"budget": {"minutes": 0}}, "budget.minutes must be a positive number"),
        ({"sampler": "tpee"}, "did you mean 'tpe'"),
        ({"objective": ["val_loss", "parameters"], "pruner": "asha"}, "set pruner: none"),
        ({"objective": "val_los"}, "did you mean 'val_loss'"),
        ({"overrides": {"optim.lr": 0.1}}, "both in overrides and in the search space"),
        ({"spaces": 1}, "unknown search file key 'spaces'; did you mean 'space'"),
        ({"study": {"name": "t", "heartbeat_s": 5, "grace_s": 5}}, "grace_s must be longer"),
    ],
)  # fmt: skip
def test_bad_search_files_are_one_clear_error(
    data_dir: Path, change: dict[str, Any], message: str
) -> None:
    raw = {"base": base_config(data_dir), "space": SPACE, "budget": {"trials": 3}, **change}
    with pytest.raises(TuneError, match=message.replace("(", r"\(")):
        parse_search(raw)


def test_conditional_keys_and_the_grid() -> None:
    space = parse_space(
        {
            "finetune": {"type": "categorical", "choices": ["full", "lora"],
                         "set": {"lora": {"finetune.lora.alpha": 16.0}}},
            "finetune.lora.r": {"type": "int", "low": 4, "high": 8, "step": 4,
                                "when": {"finetune": "lora"}},
            "optim.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "step": 1e-3},
        }
    )  # fmt: skip
    points = space.grid()
    # full x 3 lrs + lora x 2 ranks x 3 lrs; no rank where LoRA is off
    assert len(points) == 3 + 6
    assert all(("finetune.lora.r" in p) == (p["finetune"] == "lora") for p in points)
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    overrides = space.overrides({"finetune": "lora", "finetune.lora.r": 8, "optim.lr": 1e-05})
    assert overrides == ["finetune.lora.alpha=16.0", "finetune.lora.r=8", "optim.lr=1.0e-05"]
    assert space.overrides({"finetune": "full", "optim.lr": 0.002}) == ["optim.lr=0.002"]
    with pytest.raises(TuneError, match="needs a step"):
        parse_space({"optim.lr": {"type": "float", "low": 0.1, "high": 1}}).grid()
    with pytest.raises(TuneError, match="cycle"):
        parse_space({
            "a": {"type": "categorical", "choices": ["x"], "set": {"x": {}}, "when": {"b": "y"}},
            "b": {"type": "categorical", "choices": ["y"], "set": {"y": {}}, "when": {"a": "x"}},
        })  # fmt: skip


# ---- studies ----------------------------------------------------------------------------------------


def test_tpe_with_asha_finishes_exactly_its_trials_each_a_real_run(
    data_dir: Path, tmp_path: Path
) -> None:
    search = write_search(tmp_path, data_dir, budget={"trials": 6})
    assert run_search(search) == 0
    trials = trials_of(tmp_path)
    assert len(trials) == 6
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert sorted(t.user_attrs["slot"] for t in trials) == list(range(6))
    assert len({t.user_attrs["seed"] for t in trials}) == 6  # per-trial seeds: 1 + number
    for t in trials:
        out = Path(t.user_attrs["out_dir"])
        record = json.loads((out / "trial.json").read_text())
        assert record["params"] == t.params and record["state"] == t.state.name
        assert t.user_attrs["tokens"] > 0 and t.user_attrs["train_s"] > 0
        if t.state == TrialState.COMPLETE:
            training = json.loads((out / "training_record.json").read_text())
            assert training["config"]["optim"]["lr"] == pytest.approx(t.params["optim.lr"])
            assert training["config"]["train"]["seed"] == t.user_attrs["seed"]
            best = min(e["val_loss"] for e in training["metrics"]["eval"])
            assert t.value == pytest.approx(best)  # the objective is the run's best val loss
            assert t.user_attrs["tokens"] == training["tokens_seen"]
            assert 11 * 4 * 16 < training["tokens_seen"] <= 12 * 4 * 16  # a few short rows
        else:  # pruned at an evaluation before the last step, with what it had reported
            assert t.intermediate_values and max(t.intermediate_values) < 12
            assert 0 < t.user_attrs["tokens"] <= max(t.intermediate_values) * 4 * 16
    # run again: the study is complete, nothing new runs
    assert run_search(search) == 0
    assert len(trials_of(tmp_path)) == 6


def test_report_writes_a_ready_training_config_json_and_offline_html(
    data_dir: Path, tmp_path: Path
) -> None:
    search = write_search(tmp_path, data_dir, budget={"trials": 5}, pruner="none")
    run_search(search)
    study = load_study(default_url(tmp_path / "study"))
    paths = write_report(study, tmp_path / "report")
    best = min((t for t in study.trials if t.values), key=lambda t: t.values[0])
    config = load_config(paths["config"])  # what `lmscope train best.yaml` reads
    assert config.optim.lr == pytest.approx(best.params["optim.lr"])
    assert config.schedule.warmup_steps == best.params["schedule.warmup_steps"]
    assert config.train.seed == best.user_attrs["seed"]
    data = json.loads(paths["json"].read_text())
    assert data["best"][0]["number"] == best.number
    assert data["totals"]["tokens"] == sum(t.user_attrs["tokens"] for t in study.trials)
    assert len(data["trials"]) == 5 and data["counts"]["COMPLETE"] == 5
    assert set(data["importances"][0]["params"]) == set(SPACE)
    assert sum(data["importances"][0]["params"].values()) == pytest.approx(1.0)
    page = paths["html"].read_text()
    assert page.count("<svg") >= 5 and "Parallel coordinates" in page and "Slice" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_a_crashing_trial_is_failed_with_its_error_and_the_grid_goes_on(
    data_dir: Path, tmp_path: Path
) -> None:
    space = {"model.n_heads": [2, 3], "optim.lr": [1e-3, 3e-3]}  # 3 heads do not divide 16
    search = write_search(tmp_path, data_dir, space=space, sampler="grid", pruner="none",
                          budget=None)  # fmt: skip
    assert run_search(search) == 0
    trials = trials_of(tmp_path)
    points = sorted((t.params["model.n_heads"], t.params["optim.lr"]) for t in trials)
    assert points == [(2, 1e-3), (2, 3e-3), (3, 1e-3), (3, 3e-3)]  # each grid point once
    for t in trials:
        if t.params["model.n_heads"] == 3:
            assert t.state == TrialState.FAIL and "n_heads" in t.user_attrs["error"]
        else:
            assert t.state == TrialState.COMPLETE and t.user_attrs["error"] is None


def test_resume_tops_up_a_larger_budget_and_refuses_a_changed_search(
    data_dir: Path, tmp_path: Path
) -> None:
    run_search(write_search(tmp_path, data_dir, budget={"trials": 2}, pruner="none"))
    assert len(trials_of(tmp_path)) == 2
    run_search(write_search(tmp_path, data_dir, budget={"trials": 3}, pruner="none"))
    assert [t.state for t in trials_of(tmp_path)] == [TrialState.COMPLETE] * 3
    changed = {**SPACE, "optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}
    with pytest.raises(TuneError, match="different base config, space"):
        run_search(write_search(tmp_path, data_dir, space=changed, pruner="none"))


def test_a_resumed_study_does_not_propose_the_first_runs_points_again(
    data_dir: Path, tmp_path: Path
) -> None:
    """Run again with a larger budget, the sampler (same seed, new process) used to draw the
    first run's first point once more: a trial spent on parameters already tried."""
    run_search(write_search(tmp_path, data_dir, budget={"trials": 1}, pruner="none"))
    run_search(write_search(tmp_path, data_dir, budget={"trials": 2}, pruner="none"))
    first, second = trials_of(tmp_path)
    assert second.state == TrialState.COMPLETE
    assert second.params != first.params


def test_a_trial_whose_worker_died_is_failed_and_retried(data_dir: Path, tmp_path: Path) -> None:
    path = write_search(tmp_path, data_dir, budget={"trials": 3}, pruner="none",
                        study={"name": "t", "dir": str(tmp_path / "study"), "heartbeat_s": 1,
                               "grace_s": 2})  # fmt: skip
    search = parse_search(yaml.safe_load(path.read_text()))
    storage = open_storage(default_url(search.study_dir), 1, 2, 2)
    study = open_study(search, storage, make_sampler(search, 0, False), make_pruner(search), True)
    dead = claim(study, storage)  # a worker took slot 0, sent one heartbeat, then vanished
    assert dead is not None
    run_search(path)  # waits for the dead trial to go stale, then runs its retry
    trials = trials_of(tmp_path)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["slot"] == 0
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["slot"] for t in done) == [0, 1, 2]
    retry = next(t for t in done if t.user_attrs["slot"] == 0)
    assert retry.system_attrs["failed_trial"] == failed[0].number
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    data = export(load_study(default_url(tmp_path / "study")))
    assert data["counts"]["FAIL"] == 1 and data["counts"]["RETRIED"] == 1
    assert "0 failed, 1 interrupted and queued again" in summary_lines(data)[0]


def test_several_objectives_give_the_pareto_front(data_dir: Path, tmp_path: Path) -> None:
    space = {"model.d_model": [8, 16, 32], "optim.lr": [1e-3, 1e-2]}
    search = write_search(tmp_path, data_dir, space=space, sampler="grid", pruner="none",
                          objective=["val_loss", "parameters"], budget=None)  # fmt: skip
    run_search(search)
    data = export(load_study(default_url(tmp_path / "study")))
    done = [t for t in data["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 6

    def dominated(a: list[float]) -> bool:
        return any(
            all(x <= y for x, y in zip(b["values"], a, strict=True)) and b["values"] != a
            for b in done
        )

    front = sorted(t["number"] for t in done if not dominated(t["values"]))
    assert sorted(t["number"] for t in data["best"]) == front
    assert data["trials"][0]["values"][1] == float(data["trials"][0]["values"][1])


def test_token_budget_stops_starting_trials(data_dir: Path, tmp_path: Path) -> None:
    # each trial trains 12 steps x 4 rows x <= 16 tokens (~760): 1000 allows two trials
    run_search(write_search(tmp_path, data_dir, budget={"tokens": 1000}, pruner="none"))
    tokens = [t.user_attrs["tokens"] for t in trials_of(tmp_path)]
    assert len(tokens) == 2 and tokens[0] < 1000 <= sum(tokens)


def test_unreachable_storage_is_one_error_and_creates_nothing(
    data_dir: Path, tmp_path: Path
) -> None:
    search = write_search(tmp_path, data_dir)
    url = "postgresql://lmscope:s3cret@127.0.0.1:1/nothing"
    start = time.monotonic()
    with pytest.raises(TuneError, match="cannot reach storage") as err:
        run_search(search, storage=url)
    assert "s3cret" not in str(err.value) and time.monotonic() - start < 30
    assert not (tmp_path / "study").exists()


def test_cli_reports_user_mistakes_in_one_line(data_dir: Path, tmp_path: Path) -> None:
    from lmscope.commands.tune import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command, so `tune` stays a subcommand
    runner = CliRunner()
    bad = write_search(tmp_path, data_dir, space={"optim.lerning_rate": [0.1, 0.2]})
    result = runner.invoke(app, ["tune", str(bad)])
    assert result.exit_code == 2 and "did you mean 'optim.lr'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["tune", "report", str(tmp_path)])
    assert result.exit_code == 2 and "not a study directory" in result.output
    good = write_search(tmp_path, data_dir, budget={"trials": 2}, pruner="none")
    assert runner.invoke(app, ["tune", str(good)]).exit_code == 0
    result = runner.invoke(app, ["tune", "report", str(tmp_path / "study"), "--no-table"])
    assert result.exit_code == 0 and "best trial" in result.output
    assert "needs 5 complete trials (2 so far)" in result.output  # no importance from 2 points
    result = runner.invoke(app, ["tune", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "search file not found" in result.output
    assert (tmp_path / "study" / "report" / "best.yaml").is_file()
    assert math.isfinite(json.loads((tmp_path / "study" / "report" / "study.json").read_text())
                         ["best"][0]["values"][0])  # fmt: skip


def test_example_search_files_load_and_give_valid_trial_configs(tmp_path: Path) -> None:
    from lmscope.tune.search import load_search
    from lmscope.tune.trial import trial_config

    examples = Path(__file__).resolve().parents[1] / "examples"
    tiny = load_search(examples / "search_tiny.yaml")
    assert len(tiny.space.grid()) == 48 and tiny.budget.trials == 20
    lora = load_search(examples / "search_lora.yaml")
    values = {"finetune": "lora", "finetune.lora.r": 8, "finetune.lora.alpha": 32.0,
              "optim.lr": 1e-4}  # fmt: skip
    config = trial_config(lora, lora.space.overrides(values), tmp_path, seed=3)
    assert config.finetune.lora is not None and config.finetune.lora.r == 8
    assert config.finetune.freeze_layers == 0 and config.train.seed == 3
    full = trial_config(lora, lora.space.overrides({"finetune": "full", "optim.lr": 1e-4}),
                        tmp_path, seed=3)  # fmt: skip
    assert full.finetune.lora is None and full.finetune.freeze_layers == 24


def test_an_eval_task_metric_as_the_objective(data_dir: Path, tmp_path: Path) -> None:
    from lmscope.evaluate.runner import run_tasks
    from lmscope.evaluate.tasks import load_tasks
    from lmscope.zoo.registry import load

    (tmp_path / "held_out.txt").write_text("Nay, but this dotage of our general's\n\n" * 3)
    objective = {"metric": "eval:held_out:bits_per_byte", "direction": "minimize"}
    search = write_search(tmp_path, data_dir, objective=objective, pruner="none",
                          budget={"trials": 2}, eval={"tasks": "held_out.txt"})  # fmt: skip
    run_search(search)
    trials = trials_of(tmp_path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:  # the value is what `lmscope eval` gives for the trial's saved model
        model = Path(t.user_attrs["out_dir"]) / "model"
        report = run_tasks(load(str(model)), load_tasks(tmp_path / "held_out.txt"))
        assert t.value == pytest.approx(report["tasks"][0]["metrics"]["bits_per_byte"]["value"])
    with pytest.raises(TuneError, match="no task 'held'"):
        parse_search({**yaml.safe_load(search.read_text()),
                      "objective": {**objective, "metric": "eval:held:bits_per_byte"}},
                     tmp_path)  # fmt: skip
    with pytest.raises(TuneError, match="give direction"):
        parse_search({**yaml.safe_load(search.read_text()),
                      "objective": "eval:held_out:bits_per_byte"}, tmp_path)  # fmt: skip


def test_minutes_budget_stops_starting_trials(data_dir: Path, tmp_path: Path) -> None:
    # 0.6 s for this run: at least the first trial starts, far fewer than 20 finish, and the
    # rest stay queued for the next run
    run_search(write_search(tmp_path, data_dir, budget={"trials": 20, "minutes": 0.01}))
    states = [t.state for t in trials_of(tmp_path)]
    finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    assert 1 <= finished < 20 and states.count(TrialState.WAITING) == 20 - finished


@pytest.mark.parametrize("name", ["random", "gp", "qmc"])
def test_other_samplers_run_a_small_study(data_dir: Path, tmp_path: Path, name: str) -> None:
    run_search(write_search(tmp_path, data_dir, sampler=name, pruner="none", budget={"trials": 3}))
    trials = trials_of(tmp_path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:  # every sampled value inside its range
        assert 1e-4 <= t.params["optim.lr"] <= 1e-2 and 0 <= t.params["schedule.warmup_steps"] <= 4


def test_missing_optional_packages_are_named(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from lmscope.tune.dashboard import serve_dashboard

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n in ("cmaes", "optuna_dashboard") else real(n, *a),
    )
    with pytest.raises(TuneError, match="pip install cmaes"):
        run_search(write_search(tmp_path, data_dir, sampler="cmaes"))
    assert not (tmp_path / "study").exists()
    with pytest.raises(TuneError, match="pip install optuna-dashboard"):
        serve_dashboard("sqlite:///nothing.db", 8080)


def test_a_new_study_refuses_a_directory_with_old_trials(data_dir: Path, tmp_path: Path) -> None:
    search = write_search(tmp_path, data_dir, budget={"trials": 1}, pruner="none")
    run_search(search)
    (tmp_path / "study" / "study.db").unlink()  # the database is gone, the trial outputs stay
    with pytest.raises(TuneError, match="holds the trials of an earlier study"):
        run_search(search)


def test_a_result_for_a_trial_already_failed_as_stale_keeps_the_first_verdict(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmscope.tune.trial import TrialOutcome
    from lmscope.tune.worker import record

    path = write_search(tmp_path, data_dir, budget={"trials": 1}, pruner="none")
    search = parse_search(yaml.safe_load(path.read_text()))
    storage = open_storage(default_url(search.study_dir), 10, 60, 2)
    study = open_study(search, storage, make_sampler(search, 0, False), make_pruner(search), True)
    trial_id = claim(study, storage)
    assert trial_id is not None
    trial = optuna.Trial(study, trial_id)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)  # another worker judged it stale
    outcome = TrialOutcome(0, "COMPLETE", {}, [], 1, str(tmp_path / "t0"), values=[1.0])
    record(study, trial, outcome, 0.0)  # no "trial has already finished" error
    assert "already failed as stale" in capsys.readouterr().err
    assert study.get_trials()[0].state == TrialState.FAIL
