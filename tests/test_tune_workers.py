"""Several workers on one study: `--n-jobs` processes on SQLite, and 4 worker processes on a real
PostgreSQL server with one of them killed (SIGKILL) in the middle of a trial. N trials requested:
exactly N finished or pruned, each budget slot once, nothing left running or queued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from lmscope.tune.report import load_study
from lmscope.tune.run import run_search
from lmscope.tune.storage import default_url
from pg_support import PostgresUnavailable, postgres_server
from test_tune import SPACE, base_config, data_dir  # noqa: F401 (fixtures)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def search_file(tmp: Path, data: Path, trials: int, steps: int) -> Path:
    base = base_config(data)
    base["train"]["max_steps"] = steps
    base["eval"]["every"] = steps // 4
    search = {
        "base": base,
        "space": SPACE,
        "budget": {"trials": trials},
        "sampler": "tpe",
        "pruner": "asha",
        "study": {"name": "w", "dir": str(tmp / "study"), "heartbeat_s": 1, "grace_s": 3},
    }
    path = tmp / "search.yaml"
    path.write_text(yaml.safe_dump(search))
    return path


def assert_exactly(trials: list[optuna.trial.FrozenTrial], n: int) -> None:
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.user_attrs["slot"] for t in finished) == list(range(n))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_n_jobs_processes_share_one_sqlite_study(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    path = search_file(tmp_path, data_dir, trials=4, steps=12)
    assert run_search(path, n_jobs=2, threads=1) == 0
    trials = load_study(default_url(tmp_path / "study")).get_trials()
    assert_exactly(trials, 4)
    assert len(trials) == 4  # no failures, no retries
    assert all((Path(t.user_attrs["out_dir"]) / "trial.json").is_file() for t in trials)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as err:
        pytest.skip(f"no PostgreSQL server: {err}")


def _running_on(url: str, worker: str) -> int | None:
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:  # read only: the workers make the tables and the study
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        study = optuna.load_study(study_name="w", storage=storage)
    except (KeyError, OperationalError, ProgrammingError, StorageInternalError):  # not yet
        return None
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == worker and t.intermediate_values:
            return t.number
    return None


def _freeze_mid_trial(url: str, victim: subprocess.Popen[bytes]) -> int:
    """SIGSTOP the victim while it is inside a trial that has reported a validation loss; the
    trial's number. (Checked again once frozen: the trial may have ended just before.)"""
    worker = f"{os.uname().nodename}:{victim.pid}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the victim worker exited before running a trial"
        number = _running_on(url, worker)
        if number is not None:
            os.kill(victim.pid, signal.SIGSTOP)
            if _running_on(url, worker) == number:
                return number
            os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the victim worker never ran a trial")


def test_four_workers_on_postgres_one_killed_mid_trial(
    postgres: str,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    n = 6
    path = search_file(tmp_path, data_dir, trials=n, steps=24)
    command = [sys.executable, "-m", "lmscope.tune", str(path), "--worker", "--storage", postgres]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*command, "--threads", "1"], env=ENV, stderr=subprocess.PIPE)

    # The victim starts first (so it surely gets a trial) and is frozen inside it; the other
    # three start while it is frozen, and it is killed with SIGKILL while they work.
    workers = [start()]
    try:
        killed = _freeze_mid_trial(postgres, workers[0])
        workers += [start() for _ in range(3)]
        time.sleep(1.0)
        workers[0].kill()
        workers[0].wait()
        for w in workers[1:]:
            _, err = w.communicate(timeout=180)
            assert w.returncode == 0, err.decode()[-2000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    trials = load_study(postgres, "w").get_trials()
    assert_exactly(trials, n)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [killed]  # only the killed one, failed as stale
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry[0].params == failed[0].params
    assert retry[0].user_attrs["worker"] != failed[0].user_attrs["worker"]
    assert len(trials) == n + 1


def test_sigterm_mid_trial_requeues_it_and_the_next_run_finishes_it(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = search_file(tmp_path, data_dir, trials=1, steps=120)
    url = default_url(tmp_path / "study")
    command = [sys.executable, "-m", "lmscope.tune", str(path), "--worker", "--threads", "1"]
    worker = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while _running_on(url, f"{os.uname().nodename}:{worker.pid}") is None:
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130, err.decode()[-2000:]
    trials = load_study(url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert "interrupted at step" in trials[0].user_attrs["error"]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["slot"] == 0
    assert run_search(path) == 0  # the next run takes the queued retry
    trials = load_study(url).get_trials()
    assert trials[1].state in (TrialState.COMPLETE, TrialState.PRUNED) and len(trials) == 2
