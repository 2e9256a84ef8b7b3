"""`lmscope train CONFIG.yaml [section.key=value ...]`: train or fine-tune from a YAML config."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from lmscope.commands.common import user_errors

console = Console(stderr=True)


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

    Works under torchrun for data-parallel training:
    `torchrun --nproc-per-node 2 -m lmscope.train CONFIG.yaml`.
    """
    import yaml

    from lmscope.train.config import load_config
    from lmscope.train.trainer import Trainer

    cfg = load_config(config, list(overrides or []))
    if print_config:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    result = Trainer(cfg, resume=resume, resume_from=resume_from).run()
    if result.rank != 0:
        return
    final = result.record["final"]
    where = result.model_dir or result.adapter_dir
    val = final["val_loss"]
    console.print(
        f"trained to step {final['step']} ({final['stopped']}); "
        + (f"val loss {val:.4f}; " if val is not None else "")
        + f"model: {where}"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
