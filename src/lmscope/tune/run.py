"""`lmscope tune SEARCH.yaml`: load the search, then work on its study in this process or in
`--n-jobs` processes, and print where the study stands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lmscope.tune.errors import TuneError
from lmscope.tune.search import Search, load_search
from lmscope.tune.storage import default_url, open_storage


def run_search(
    search_file: Path,
    *,
    storage: str | None = None,
    worker: bool = False,
    n_jobs: int = 1,
    threads: int | None = None,
    study_dir: Path | None = None,
) -> int:
    """Run (or join, with `worker`) the study of a search file; returns the exit code."""
    from lmscope.tune.report import summary_lines
    from lmscope.tune.worker import WorkerResult, run_processes, run_worker

    if n_jobs < 1:
        raise TuneError(f"--n-jobs must be at least 1, got {n_jobs}")
    if threads is not None and threads < 1:
        raise TuneError(f"--threads must be at least 1, got {threads}")
    search = load_search(search_file)
    check_data(search)
    if study_dir is not None:
        search.study_dir = study_dir
    url = storage or default_url(search.study_dir)
    if n_jobs > 1:
        # Make the study (and its queue) once here, then let the workers share it.
        run_worker_setup(search, url)
        per_job = threads or max(1, (os.cpu_count() or 1) // n_jobs)
        extra = [] if study_dir is None else ["--study-dir", str(study_dir)]
        code = run_processes(search_file, url, n_jobs, per_job, extra)
    else:
        seed = search.seed if not worker else None
        try:
            result = run_worker(
                search, url, seed=seed, parallel=worker, top_up=not worker, threads=threads
            )
        except KeyboardInterrupt:  # a second Ctrl-C: the running trial goes stale and is retried
            result = WorkerResult(stopped="interrupted")
        code = 130 if result.stopped == "interrupted" else 0
        if code:
            print(
                f"stopped; the study keeps every finished trial: run the same command again to "
                f"resume ({search_file})",
                file=sys.stderr,
            )
    if not worker:
        from lmscope.tune.report import export, load_study

        for line in summary_lines(export(load_study(url, search.name))):
            print(line)
    return code


def check_data(search: Search) -> None:
    """A data directory every trial shares must exist before the first trial (else every trial
    fails the same way)."""
    from lmscope.data.errors import DataError
    from lmscope.data.manifest import read_manifest

    searched = {p.name for p in search.space.params} | {
        k for p in search.space.params for keys in p.sets.values() for k in keys
    }
    if "data.dir" in searched:
        return
    try:
        read_manifest(search.base.get("data", {}).get("dir", ""))
    except DataError as err:
        raise TuneError(f"base config data.dir: {err}") from None


def run_worker_setup(search: Search, url: str) -> None:
    """Create or join the study without running a trial (the parent of `--n-jobs` workers)."""
    from lmscope.tune.samplers import make_pruner, make_sampler
    from lmscope.tune.study import open_study

    sampler, pruner = make_sampler(search, search.seed, True), make_pruner(search)
    storage = open_storage(url, search.heartbeat_s, search.grace_s, search.max_retry)
    open_study(search, storage, sampler, pruner, True)


def fail_line(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2
