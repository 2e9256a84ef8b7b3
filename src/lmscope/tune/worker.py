"""The worker loop: take a trial, train it while sending heartbeats, record what happened, repeat
until the budget is spent; and `--n-jobs`, which runs several such workers as processes.

Each pass first fails trials whose worker stopped sending heartbeats (they go back in the queue,
same parameters). A worker whose queue is empty while other trials still run waits for them: one
of them may turn out to be stale and come back to the queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState

from lmscope.tune.errors import TuneError
from lmscope.tune.samplers import make_pruner, make_sampler
from lmscope.tune.search import Search
from lmscope.tune.storage import open_storage, quiet, retry_callback
from lmscope.tune.study import Heartbeat, claim, open_study
from lmscope.tune.trial import TrialOutcome, run_trial, write_outcome


def worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


_TELL = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED}


@dataclass
class WorkerResult:
    trials: int = 0
    stopped: str = "budget"  # budget | minutes | tokens | interrupted


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _tokens_used(study: optuna.Study) -> int:
    return sum(int(t.user_attrs.get("tokens", 0)) for t in study.get_trials(deepcopy=False))


def _describe(outcome: TrialOutcome, metric: str) -> str:
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in outcome.params.items()
    )
    value = "" if outcome.values is None else f" {metric}={outcome.values[0]:.4f}"
    why = f" ({outcome.error})" if outcome.error and outcome.state != "COMPLETE" else ""
    return (
        f"trial {outcome.number} {outcome.state.lower()}{value}{why}; {shown}; "
        f"{outcome.tokens:,} tokens, {outcome.train_s:.1f} s"
    )


def record(
    study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome, overhead_s: float
) -> None:
    """Write the outcome into the study. A trial that another worker already failed as stale
    (this worker's heartbeats stopped for too long) keeps its first verdict; the retry runs it."""
    attrs = {
        "tokens": outcome.tokens,
        "train_s": round(outcome.train_s, 3),
        "overhead_s": round(overhead_s, 4),
        "seed": outcome.seed,
        "out_dir": outcome.out_dir,
        "error": outcome.error,
        "curve": outcome.intermediate,
    }
    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if outcome.state in _TELL:
            values = outcome.values if outcome.state == "COMPLETE" else None
            study.tell(trial, values, state=_TELL[outcome.state])
        else:
            study.tell(trial, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        _say(f"trial {outcome.number} was already failed as stale and queued again")
        return
    if outcome.state == "INTERRUPTED":  # stopped by a signal: run it again later
        frozen = study.get_trials(deepcopy=False)[outcome.number]
        retry_callback(None)(study, frozen)


def _refuse_leftovers(study: optuna.Study, study_dir: Path) -> None:
    """A new study in a directory that holds another study's trials (its database deleted, say)
    would collide with their output directories. The directory is looked at before the trials,
    so a worker that joins just as another starts the first trial is not refused."""
    folder = study_dir / "trials"
    if not (folder.is_dir() and any(folder.iterdir())):
        return
    if all(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        raise TuneError(
            f"{folder} holds the trials of an earlier study; delete it or give this search "
            "another study.dir"
        )


def run_worker(
    search: Search,
    url: str,
    *,
    seed: int | None,
    parallel: bool,
    top_up: bool,
    threads: int | None = None,
) -> WorkerResult:
    """Work on the study until its budget is spent (or this run's minutes are up)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    sampler, pruner = make_sampler(search, seed, parallel), make_pruner(search)  # checks first
    storage: RDBStorage = open_storage(url, search.heartbeat_s, search.grace_s, search.max_retry)
    study = open_study(search, storage, sampler, pruner, top_up)
    _refuse_leftovers(study, search.study_dir)
    if seed is not None and search.sampler not in ("grid", "qmc"):
        # A resumed study's sampler seeded as the first run was would propose that run's first
        # points again; offset the seed by the trials already sampled (still reproducible).
        sampled = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        if sampled:
            study.sampler = make_sampler(search, seed + len(sampled), parallel)
    search.study_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = WorkerResult()
    metric = search.objectives[0].metric
    while True:
        tick = time.perf_counter()
        with quiet():
            fail_stale_trials(study)
        if (
            search.budget.minutes is not None
            and time.monotonic() - started >= 60 * search.budget.minutes
        ):
            result.stopped = "minutes"
            break
        if search.budget.tokens is not None and _tokens_used(study) >= search.budget.tokens:
            result.stopped = "tokens"
            break
        trial_id = claim(study, storage)
        if trial_id is None:
            if search.budget.trials is None:
                with warnings.catch_warnings():  # "heartbeats are meant for optimize()": we beat
                    warnings.simplefilter("ignore")
                    trial = study.ask()
            elif study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                time.sleep(min(search.heartbeat_s, 2))
                continue
            else:
                break
        else:
            trial = optuna.Trial(study, trial_id)
        trial.set_user_attr("worker", worker_id())
        with Heartbeat(storage, trial._trial_id, search.heartbeat_s):
            outcome = run_trial(search, trial, search.study_dir)
            record(study, trial, outcome, time.perf_counter() - tick - outcome.train_s)
        # the tuning layer's own time for this trial (queue, sampler, storage), for the bench
        outcome.overhead_s = time.perf_counter() - tick - outcome.train_s
        write_outcome(Path(outcome.out_dir), outcome)
        result.trials += 1
        _say(_describe(outcome, metric))
        if outcome.state == "INTERRUPTED":
            result.stopped = "interrupted"
            break
    return result


def run_processes(search_file: Path, url: str, n_jobs: int, threads: int, extra: list[str]) -> int:
    """`--n-jobs N`: N worker processes on this machine, each with `threads` threads; returns
    the worst exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "lmscope.tune", str(search_file), "--worker", "--storage", url]
    command += ["--threads", str(threads), *extra]
    procs = [subprocess.Popen(command, env=env) for _ in range(n_jobs)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        codes = [p.wait() for p in procs]
    return max(codes)
