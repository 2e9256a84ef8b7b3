"""`lmscope explain MODEL "prompt"`: the information-flow routes of a prediction, and more."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lmscope.commands.common import user_errors

console = Console()
err_console = Console(stderr=True)


@user_errors
def explain(
    model: str = typer.Argument(..., help="Model name (e.g. smollm2-135m) or path."),
    prompt: str = typer.Argument(..., help="The text to explain."),
    target: int = typer.Option(
        -1,
        "--target",
        "-t",
        help="Token position to explain (its next-token prediction); -1 = last.",
    ),
    tau: float = typer.Option(
        0.04, "--tau", help="Route threshold in [0, 1]: keep edges whose importance exceeds it."
    ),
    renormalise: bool = typer.Option(
        False, "--renormalise", help="Report edge weights renormalised over the kept parts."
    ),
    norm: str = typer.Option("l1", "--norm", help="Proximity norm: l1 | l2."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write graph.json (node-link), graph.graphml or report.html."
    ),
    top: int = typer.Option(10, "--top", help="How many tokens, heads and lens rows to show."),
    saliency: bool = typer.Option(True, help="Also compute gradient x input attribution."),
) -> None:
    """Explain a prediction: information-flow routes, heads, neurons, logit lens, saliency."""
    from lmscope.explain import explain as run_explain
    from lmscope.explain.errors import ExplainInputError
    from lmscope.explain.export import FORMATS
    from lmscope.explain.proximity import norm_order

    # Check cheap options before loading the model.
    if out is not None and out.suffix.lower() not in FORMATS:
        raise ExplainInputError(
            f"cannot write {out.name!r}: use a .json, .graphml or .html file name for --out"
        )
    norm_order(norm)
    from lmscope.explain.errors import check_tau

    check_tau(tau)
    from lmscope.zoo.registry import load

    with err_console.status(f"loading {model}"):
        loaded = load(model)
    with err_console.status("tracing and computing the routes"):
        ex = run_explain(
            loaded,
            prompt,
            target=target,
            tau=tau,
            renormalise=renormalise,
            norm=norm,
            k=top,
            saliency=saliency,
        )
    if out is not None:
        with err_console.status(f"writing {out}"):
            ex.save(out)
        console.print(
            f"wrote {out} ({len(ex.routes.nodes)} nodes, {len(ex.routes.edges)} edges at tau={tau})"
        )
        return
    _print_summary(ex, top)


def _print_summary(ex: object, top: int) -> None:
    from lmscope.explain.api import Explanation

    assert isinstance(ex, Explanation)
    target_text = ex.token_strs[ex.target]
    console.print(
        f"[bold]{ex.model}[/bold]: {len(ex.tokens)} tokens; explaining position {ex.target} "
        f"({target_text!r}); tau={ex.tau}{' renormalised' if ex.renormalise else ''}"
    )
    pred = Table(title="next-token prediction")
    pred.add_column("token")
    pred.add_column("prob", justify="right")
    for t in ex.prediction[:top]:
        pred.add_row(repr(t.text), f"{t.prob:.4f}")
    console.print(pred)

    edges = sorted((e for e in ex.routes.edges if e.kind == "attention"), key=lambda e: -e.weight)[
        :top
    ]
    table = Table(title=f"strongest attention edges on the route ({len(ex.routes.edges)} edges)")
    for col in ("layer", "from", "to", "weight", "top heads"):
        table.add_column(col)
    for e in edges:
        src = int(e.source.rsplit("/", 1)[1])
        dst = int(e.target.rsplit("/", 1)[1])
        heads = sorted(enumerate(e.heads or []), key=lambda x: -x[1])[:3]
        table.add_row(
            str(e.layer),
            f"{src} {ex.token_strs[src]!r}",
            f"{dst} {ex.token_strs[dst]!r}",
            f"{e.weight:.3f}",
            ", ".join(f"L{e.layer}H{h}={w:.3f}" for h, w in heads),
        )
    console.print(table)

    heads_table = Table(title="top heads at the target")
    heads_table.add_column("head")
    heads_table.add_column("share", justify="right")
    for label, w in ex.top_heads[:top]:
        heads_table.add_row(label, f"{w:.4f}")
    console.print(heads_table)

    traj = ex.trajectory
    lens = Table(title=f"logit lens: rank and probability of {traj.text!r} after each layer")
    lens.add_column("node")
    lens.add_column("rank", justify="right")
    lens.add_column("prob", justify="right")
    lens.add_column("top token")
    tops = {r.node: r.top[0].text for r in ex.lens if r.top}
    for node, rank, prob in zip(traj.nodes, traj.ranks, traj.probs, strict=True):
        if node == "embed" or node.endswith("resid_post"):
            lens.add_row(node, str(rank), f"{prob:.4f}", repr(tops.get(node, "")))
    console.print(lens)
    console.print("Write --out report.html for the interactive graph, maps and tables.")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
