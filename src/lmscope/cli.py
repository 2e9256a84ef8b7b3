"""The `lmscope` command. The only module that knows every package: each area's subcommands
live in `lmscope.commands.<area>` and are registered here."""

from __future__ import annotations

import os
import sys
from typing import Any

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

    from lmscope.commands import doc

    doc.register(app)

    from lmscope.commands import drift, export

    drift.register(app)
    export.register(app)


def _parser_exceptions() -> Any:
    """The exception classes of the click that typer runs on (recent typer vendors its own)."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # typer on the plain click package
        return importlib.import_module("click.exceptions")


def main() -> None:
    prepare_environment()
    _register()
    errors = _parser_exceptions()
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        raise SystemExit(130) from None
    except typer.Exit as err:
        raise SystemExit(err.exit_code) from None
    except errors.NoArgsIsHelpError as err:  # `lmscope` alone: the help
        err.show()
        raise SystemExit(2) from None
    except errors.ClickException as err:  # a mistake the argument parser caught: one line
        hint = ""
        ctx = getattr(err, "ctx", None)
        if isinstance(err, errors.UsageError) and ctx is not None:
            hint = f" (see `{ctx.command_path} --help`)"
        print(f"error: {err.format_message()}{hint}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code if isinstance(code, int) else 0)
