"""`lmscope explain MODEL "prompt"`: the information-flow routes of a prediction, and more.

`explain` is a group whose default command is `run`, so `lmscope explain MODEL PROMPT` keeps
working next to the subcommands (`bias`, `attribute`, `aggregate`, `rules`): an
argument that is not a subcommand's name starts `run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from lmscope.commands.common import DEVICE_OPTION, user_errors

console = Console()
err_console = Console(stderr=True)


class DefaultRunGroup(TyperGroup):
    """A group that runs `run` when the first argument names no subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


explain_app = typer.Typer(
    cls=DefaultRunGroup,
    no_args_is_help=True,
    help="Explain predictions: routes (default: explain MODEL PROMPT), bias probes, "
    "perturbation attributions, data-set importances, rules.",
)


@explain_app.command("run")
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
    route_check: bool = typer.Option(
        False,
        "--route-check",
        help="Ablate the route's heads/MLPs vs as many random ones (the target's log-prob drop).",
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8: explain the weights `serve --quantize int8` serves (dequantised int8).",
    ),
    device: str = DEVICE_OPTION,
) -> None:
    """Explain a prediction: routes, heads, neurons, lens, saliency (the default command).

    `lmscope explain MODEL PROMPT` runs this.
    """
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

    if quantize is not None:
        from lmscope.model.quantized import check_quantize_mode

        check_quantize_mode(quantize)
    with err_console.status(f"loading {model}"):
        loaded = load(model, device=device)
    if quantize is not None:  # the served weights, named so in the result's "model" field
        from lmscope.model.quantized import served_for_explaining

        loaded = served_for_explaining(loaded, quantize)
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
            route_check=route_check,
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
    if ex.route_check is not None:
        rc = ex.route_check
        console.print(
            f"route check: ablating the {len(rc.components)} route components drops the "
            f"log-prob of {ex.decode(rc.target)!r} by {rc.route_drop:.3f}; as many random "
            f"components: {rc.random_drop:.3f} on average (score {rc.score:+.3f})"
        )
    console.print("Write --out report.html for the interactive graph, maps and tables.")


def register(app: typer.Typer) -> None:
    app.add_typer(explain_app, name="explain")


# ---- subcommands ------------------------------------------------------------------------------
def _load(model: str, device: str = "cpu") -> Any:
    from lmscope.zoo.registry import load

    with err_console.status(f"loading {model}"):
        return load(model, device=device)


