"""`lmscope models` and `lmscope info`: what is available and what a model is made of."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from lmscope.commands.common import user_errors

console = Console()


def models() -> None:
    """List the embedded models, where their converted cache lives, and whether it is built."""
    from lmscope.zoo.default import cache_root
    from lmscope.zoo.registry import available_models

    table = Table(title="lmscope models")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("cache")
    table.add_column("cached")
    for entry in available_models():
        table.add_row(
            entry.name, entry.description, entry.location, "yes" if entry.cached else "no"
        )
    console.print(table)
    console.print(
        f"Cache root: {cache_root()} (set LMSCOPE_CACHE to move it). Any path also works as "
        "MODEL: an lmscope checkpoint directory, a Hugging Face checkpoint directory or a .gguf file."
    )
    console.print(preset_table())


def preset_table() -> Table:
    """The named architectures (`ModelConfig.from_name`): shapes only, no weights."""
    from lmscope.model.config import ModelConfig
    from lmscope.model.presets import PRESETS

    table = Table(title="architecture presets (ModelConfig.from_name; shapes, no weights)")
    for column in ("name", "family", "layers", "d_model", "heads (kv)", "context"):
        table.add_column(column, style="bold" if column == "name" else None)
    for name in PRESETS:
        cfg = ModelConfig.from_name(name)
        table.add_row(
            name,
            cfg.architecture,
            str(cfg.n_layers),
            str(cfg.d_model),
            f"{cfg.n_heads} ({cfg.kv_heads})",
            str(cfg.n_ctx),
        )
    return table


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


@user_errors
def info(model: str = typer.Argument("smollm2-135m", help="Model name or path.")) -> None:
    """Architecture summary: layers, heads, dimensions, parameter counts per component."""
    from lmscope.zoo.registry import load

    loaded = load(model)
    cfg = loaded.model.cfg
    table = Table(title=f"{loaded.name} ({cfg.architecture})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    attention = "MHA" if cfg.kv_heads == cfg.n_heads else "MQA" if cfg.kv_heads == 1 else "GQA"
    mlp = f"gated {cfg.activation} (SwiGLU-style)" if cfg.gated_mlp else cfg.activation
    rows = [
        ("source", loaded.source),
        ("layers", str(cfg.n_layers)),
        ("d_model", str(cfg.d_model)),
        (
            "heads",
            f"{cfg.n_heads} query, {cfg.kv_heads} key/value ({attention}), d_head {cfg.head_dim}",
        ),
        ("d_mlp", f"{cfg.mlp_dim}, {mlp}"),
        ("vocabulary", str(cfg.vocab_size)),
        ("context", str(cfg.n_ctx)),
        (
            "positions",
            cfg.positional + (f", theta {cfg.rope_theta:g}" if cfg.positional == "rope" else ""),
        ),
        ("norm", f"{cfg.norm}, eps {cfg.norm_eps:g}"),
        ("block", "parallel attention + MLP" if cfg.parallel_attn_mlp else "sequential"),
        ("embeddings", "tied" if cfg.tie_embeddings else "untied"),
        ("dtype", str(loaded.model.dtype).replace("torch.", "")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    for component, count in loaded.model.parameter_counts().items():
        table.add_row(f"params: {component}", f"{count:,} ({_human(count)})")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("info")(info)
