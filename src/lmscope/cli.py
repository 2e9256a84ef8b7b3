"""The `lmscope` command. The only module that knows every package: each area's subcommands
live in `lmscope.commands.<area>` and are registered here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lmscope",
    help="A workbench for transformer language models: build, train, explain and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


def main() -> None:
    _register()
    app()
