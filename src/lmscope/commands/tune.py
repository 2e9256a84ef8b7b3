"""`lmscope tune SEARCH.yaml`: hyperparameter search over a training config (Optuna), and
`lmscope tune report STUDY`: what it found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from lmscope.commands.common import fail, user_errors


class _RunByDefault(TyperGroup):
    """`lmscope tune SEARCH.yaml ...` means `lmscope tune run SEARCH.yaml ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


tune_app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    help="Hyperparameter search over any training config (grid, random, TPE, GP, CMA-ES, QMC; "
    "pruning; SQLite or PostgreSQL studies shared by many workers).",
)


def _tune_errors(func: Any) -> Any:
    """TuneError is a user mistake: one line, exit code 2."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lmscope.tune.errors import TuneError

        try:
            return func(*args, **kwargs)
        except TuneError as err:
            raise fail(err) from None

    return wrapper


@tune_app.command("run")
@user_errors
@_tune_errors
def run(
    search: Path = typer.Argument(..., help="Search file (see examples/search_tiny.yaml)."),
    storage: str | None = typer.Option(
        None,
        help="Study database URL, e.g. postgresql://user:pw@host/db (default: SQLite in "
        "the study directory).",
    ),
    worker: bool = typer.Option(
        False,
        help="Join the study as one more worker (on this or another machine): run trials "
        "until the budget is spent, print no summary.",
    ),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Trials run in parallel processes here."),
    threads: int | None = typer.Option(
        None, help="Torch threads per trial process (default: the CPUs split between --n-jobs)."
    ),
    study_dir: Path | None = typer.Option(None, help="Study directory (default: study.dir)."),
) -> None:
    """Run a search file's study (the default command: `lmscope tune SEARCH.yaml`).

    Each trial is a real training run with its own output directory, seed and training record;
    the study resumes where it stopped when run again."""
    from lmscope.tune.run import run_search

    code = run_search(
        search,
        storage=storage,
        worker=worker,
        n_jobs=n_jobs,
        threads=threads,
        study_dir=study_dir,
    )
    if code:
        raise typer.Exit(code=code)


@tune_app.command("report")
@user_errors
@_tune_errors
def report(
    study: str = typer.Argument(..., help="Study directory, or a study name with --storage."),
    storage: str | None = typer.Option(None, help="Study database URL."),
    out: Path | None = typer.Option(None, help="Where to write (default: STUDY_DIR/report)."),
    table: bool = typer.Option(True, help="Print the table of every trial."),
    dashboard: bool = typer.Option(False, help="Serve optuna-dashboard on the study."),
    port: int = typer.Option(8080, help="Dashboard port."),
) -> None:
    """What a study found: best trial, every trial, parameter importances.

    Writes best.yaml (a ready `lmscope train` config), study.json and an offline report.html."""
    from lmscope.tune.report import (
        export,
        load_study,
        meta,
        resolve,
        summary_lines,
        table_lines,
        write_report,
    )

    url, name = resolve(study, storage)
    found = load_study(url, name)
    if dashboard:
        from lmscope.tune.dashboard import serve_dashboard

        serve_dashboard(url, port)
        return
    data = export(found)
    if table:
        for line in table_lines(data):
            print(line)
    for line in summary_lines(data):
        print(line)
    target = out or Path(str(meta(found).get("study_dir")) if storage else study) / "report"
    for kind, path in write_report(found, target).items():
        print(f"{kind}: {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(tune_app, name="tune")
