"""Evaluation and comparison reports: JSON (the stable schema other tools read) and one
self-contained HTML page with inline SVG plots (no scripts, no network)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lmscope.files import atomic_write_text

SVG_WIDTH = 520


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Write `<stem>.json` and `<stem>.html` into out_dir, each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / f"{stem}.json", out_dir / f"{stem}.html"
    atomic_write_text(json_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    page = compare_page(report) if "a" in report else eval_page(report)
    atomic_write_text(html_path, page)
    return [json_path, html_path]


def fmt(value: float) -> str:
    return f"{value:.4g}"


def metric_line(name: str, m: dict[str, Any]) -> str:
    """`name = value (95% CI low to high, n items)`: never a number without its denominator
    ("to", not a dash: sacrebleu's normal-approximation BLEU interval can start below zero)."""
    low, high = m["ci95"]
    return f"{name} = {fmt(m['value'])} (95% CI {fmt(low)} to {fmt(high)}, n={m['n']})"


def bars(metrics: dict[str, dict[str, Any]]) -> str:
    """Horizontal bars with CI whiskers, one per metric, each scaled to its own upper bound."""
    rows = []
    for i, (name, m) in enumerate(metrics.items()):
        top = max(abs(m["ci95"][1]), abs(m["value"]), 1e-12)
        y = 8 + 22 * i
        width = 300 * m["value"] / top
        lo, hi = (200 + 300 * v / top for v in m["ci95"])
        rows.append(
            f'<text x="0" y="{y + 12}">{html.escape(name)}</text>'
            f'<rect x="200" y="{y}" width="{max(width, 0):.1f}" height="14" fill="#6b8fd6"/>'
            f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{y + 7}" y2="{y + 7}" '
            'stroke="#222" stroke-width="2"/>'
            f'<text x="{min(hi, 430) + 6:.1f}" y="{y + 12}">{fmt(m["value"])}</text>'
        )
    height = 16 + 22 * len(metrics)
    return f'<svg width="{SVG_WIDTH}" height="{height}" font-size="12">{"".join(rows)}</svg>'


def _heatmap(confusion: dict[str, Any]) -> str:
    counts = confusion["counts"]
    peak = max((max(r) for r in counts), default=1) or 1
    cell = 34
    cols, rows = confusion["columns"], confusion["rows"]
    parts = [
        f'<text x="{130 + cell * j + 4}" y="12" font-size="10">{html.escape(c[:6])}</text>'
        for j, c in enumerate(cols)
    ]
    for i, row in enumerate(counts):
        y = 18 + cell * i
        parts.append(f'<text x="0" y="{y + 20}">{html.escape(rows[i][:18])}</text>')
        for j, value in enumerate(row):
            shade = int(255 - 200 * value / peak)
            parts.append(
                f'<rect x="{130 + cell * j}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="rgb({shade},{shade},255)"/><text x="{134 + cell * j}" y="{y + 20}" '
                f'font-size="11">{value}</text>'
            )
    width, height = 140 + cell * len(cols), 24 + cell * len(rows)
    return f'<svg width="{width}" height="{height}" font-size="12">{"".join(parts)}</svg>'


def _histogram(values: list[float], bins: int = 20) -> str:
    nonzero = [v for v in values if v != 0]
    if not nonzero:
        return "<p>No item differs.</p>"
    low, high = min(nonzero), max(nonzero)
    span = (high - low) or 1.0
    counts = [0] * bins
    for v in nonzero:
        counts[min(bins - 1, int((v - low) / span * bins))] += 1
    peak = max(counts)
    bars = "".join(
        f'<rect x="{10 + 24 * i}" y="{110 - 100 * c / peak:.1f}" width="22" '
        f'height="{100 * c / peak:.1f}" fill="#d68b6b"/>'
        for i, c in enumerate(counts)
    )
    axis = f'<text x="10" y="126">{fmt(low)}</text><text x="{24 * bins - 30}" y="126">{fmt(high)}</text>'
    return f'<svg width="{24 * bins + 20}" height="132" font-size="11">{bars}{axis}</svg>'


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}}
section{{border:1px solid #ddd;border-radius:8px;padding:1rem;margin:1rem 0}}
code,pre{{background:#f5f5f5}} td,th{{padding:2px 8px;text-align:left}}
</style></head><body><h1>{title}</h1>{body}</body></html>
"""


def eval_page(report: dict[str, Any]) -> str:
    model = report["model"]
    body = [
        f"<p>Model <b>{html.escape(str(model['name']))}</b> ({html.escape(model['source'])})</p>"
    ]
    for task in report["tasks"]:
        part = [f"<h2>{html.escape(task['name'])} <small>({task['kind']})</small></h2>"]
        part.append(f"<p>{task['n_items']} items, data {task['data_hash'][:23]}…</p>")
        part.append(bars(task["metrics"]))
        part.append("<ul>" + "".join(
            f"<li>{html.escape(metric_line(n, m))}"
            + (f"<br><code>{html.escape(m['signature'])}</code>" if "signature" in m else "")
            + "</li>" for n, m in task["metrics"].items()) + "</ul>")  # fmt: skip
        if "confusion" in task["details"]:
            part.append(
                "<h3>Confusion matrix (rows: truth)</h3>" + _heatmap(task["details"]["confusion"])
            )
        for sample in task.get("samples", []):
            part.append("<pre>" + html.escape(json.dumps(sample, ensure_ascii=False)) + "</pre>")
        body.append("<section>" + "".join(part) + "</section>")
    return PAGE.format(title="lmscope evaluation", body="".join(body))


def compare_page(report: dict[str, Any]) -> str:
    a, b = report["a"]["name"], report["b"]["name"]
    body = [f"<p>A = <b>{html.escape(str(a))}</b>, B = <b>{html.escape(str(b))}</b></p>"]
    for task in report["tasks"]:
        part = [f"<h2>{html.escape(task['name'])} <small>({task['kind']})</small></h2>"]
        part += [f"<p>{html.escape(v)}</p>" for v in task["verdicts"]]
        part += [f"<p><i>{html.escape(n)}</i></p>" for n in task["notes"]]
        part.append(
            "<h3>Per-item difference (B - A)</h3>" + _histogram(task["per_item_difference"])
        )
        body.append("<section>" + "".join(part) + "</section>")
    return PAGE.format(title="lmscope comparison", body="".join(body))
