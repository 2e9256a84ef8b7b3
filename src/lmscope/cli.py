"""The `lmscope` command. The only module that knows every package: each area's subcommands
live in `lmscope.commands.<area>` and are registered here."""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    name="lmscope",
    help="A workbench for transformer language models: build, train, explain and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def prepare_environment() -> None:
    """Settings that must be in place before torch is imported.

    OpenMP threads that finish their work spin-wait by default, which on a machine shared with
    other work (or with more threads than free cores) makes everything several times slower
    (`lmscope generate` on a busy 2-core machine: 1.7 tok/s spinning, 11-15 passive). A user's
    own OMP_WAIT_POLICY is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _register() -> None:
    from lmscope.commands import models, serve

    models.register(app)
    serve.register(app)

    from lmscope.commands import explain

    explain.register(app)

    from lmscope.commands import data, train

    data.register(app)
    train.register(app)

    from lmscope.commands import generate

    generate.register(app)

    from lmscope.commands import evaluate

    evaluate.register(app)

    from lmscope.commands import ab

    ab.register(app)

    from lmscope.commands import tune

    tune.register(app)


def main() -> None:
    prepare_environment()
    _register()
    app()
