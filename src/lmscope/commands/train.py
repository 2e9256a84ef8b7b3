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
    card: bool = typer.Option(
        True, help="Write a model card (template sentences, every number a fact) beside the model."
    ),
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
        after_training=write_model_card if card else None,
    )
    if code:
        raise typer.Exit(code=code)


def write_model_card(result: object) -> None:
    """The final model's card in MODEL_DIR/card (see `lmscope doc`); a failure is a warning,
    never a lost training run."""
    import sys

    model_dir = getattr(result, "model_dir", None)
    if model_dir is None:  # a LoRA adapter without a merged model: `lmscope doc` documents it
        return
    from lmscope.document.output import write_card

    try:
        out = write_card(model_dir)
    except Exception as err:  # the model is saved; the card is a convenience
        print(
            f"warning: no model card written ({type(err).__name__}: {err}); "
            f"run `lmscope doc {model_dir}`",
            file=sys.stderr,
        )
        return
    print(f"model card: {out}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
