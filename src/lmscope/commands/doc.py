"""`lmscope doc`: model documentation from the model itself.

lmscope doc MODEL --out DIR           README.md, card.html, facts.json, card.jsonld
lmscope doc facts MODEL --out F.json  the facts alone
lmscope doc diff OLD NEW              what changed between two models
lmscope doc history DIR               the checkpoints of a directory, in order
  (both: --circuits PROMPTS.txt adds which heads and neurons gained or lost importance)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from typer.core import TyperGroup

from lmscope.commands.common import fail, user_errors
from lmscope.document.circuits import DEFAULT_TOP

P = ParamSpec("P")
R = TypeVar("R")


class _CardByDefault(TyperGroup):
    """`lmscope doc MODEL ...` means `lmscope doc card MODEL ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["card", *args]
        return super().parse_args(ctx, args)


doc_app = typer.Typer(
    cls=_CardByDefault,
    help="Model documentation: a model card, facts, diffs and histories, checked against the model.",
    no_args_is_help=True,
)


def doc_errors(func: Callable[P, R]) -> Callable[P, R]:
    """lmscope's user errors and the document package's own as `error: ...` (exit 2)."""
    inner = user_errors(func)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from lmscope.document.errors import DocError

        try:
            return inner(*args, **kwargs)
        except DocError as err:
            raise fail(err) from None

    return wrapper


def _shape(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.replace("x", ",").split(",") if x.strip()]
    except ValueError:
        from lmscope.document.errors import DocError

        raise DocError(f"--input-shape must be integers like 1,3,224,224, got {text!r}") from None


def _facts(model: str, eval_path: Path | None, positions: int | None, probe: bool,
           allow_code: bool, input_shape: str | None) -> dict[str, Any]:  # fmt: skip
    from lmscope.document.sources import collect_facts

    return collect_facts(model, eval_path=eval_path, positions=positions, probe=probe,
                         allow_code=allow_code, input_shape=_shape(input_shape))  # fmt: skip


_EVAL = typer.Option(None, "--eval", help="An eval report.json, or a directory holding one.")
_POSITIONS = typer.Option(None, help="Sequence length the layer table is measured at (128).")
_PROBE = typer.Option(True, "--probe/--no-probe", help="Compute interpretability highlights.")
_CODE = typer.Option(
    False, "--allow-code", help="Allow MODEL to be `package.module:factory` (imports that code)."
)
_INPUT = typer.Option(None, help="Input shape for a PyTorch module's forward, e.g. 1,3,224,224.")
_CIRCUITS = typer.Option(
    None,
    "--circuits",
    help="Prompt file (one a line): also list the heads and neurons that gained or lost "
    "importance on it (aggregate results stored in a checkpoint are reused).",
)
_TOP = typer.Option(
    DEFAULT_TOP, "--circuit-top", help="Components listed per direction with --circuits."
)


@doc_app.command("card")
@doc_errors
def card(
    model: str = typer.Argument("smollm2-135m", help="Model name, directory or file."),
    out: Path = typer.Option(Path("card"), "--out", "-o", help="Directory to write."),
    no_llm: bool = typer.Option(False, "--no-llm", help="Template sentences only (fast)."),
    writer: str | None = typer.Option(None, help="OpenAI-compatible base URL of the writer."),
    writer_model: str | None = typer.Option(None, help="Model name to ask at --writer."),
    eval_path: Path | None = _EVAL,
    positions: int | None = _POSITIONS,
    probe: bool = _PROBE,
    allow_code: bool = _CODE,
    input_shape: str | None = _INPUT,
) -> None:
    """Write the model card (README.md, card.html, facts.json, card.jsonld) into --out."""
    from lmscope.document.card import build_card
    from lmscope.document.output import write_card_dir
    from lmscope.document.writer import make_writer

    facts = _facts(model, eval_path, positions, probe, allow_code, input_shape)
    chosen = None if no_llm else make_writer(writer, writer_model)
    built = build_card(facts, chosen)
    write_card_dir(built, out)
    if built.prose:
        kept = sum(s["kept"] for s in built.prose["sections"].values())
        total = sum(s["generated"] for s in built.prose["sections"].values())
        print(
            f"{kept} of {total} generated sentences passed the verifier ({built.prose['writer']})"
        )
    print(f"card written to {out}/ (README.md, card.html, facts.json, card.jsonld)")


@doc_app.command("facts")
@doc_errors
def facts(
    model: str = typer.Argument("smollm2-135m", help="Model name, directory or file."),
    out: Path = typer.Option(Path("facts.json"), "--out", "-o", help="File to write."),
    eval_path: Path | None = _EVAL,
    positions: int | None = _POSITIONS,
    probe: bool = _PROBE,
    allow_code: bool = _CODE,
    input_shape: str | None = _INPUT,
) -> None:
    """Write the facts document (JSON, schema lmscope.facts v1)."""
    from lmscope.document.output import write_facts

    write_facts(_facts(model, eval_path, positions, probe, allow_code, input_shape), out)
    print(f"facts written to {out}")


@doc_app.command("diff")
@doc_errors
def diff(
    old: str = typer.Argument(..., help="The earlier model (name, directory, file or facts.json)."),
    new: str = typer.Argument(..., help="The later model."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also write the diff: JSON, or .html with circuit heatmaps."
    ),
    probe: bool = _PROBE,
    circuits: Path | None = _CIRCUITS,
    top: int = _TOP,
) -> None:
    """What changed between two models: architecture, data, hyperparameters, metrics, heads."""
    from lmscope.document.diff import diff_models

    with _progress() as progress:
        result = diff_models(old, new, probe=probe, circuits=circuits, top=top, progress=progress)
    print(result["text"])
    _write(result, out)


@doc_app.command("history")
@doc_errors
def history(
    directory: Path = typer.Argument(..., help="A directory of checkpoints (or training run)."),
    probe: bool = typer.Option(False, "--probe/--no-probe", help="Compare heads too (slower)."),
    circuits: Path | None = _CIRCUITS,
    top: int = _TOP,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also write the history: JSON, or .html with circuit heatmaps."
    ),
) -> None:
    """Walk the checkpoints of a directory in step order and narrate each change."""
    from lmscope.document.diff import history as build_history

    with _progress() as progress:
        result = build_history(directory, probe, circuits, top, progress)
    print(result["text"])
    _write(result, out)


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str], None]]:
    """A status line on a terminal's stderr while versions are aggregated (silent otherwise)."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda message: None
        return
    with console.status("") as status:
        yield status.update


def _write(result: dict[str, Any], out: Path | None) -> None:
    """--out: JSON (the facts and the text), or for .html a page with the circuit heatmaps."""
    if out is None:
        return
    if out.suffix.lower() in (".html", ".htm"):
        from lmscope.document.circuits import history_html
        from lmscope.files import atomic_write_text

        atomic_write_text(out, history_html(result))
    else:
        from lmscope.document.output import write_facts

        write_facts(result, out)


def register(app: typer.Typer) -> None:
    app.add_typer(doc_app, name="doc")
