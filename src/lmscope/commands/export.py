"""`lmscope export`: write a model in a format other engines load (a Hugging Face directory for
transformers, vLLM, TGI or KServe)."""

from __future__ import annotations

from pathlib import Path

import typer

from lmscope.commands.common import UsageError, user_errors

FORMATS = ("hf", "gguf")


@user_errors
def export(
    model: str = typer.Argument(..., help="Model to export: a registered name or a path."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory (hf) or .gguf file to write."),
    format: str = typer.Option("hf", "--format", "-f", help="Output format: hf or gguf."),
    family: str | None = typer.Option(
        None, help="Hugging Face family to write (default: the model's own, else by shape)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing --out directory."),
) -> None:
    """Export MODEL as a Hugging Face directory (config.json, model.safetensors,
    generation_config.json, tokenizer files, the model card when the checkpoint has one), or with
    --format gguf as one float32 GGUF file (LLaMA-family models) for llama.cpp."""
    if format not in FORMATS:
        raise UsageError(f"--format {format!r} is not supported; supported: {', '.join(FORMATS)}")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    from lmscope.zoo.export_hf import describe, export_hf
    from lmscope.zoo.registry import load

    loaded = load(model)
    if format == "gguf":
        from lmscope.zoo.export_gguf import export_gguf

        written = export_gguf(
            loaded.model, loaded.tokenizer, out, overwrite=overwrite, name=loaded.name
        )
        typer.echo(f"lmscope: wrote GGUF (llama, F32) to {written}")
        return
    source = Path(model) if Path(model).is_dir() else None
    written = export_hf(
        loaded.model, loaded.tokenizer, out, overwrite=overwrite, family=family, source=source
    )
    note = "" if loaded.tokenizer is not None else " (no tokenizer: the model has none)"
    typer.echo(f"lmscope: wrote {describe(written)} to {written}{note}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
