"""The study in its storage: made once (by whichever worker gets there first), with its trial
budget laid out as queued trials ("slots"), so that any number of workers finish exactly that
many trials: a worker takes a queued trial by moving it from WAITING to RUNNING, which the
database lets only one worker do. Grid search queues each grid point once, the same way.

Study-level facts (base config, space, objectives, budget) are kept in the study's user
attributes, so `lmscope tune report` needs nothing but the storage.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial

from lmscope.tune.errors import TuneError
from lmscope.tune.search import Search

META = "lmscope"  # study user attribute holding what the study was made from
READY = "lmscope_ready"  # set once every slot is queued
READY_WAIT_S = 120


def study_meta(search: Search) -> dict[str, Any]:
    return {
        "fingerprint": search.fingerprint(),
        "base": search.base,
        "space": search.space.describe(),
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in search.objectives],
        "sampler": search.sampler,
        "pruner": search.pruner,
        "budget": {"trials": search.budget.trials, "tokens": search.budget.tokens},
        "study_dir": str(search.study_dir),
        "created": time.time(),
    }


def slot_count(study: optuna.Study) -> int:
    slots = {t.user_attrs.get("slot") for t in study.get_trials(deepcopy=False)}
    slots.discard(None)
    return len(slots)


def add_slots(study: optuna.Study, search: Search) -> int:
    """Queue trials up to budget.trials; returns how many were added."""
    want = search.budget.trials
    have = slot_count(study)
    if want is None or have >= want:
        return 0
    if search.sampler == "grid":
        points = search.space.grid()
        if want < len(points):  # a partial grid: a seeded random subset, not the first corner
            points = random.Random(search.seed).sample(points, want)
        for slot in range(have, want):
            study.enqueue_trial(points[slot], user_attrs={"slot": slot})
    else:
        for slot in range(have, want):
            study.add_trial(create_trial(state=TrialState.WAITING, user_attrs={"slot": slot}))
    return want - have


def open_study(
    search: Search,
    storage: RDBStorage,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    top_up: bool,
) -> optuna.Study:
    """Create the study (and its slots) or join it; refuse one made from a different search."""
    directions: list[Any] = [o.direction for o in search.objectives]
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=search.name,
            directions=directions,
            sampler=sampler,
            pruner=pruner,
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=search.name, storage=storage, sampler=sampler, pruner=pruner
        )
        _wait_ready(study)
        meta = study.user_attrs.get(META, {})
        if meta.get("fingerprint") != search.fingerprint():
            raise TuneError(
                f"study '{search.name}' was made from a different base config, space, objective "
                "or sampler; give this search a new study.name (or a new study.dir)"
            ) from None
        if top_up:
            add_slots(study, search)
        return study
    study.set_user_attr(META, study_meta(search))
    add_slots(study, search)
    study.set_user_attr(READY, True)
    return study


def _wait_ready(study: optuna.Study) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while not study.user_attrs.get(READY):
        if time.monotonic() > deadline:
            raise TuneError(
                f"study '{study.study_name}' was never finished being set up (its maker "
                "stopped); delete it or use a new study.name"
            )
        time.sleep(0.5)


def claim(study: optuna.Study, storage: RDBStorage) -> int | None:
    """Take a queued trial (WAITING -> RUNNING); its trial id, or None when the queue is empty.
    Two workers racing for one trial: the database lets one of them have it."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                storage.record_heartbeat(trial_id)
                return trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class Heartbeat:
    """Records a heartbeat for a running trial every `interval_s` in a background thread."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval_s: float) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tune-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a transient database error: the next beat tries again
                continue

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def counts(study: optuna.Study) -> dict[str, int]:
    out = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name] += 1
    return out
