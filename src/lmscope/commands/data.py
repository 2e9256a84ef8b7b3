"""`lmscope data prepare` and `lmscope data info`: corpora into token files, and what is in them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lmscope.commands.common import UsageError, user_errors

console = Console()
data_app = typer.Typer(
    help="Prepare corpora for training: clean, split, tokenize, pack.", no_args_is_help=True
)


@data_app.command("prepare")
@user_errors
def prepare(
    inputs: list[Path] = typer.Argument(..., help="Text or JSONL files."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the prepared data."),
    file_format: str = typer.Option("auto", "--format", help="auto | text | jsonl."),
    text_key: str = typer.Option("text", help="JSONL field that holds plain text."),
    doc_split: str = typer.Option(
        "paragraph", help="Text files: one document per file | paragraph | line."
    ),
    normalize: str = typer.Option(
        "NFC", help="Unicode normal form: NFC | NFKC | NFD | NFKD | none."
    ),
    strip_control: bool = typer.Option(True, help="Drop control characters (keeps \\n and \\t)."),
    dedup: str = typer.Option("none", help="Remove repeats: none | lines | documents | both."),
    dedup_line_min_chars: int = typer.Option(1, help="Line dedup ignores shorter lines."),
    min_chars: int = typer.Option(1, help="Drop documents shorter than this."),
    max_chars: int | None = typer.Option(None, help="Drop documents longer than this."),
    tokenizer: str | None = typer.Option(
        None,
        help="'char' for one token per character; or reuse a tokenizer: tokenizer.json, a "
        "directory, a .gguf file or a model name (e.g. smollm2-135m). Default: train a BPE.",
    ),
    vocab_size: int | None = typer.Option(
        None,
        help="Vocabulary size of a newly trained BPE (default 8192; a 'char' vocabulary has as "
        "many tokens as the corpus has distinct characters).",
    ),
    min_frequency: int | None = typer.Option(
        None, help="BPE: minimum pair frequency for a merge (default 2)."
    ),
    bos: str = typer.Option("<|bos|>", help="Start token of a new vocabulary."),
    eos: str = typer.Option("<|eos|>", help="End token of a new vocabulary (ends each document)."),
    pad: str = typer.Option("<|pad|>", help="Padding token of a new vocabulary."),
    extra_special_tokens: list[str] = typer.Option(
        [], help="More special tokens for a new vocabulary."
    ),
    template: str = typer.Option("auto", help="Instruction data: auto | chatml | plain."),
    score_key: str | None = typer.Option(None, help="JSONL field with a curriculum score."),
    val: float = typer.Option(0.05, help="Fraction of documents for validation."),
    test: float = typer.Option(0.05, help="Fraction of documents for test."),
    seed: int = typer.Option(0, help="Seed of the document split."),
    overwrite: bool = typer.Option(False, help="Replace prepared data already in --out."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Clean, split (by document, seeded), tokenize and pack corpora into memory-mapped files."""
    from lmscope.data.clean import CleanSettings
    from lmscope.data.prepare import PrepareConfig
    from lmscope.data.prepare import prepare as run_prepare
    from lmscope.data.tokenizer import SpecialTokens

    bpe_options = {"vocab_size": vocab_size, "min_frequency": min_frequency}
    given = {key: value for key, value in bpe_options.items() if value is not None}
    if tokenizer is not None and given:
        flag = "--" + next(iter(given)).replace("_", "-")
        raise UsageError(
            f"{flag} applies only to a newly trained BPE, and --tokenizer {tokenizer} brings its "
            f"own vocabulary; leave {flag} out"
        )
    config = PrepareConfig(
        inputs=[str(p) for p in inputs],
        out=str(out),
        format=file_format,
        text_key=text_key,
        doc_split=doc_split,
        clean=CleanSettings(
            normalize=normalize,
            strip_control=strip_control,
            dedup=dedup,
            dedup_line_min_chars=dedup_line_min_chars,
            min_chars=min_chars,
            max_chars=max_chars,
        ),
        tokenizer=tokenizer,
        **given,  # type: ignore[arg-type]
        special_tokens=SpecialTokens(bos=bos, eos=eos, pad=pad, extra=list(extra_special_tokens)),
        template=template,
        score_key=score_key,
        val_fraction=val,
        test_fraction=test,
        seed=seed,
        overwrite=overwrite,
        progress=not quiet,
    )
    manifest = run_prepare(config)
    _print_summary(out, manifest)


@data_app.command("info")
@user_errors
def info(directory: Path = typer.Argument(..., help="A prepared data directory.")) -> None:
    """Summarise a prepared data directory from its manifest."""
    from lmscope.data.manifest import read_manifest

    _print_summary(directory, read_manifest(directory))


def _print_summary(directory: Path, manifest: dict) -> None:  # type: ignore[type-arg]
    tok = manifest["tokenizer"]
    table = Table(title=f"{directory} ({manifest['kind']} data)")
    for column in ("split", "documents", "tokens", "loss tokens"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for name, split in manifest["splits"].items():
        table.add_row(
            name, f"{split['documents']:,}", f"{split['tokens']:,}", f"{split['loss_tokens']:,}"
        )
    console.print(table)
    cleaning = manifest["cleaning"]
    console.print(
        f"tokenizer: {tok['source']}, {tok['vocab_size']:,} tokens "
        f"(template {tok['template']}); records {cleaning['records_in']:,} read, "
        f"{cleaning['records_out']:,} kept"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