def _encoder(loaded: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a loaded model."""
    return loaded.model, loaded.tokenizer


@explain_app.command("bias")
@user_errors
def bias(
    probes: str = typer.Argument(..., help="Probe YAML file, or 'builtin' for the built-in set."),
    model: str = typer.Argument(..., help="Model name (e.g. smollm2-135m) or path."),
    out: Path = typer.Option(
        Path("bias"), "--out", "-o", help="Report stem: writes STEM.json and STEM.html."
    ),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the CI."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    components: bool = typer.Option(
        True, help="Rank the heads and neurons that carry each difference (slower)."
    ),
    device: str = DEVICE_OPTION,
) -> None:
    """Bias probes: probability gaps of target continuations between groups, with a CI."""
    from lmscope.explain.bias import run_probes
    from lmscope.explain.bias_probes import load_probes
    from lmscope.explain.perturb import check_count

    parsed = load_probes(probes)  # bad probe files fail before the model loads
    check_count(n_boot, "--n-boot")
    m, tok = _encoder(_load(model, device))
    with err_console.status("running the probes"):
        report = run_probes(
            m, tok.encode, parsed, name=model, n_boot=n_boot, seed=seed, components=components
        )
    json_path, html_path = report.save(out)
    for p in report.probes:
        for t in p.targets:
            gaps = ", ".join(
                f"{g} {v['gap']:+.4f} [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}]"
                for g, v in t["gaps"].items()
            )
            console.print(f"{p.name}: {t['target']!r} vs {p.reference}: {gaps}")
    console.print(f"wrote {json_path} and {html_path}")


ATTRIBUTE_METHODS = ("occlusion", "feature_ablation", "shapley", "lime", "kernel_shap")


@explain_app.command("attribute")
@user_errors
def attribute(
    model: str = typer.Argument(..., help="Model name or path."),
    prompt: str = typer.Argument(..., help="The text whose next-token prediction to explain."),
    methods: str = typer.Option(
        "occlusion,kernel_shap",
        "--methods",
        help=f"Comma-separated: {', '.join(ATTRIBUTE_METHODS)}.",
    ),
    n_samples: int = typer.Option(200, "--n-samples", help="Samples (LIME, KernelSHAP, Shapley)."),
    seed: int = typer.Option(0, "--seed"),
    window: int = typer.Option(1, "--window", help="Occlusion window in tokens."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the results as JSON."),
    device: str = DEVICE_OPTION,
) -> None:
    """Perturbation attributions over input tokens, with agreement and deletion/insertion AUC.

    Methods: occlusion, feature ablation, Shapley value sampling, LIME, KernelSHAP.
    """
    import json

    from lmscope.explain.faithfulness import agreement, deletion_insertion
    from lmscope.explain.perturb import (
        check_count,
        feature_ablation,
        occlusion,
        shapley_value_sampling,
    )
    from lmscope.explain.perturb_sampling import kernel_shap, lime

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in ATTRIBUTE_METHODS]
    if unknown or not chosen:
        from lmscope.explain.errors import ExplainInputError

        raise ExplainInputError(
            f"unknown method(s) {unknown or methods!r}; use {', '.join(ATTRIBUTE_METHODS)}"
        )
    check_count(n_samples, "--n-samples")
    check_count(window, "--window")
    m, tok = _encoder(_load(model, device))
    ids = list(tok.encode(prompt))
    runs = {
        "occlusion": lambda: occlusion(m, ids, window=window),
        "feature_ablation": lambda: feature_ablation(m, ids),
        "shapley": lambda: shapley_value_sampling(m, ids, n_samples=n_samples, seed=seed),
        "lime": lambda: lime(m, ids, n_samples=n_samples, seed=seed),
        "kernel_shap": lambda: kernel_shap(m, ids, n_samples=n_samples, seed=seed),
    }
    results, faith = [], []
    for name in chosen:
        with err_console.status(f"{name}"):
            attr = runs[name]()
            results.append(attr)
            faith.append(deletion_insertion(m, attr))
    table = Table(title=f"attributions for {tok.decode([results[0].target])!r}")
    table.add_column("token")
    for a, f in zip(results, faith, strict=True):
        table.add_column(f"{a.method}\nAUC del {f.deletion_auc:.2f} ins {f.insertion_auc:.2f}")
    for i, t in enumerate(results[0].tokens):
        table.add_row(repr(tok.decode([t])), *(f"{a.scores[i]:+.3f}" for a in results))
    console.print(table)
    agree = agreement(results) if len(results) > 1 else {}
    for method, row in agree.items():
        console.print(
            f"rank correlation {method}: "
            + ", ".join(f"{b} {r:.2f}" for b, r in row.items() if b != method)
        )
    if out is not None:
        from lmscope.files import atomic_write_text

        payload = {
            "attributions": [a.to_dict() for a in results],
            "faithfulness": [f.to_dict() for f in faith],
            "agreement": agree,
        }
        atomic_write_text(out, json.dumps(payload, indent=1))
        console.print(f"wrote {out}")


def _read_prompts(path: Path) -> list[str]:
    from lmscope.explain.errors import ExplainInputError

    if not path.is_file():
        raise ExplainInputError(f"prompt file {str(path)!r} does not exist; give one prompt a line")
    prompts = [line for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ExplainInputError(f"{path.name} holds no prompts; give one prompt a line")
    return prompts


@explain_app.command("aggregate")
@user_errors
def aggregate_cmd(
    prompts: Path = typer.Argument(..., help="Text file, one prompt a line."),
    model: str = typer.Argument(..., help="Model name or path."),
    other: str | None = typer.Option(
        None, "--diff", help="A second model (e.g. a fine-tune): report the circuit diff."
    ),
    tau: float = typer.Option(0.04, "--tau"),
    out: Path | None = typer.Option(None, "--out", "-o", help="JSON, or .html for a diff."),
    top: int = typer.Option(10, "--top"),
    device: str = DEVICE_OPTION,
) -> None:
    """Which heads and neurons matter over a prompt set; --diff compares a second model.

    Mean, spread and on-route frequency per head and neuron; with --diff, which gained or lost
    importance (circuit diff).
    """
    from lmscope import __version__
    from lmscope.explain.aggregate import aggregate, prompts_digest
    from lmscope.explain.circuit_diff import circuit_diff
    from lmscope.explain.errors import check_tau

    check_tau(tau)
    texts = _read_prompts(prompts)
    m, tok = _encoder(_load(model, device))
    ids = [list(tok.encode(t)) for t in texts]
    with err_console.status(f"aggregating {len(ids)} prompts"):
        stats = aggregate(m, ids, tau=tau, name=model)
    # named by its prompt set and version, so `doc --circuits` can reuse it exactly
    stats.meta.update({"prompts_sha256": prompts_digest(texts), "lmscope_version": __version__})
    table = Table(title=f"{model}: top heads over {stats.n_prompts} prompts")
    for col in ("head", "mean", "sd", "on route"):
        table.add_column(col)
    for row in stats.top_heads(top):
        table.add_row(
            row["head"], f"{row['mean']:.4f}", f"{row['std']:.4f}", f"{row['on_route']:.0%}"
        )
    console.print(table)
    result: object = stats
    if other is not None:
        m2, tok2 = _encoder(_load(other, device))
        with err_console.status(f"aggregating {other}"):
            stats2 = aggregate(m2, [list(tok2.encode(t)) for t in texts], tau=tau, name=other)
        diff = circuit_diff(stats, stats2, k=top)
        for kind, rows in (("gained", diff.gained), ("lost", diff.lost)):
            console.print(
                f"{kind}: " + ", ".join(f"{r['component']} {r['delta']:+.4f}" for r in rows)
            )
        result = diff
    if out is not None:
        from lmscope.files import atomic_write_text

        if hasattr(result, "save"):
            result.save(out)
        else:
            atomic_write_text(out, stats.to_json(indent=1))
        console.print(f"wrote {out}")


@explain_app.command("rules")
@user_errors
def rules_cmd(
    prompts: Path = typer.Argument(..., help="Text file, one prompt a line."),
    model: str = typer.Argument(..., help="Model name or path."),
    labels: str | None = typer.Option(
        None, "--labels", help="Comma-separated continuations to choose from (default: top token)."
    ),
    max_depth: int = typer.Option(3, "--max-depth"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the rules as JSON."),
    device: str = DEVICE_OPTION,
) -> None:
    """Plain-text rules that mimic the model's decisions, with held-out fidelity.

    A shallow decision tree on word features; needs scikit-learn.
    """
    from lmscope.explain.rules import fit_rules, model_decisions

    texts = _read_prompts(prompts)
    m, tok = _encoder(_load(model, device))
    choices = [c for c in labels.split(",")] if labels else None
    with err_console.status(f"deciding {len(texts)} prompts"):
        decisions = model_decisions(m, tok.encode, lambda t: tok.decode([t]), texts, choices)
    result = fit_rules(texts, decisions, max_depth=max_depth)
    console.print(result.text())
    if out is not None:
        from lmscope.files import atomic_write_text

        atomic_write_text(out, result.to_json(indent=1))
        console.print(f"wrote {out}")
