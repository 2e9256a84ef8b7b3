"""`lmscope ab report`: the online A/B test recorded by `lmscope serve --route ...`."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import typer

from lmscope.commands.common import UsageError, user_errors

ab_app = typer.Typer(help="Online A/B tests of model versions (see `lmscope serve --route`).")


def _page(report: dict[str, Any]) -> str:
    from lmscope.evaluate.report import PAGE, bars

    satisfaction = {
        version: v["satisfaction"] for version, v in report["versions"].items() if v["satisfaction"]
    }
    rows = "".join(
        f"<tr><td>{html.escape(version)}</td><td>{v['requests']}</td><td>{v['errors']}</td>"
        f"<td>{v['feedback']}</td><td>{v['latency_p50_s']}</td><td>{v['latency_p95_s']}</td></tr>"
        for version, v in report["versions"].items()
    )
    body = [
        f"<p>Experiment <b>{html.escape(str(report['alias']))}</b>, configured split "
        f"{html.escape(json.dumps(report['weights']))}</p>",
        "<table><tr><th>version</th><th>requests</th><th>errors</th><th>ratings</th>"
        f"<th>latency p50 s</th><th>latency p95 s</th></tr>{rows}</table>",
        "<h2>Satisfaction (95% CI)</h2>" + bars(satisfaction) if satisfaction else "",
    ]
    comparison = report.get("comparison") or {}
    if comparison.get("verdict"):
        body.append(f"<p><b>{html.escape(comparison['verdict'])}</b></p>")
    srm = report.get("sample_ratio")
    if srm:
        body.append(
            f"<p>Sample ratio: chi2 = {srm['chi2']:.3g}, p = {srm['p_value']:.3g}"
            f"{' - MISMATCH: the split is broken, do not trust the comparison' if srm['mismatch'] else ''}</p>"
        )
    return PAGE.format(title="lmscope A/B test", body="".join(body))


@user_errors
def report(
    db: str | None = typer.Option(
        None,
        "--db",
        help="The store `serve` wrote: sqlite:///PATH or postgresql://... (default: serve's, "
        "experiments.sqlite3 in the lmscope cache).",
    ),
    alias: str | None = typer.Option(None, help="The experiment (route alias); default: first."),
    tau: float = typer.Option(0.1, help="Prior effect scale of the sequential test."),
    out: Path = typer.Option(Path("ab-out"), "--out", help="Directory for ab.json and ab.html."),
) -> None:
    """Per version: requests, errors, satisfaction with CIs, latency; the difference with its
    CI and an always-valid p-value; the sample-ratio-mismatch check."""
    from lmscope.evaluate.abtest import ab_report
    from lmscope.files import atomic_write_text
    from lmscope.serve.feedback import default_store_url, open_store

    db = db or default_store_url()
    store = open_store(db, must_exist=True)
    try:
        result = ab_report(
            store.rows("responses"), store.rows("feedback"), store.rows("experiments"), alias, tau
        )
    finally:
        store.close()
    if result["alias"] is None:
        raise UsageError(f"the store {db} holds no experiment; serve with --route to start one")
    for version, v in result["versions"].items():
        sat = v["satisfaction"]
        shown = "no ratings" if sat is None else (
            f"satisfaction {sat['value']:.3f} (95% CI {sat['ci95'][0]:.3f}-{sat['ci95'][1]:.3f}, "
            f"n={sat['n']})"
        )  # fmt: skip
        print(f"{version}: {v['requests']} requests, {v['errors']} errors, {shown}")
    if result.get("sample_ratio"):
        srm = result["sample_ratio"]
        print(
            f"sample ratio: chi2 {srm['chi2']:.3g}, p {srm['p_value']:.3g}, mismatch {srm['mismatch']}"
        )
    comparison = result.get("comparison") or {}
    print(comparison.get("verdict") or comparison.get("note") or "one version only")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ab.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "ab.html", _page(result))
    print(f"wrote {out / 'ab.json'} and {out / 'ab.html'}")


def register(app: typer.Typer) -> None:
    ab_app.command("report")(report)
    app.add_typer(ab_app, name="ab")
