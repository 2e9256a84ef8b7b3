"""The card as one self-contained HTML page: no scripts, no network, figures as inline SVG."""

from __future__ import annotations

import html
from typing import Any

from lmscope.document.card_md import layer_table_view
from lmscope.document.svg import architecture_diagram, line_plot, metric_bars

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
.missing{background:#fff4e5;border-left:4px solid #e8a33d;padding:.3em .8em}
.llm{background:#eef4ff}.llm::after{content:" \\2020";color:#1f5fbf}
figure{margin:1em 0}figcaption{font-size:12px;color:#555}
"""


def _table(table: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table["columns"])
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in table["rows"]
    )
    return f"<p><b>{html.escape(table['title'])}</b></p><table><tr>{head}</tr>{rows}</table>"


def _figures(facts: dict[str, Any], section: str) -> str:
    figs: list[tuple[str, str]] = []
    if section == "technical_specifications":
        figs.append((architecture_diagram(facts), "Architecture, drawn from the facts"))
    tr = facts.get("training") or {}
    curves = tr.get("curves") or {}
    if section == "training_details" and curves:
        series = {
            "train loss": [(p["step"], p["loss"]) for p in curves.get("train", []) if "loss" in p],
            "val loss": [
                (p["step"], p["val_loss"]) for p in curves.get("eval", []) if "val_loss" in p
            ],
        }
        figs.append(
            (line_plot({k: v for k, v in series.items() if v}, "step", "loss"), "Learning curves")
        )
        lr = [(p["step"], p["lr"]) for p in curves.get("train", []) if "lr" in p]
        figs.append((line_plot({"lr": lr}, "step", "learning rate"), "Learning-rate schedule"))
    ev = facts.get("evaluation") or {}
    if section == "evaluation" and ev.get("tasks"):
        rows = []
        for t in ev["tasks"]:
            for name, m in t["metrics"].items():
                ci = m.get("ci95") or [m["value"], m["value"]]
                rows.append((f"{t['name']} {name}", float(m["value"]), float(ci[0]), float(ci[1])))
        figs.append((metric_bars(rows), "Metrics with 95% confidence intervals"))
    return "".join(
        f"<figure>{svg}<figcaption>{html.escape(cap)}</figcaption></figure>"
        for svg, cap in figs
        if svg
    )


def render_html(facts: dict[str, Any], sections: list[dict[str, Any]], intro: str) -> str:
    name = html.escape(str(facts["model"]["name"]))
    body = [f"<h1>Model Card for {name}</h1>", f"<p>{html.escape(intro)}</p>"]
    for section in sections:
        body.append(f'<h2 id="{section["id"]}">{html.escape(section["title"])}</h2>')
        sentences = "".join(
            f'<span class="{s["origin"]}">{html.escape(s["text"])}</span> '
            for s in section["sentences"]
        )
        if sentences:
            body.append(f"<p>{sentences}</p>")
        body += [f'<p class="missing">Missing: {html.escape(m)}.</p>' for m in section["missing"]]
        body.append(_figures(facts, section["id"]))
        body += [_table(t) for t in section["tables"] if t["rows"]]
    if facts["layers"]["rows"]:
        body.append("<h2>Layer table</h2>" + _table(layer_table_view(facts)))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Model Card for {name}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
