"""`lmscope train CONFIG.yaml [section.key=value ...]`: train or fine-tune from a YAML config."""

from __future__ import annotations

from pathlib import Path

import typer

from lmscope.commands.common import user_errors


@user_errors
def train(
    config: Path = typer.Argument(..., help="YAML training config (see examples/)."),
    overrides: list[str] | None = typer.Argument(
        None, help="Dotted overrides, e.g. optim.lr=1e-3 train.max_steps=500."
    ),
    resume: bool | None = typer.Option(
        None,
        "--resume/--no-resume",
        help="Continue from the newest checkpoint in out_dir (default: if there is one).",
    ),
    resume_from: Path | None = typer.Option(None, help="Continue from this step checkpoint."),
    print_config: bool = typer.Option(False, help="Print the resolved config and exit."),
) -> None:
    """Train a model from scratch, or fine-tune a pretrained one (init_from), from a config.

    Ctrl-C finishes the current step, saves a checkpoint and stops; the same command resumes.
    Works under torchrun for data-parallel training:
    `torchrun --nproc-per-node 2 -m lmscope.train CONFIG.yaml`.
    """
    from lmscope.train.launch import run_config

    code = run_config(
        config,
        list(overrides or []),
        resume=resume,
        resume_from=resume_from,
        print_config=print_config,
    )
    if code:
        raise typer.Exit(code=code)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
