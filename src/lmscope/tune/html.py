"""The study report as one offline HTML file: inline SVG charts (optimisation history, learning
curves, parallel coordinates, slices, importances) and the trial table; no script, no CDN."""

from __future__ import annotations

import html
import json
import math
from typing import Any

W, H, PAD = 560, 260, 44
_STATE_COLOURS = {"COMPLETE": "#1f6feb", "PRUNED": "#9aa4b2", "FAIL": "#d1242f"}


def _esc(value: Any) -> str:
    return html.escape(str(value))


class _Axis:
    """Maps values onto [a, b] pixels: numbers (linear or log) or categories (evenly)."""

    def __init__(self, values: list[Any], a: float, b: float, log: bool = False) -> None:
        self.a, self.b = a, b
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        self.categories: list[str] | None = None
        if len(numbers) != len(values) or not values:
            self.categories = sorted({str(v) for v in values})
            return
        self.log = log and min(numbers) > 0
        self.integers = all(isinstance(v, int) for v in numbers) and not self.log
        f = self._f
        lo, hi = min(map(f, numbers)), max(map(f, numbers))
        self.lo, self.hi = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)

    def _f(self, v: float) -> float:
        return math.log10(v) if self.log else float(v)

    def __call__(self, v: Any) -> float:
        if self.categories is not None:
            n = len(self.categories)
            t = (self.categories.index(str(v)) + 0.5) / n
        else:
            t = (self._f(v) - self.lo) / (self.hi - self.lo)
        return self.a + t * (self.b - self.a)

    def ticks(self) -> list[tuple[float, str]]:
        if self.categories is not None:
            return [(self(c), c) for c in self.categories]
        if self.integers:  # whole numbers at their own places (trial numbers, steps, widths)
            whole = sorted({round(self.lo + i * (self.hi - self.lo) / 4) for i in range(5)})
            return [(self(v), str(v)) for v in whole]
        out = []
        for i in range(5):
            raw = self.lo + i * (self.hi - self.lo) / 4
            value = 10**raw if self.log else raw
            out.append((self.a + i * (self.b - self.a) / 4, f"{value:.3g}"))
        return out


def _frame(
    title: str, body: str, x: _Axis | None, y: _Axis | None, xlabel: str, ylabel: str
) -> str:
    parts = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{_esc(title)}">']
    parts.append(
        f'<rect x="{PAD}" y="10" width="{W - PAD - 10}" height="{H - PAD - 10}" class="plot"/>'
    )
    for pos, text in x.ticks() if x else []:
        parts.append(
            f'<text x="{pos:.1f}" y="{H - PAD + 16}" class="tick" text-anchor="middle">{_esc(text)}</text>'
        )
    for pos, text in y.ticks() if y else []:
        parts.append(
            f'<text x="{PAD - 4}" y="{pos + 4:.1f}" class="tick" text-anchor="end">{_esc(text)}</text>'
        )
    parts.append(
        f'<text x="{(W + PAD) / 2}" y="{H - 6}" text-anchor="middle">{_esc(xlabel)}</text>'
    )
    parts.append(
        f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle">{_esc(ylabel)}</text>'
    )
    parts.append(body)
    parts.append("</svg>")
    return f"<figure><figcaption>{_esc(title)}</figcaption>{''.join(parts)}</figure>"


def _value_of(row: dict[str, Any]) -> float | None:
    """A trial's first objective, or a pruned trial's last reported value."""
    if row["values"]:
        return float(row["values"][0])
    if row["state"] == "PRUNED" and row["curve"]:
        return float(row["curve"][-1][1])
    return None


def _finite(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    out = []
    for row in rows:
        v = _value_of(row)
        if v is not None and math.isfinite(v):
            out.append((row, v))
    return out


def history_svg(data: dict[str, Any]) -> str:
    points = _finite(data["trials"])
    if not points:
        return ""
    metric, sign = data["objectives"][0]["metric"], data["objectives"][0]["direction"]
    x = _Axis([r["number"] for r, _ in points], PAD + 8, W - 18)
    y = _Axis([v for _, v in points], H - PAD - 6, 16)
    dots = [
        f'<circle cx="{x(r["number"]):.1f}" cy="{y(v):.1f}" r="3.5" fill="{_STATE_COLOURS.get(r["state"], "#000")}"><title>trial {r["number"]} {r["state"].lower()}: {v:.4f}</title></circle>'
        for r, v in points
    ]
    best, line = None, []
    for r, v in points:
        if r["state"] != "COMPLETE":
            continue
        if best is None or (v < best if sign == "minimize" else v > best):
            best = v
        line.append(f"{x(r['number']):.1f},{y(best):.1f}")
    path = f'<polyline points="{" ".join(line)}" class="best"/>' if line else ""
    title = f"Optimisation history ({metric}; grey: pruned at their last report; line: best so far)"
    return _frame(title, path + "".join(dots), x, y, "trial", metric)


def curves_svg(data: dict[str, Any]) -> str:
    rows = [r for r in data["trials"] if r["curve"]]
    if not rows:
        return ""
    steps = [s for r in rows for s, _ in r["curve"]]
    values = [v for r in rows for _, v in r["curve"] if math.isfinite(v)]
    if not values:
        return ""
    x, y = _Axis(steps, PAD + 8, W - 18), _Axis(values, H - PAD - 6, 16)
    lines = []
    for r in rows:
        pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in r["curve"] if math.isfinite(v))
        colour = _STATE_COLOURS.get(r["state"], "#000")
        lines.append(
            f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.2"><title>trial {r["number"]}</title></polyline>'
        )
        if pts:  # where the curve ended (a trial pruned at its first report is only this dot)
            cx, cy = pts.split(" ")[-1].split(",")
            lines.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
    return _frame(
        "Validation loss during training (grey: pruned)",
        "".join(lines),
        x,
        y,
        "step",
        "validation loss",
    )


def parallel_svg(data: dict[str, Any]) -> str:
    points = [(r, v) for r, v in _finite(data["trials"]) if r["state"] == "COMPLETE"]
    names = sorted({k for r, _ in points for k in r["params"]})
    if not points or not names:
        return ""
    metric = data["objectives"][0]["metric"]
    columns = [*names, metric]
    step = (W - 2 * PAD) / max(len(columns) - 1, 1)
    xs = [PAD + i * step for i in range(len(columns))]
    axes = []
    for name in names:
        log = bool(data["space"].get(name, {}).get("log"))
        axes.append(
            _Axis([r["params"][name] for r, _ in points if name in r["params"]], H - PAD, 20, log)
        )
    axes.append(_Axis([v for _, v in points], H - PAD, 20))
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    body = []
    for r, v in points:
        t = 0.0 if hi == lo else (v - lo) / (hi - lo)
        if data["objectives"][0]["direction"] == "maximize":
            t = 1 - t
        colour = f"hsl({int(220 - 200 * t)},70%,45%)"
        pts = [
            f"{xs[i]:.1f},{axes[i](r['params'][n]):.1f}"
            for i, n in enumerate(names)
            if n in r["params"]
        ]
        pts.append(f"{xs[-1]:.1f},{axes[-1](v):.1f}")
        body.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-opacity="0.7"><title>trial {r["number"]}: {v:.4f}</title></polyline>'
        )
    for i, col in enumerate(columns):
        body.append(
            f'<line x1="{xs[i]:.1f}" y1="20" x2="{xs[i]:.1f}" y2="{H - PAD}" class="axis"/>'
        )
        body.append(
            f'<text x="{xs[i]:.1f}" y="{H - PAD + 14 + 12 * (i % 2)}" text-anchor="middle" class="tick">{_esc(col)}</text>'
        )
        for pos, text in axes[i].ticks()[:: 2 if axes[i].categories is None else 1]:
            body.append(f'<text x="{xs[i] + 3:.1f}" y="{pos:.1f}" class="tick">{_esc(text)}</text>')
    title = f"Parallel coordinates (completed trials; blue: better {metric})"
    return f'<figure><figcaption>{_esc(title)}</figcaption><svg viewBox="0 0 {W} {H}">{"".join(body)}</svg></figure>'


def slice_svgs(data: dict[str, Any]) -> str:
    points = _finite(data["trials"])
    metric = data["objectives"][0]["metric"]
    out = []
    for name in sorted({k for r, _ in points for k in r["params"]}):
        mine = [(r["params"][name], v, r) for r, v in points if name in r["params"]]
        log = bool(data["space"].get(name, {}).get("log"))
        x = _Axis([p for p, _, _ in mine], PAD + 8, W - 18, log)
        y = _Axis([v for _, v, _ in mine], H - PAD - 6, 16)
        dots = "".join(
            f'<circle cx="{x(p):.1f}" cy="{y(v):.1f}" r="3.5" fill="{_STATE_COLOURS.get(r["state"], "#000")}"><title>trial {r["number"]}: {name}={p}, {v:.4f}</title></circle>'
            for p, v, r in mine
        )
        out.append(_frame(f"Slice: {name}", dots, x, y, name, metric))
    return "".join(out)


def importance_svg(data: dict[str, Any]) -> str:
    entry = data["importances"][0] if data["importances"] else {"params": {}}
    items = sorted(entry["params"].items(), key=lambda kv: -kv[1])
    if not items:
        return ""
    height = 30 + 24 * len(items)
    left, width = 200, W - 260
    bars = []
    for i, (name, share) in enumerate(items):
        y = 16 + 24 * i
        bars.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{_esc(name)}</text>')
        bars.append(
            f'<rect x="{left}" y="{y}" width="{max(share * width, 1):.1f}" height="16" fill="#1f6feb"/>'
        )
        bars.append(
            f'<text x="{left + share * width + 6:.1f}" y="{y + 13}" class="tick">{share:.2f}</text>'
        )
    title = f"Parameter importance for {entry['objective']} (PED-ANOVA, shares sum to 1)"
    return f'<figure><figcaption>{_esc(title)}</figcaption><svg viewBox="0 0 {W} {height}">{"".join(bars)}</svg></figure>'


_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;max-width:1200px;color:#1f2328}
figure{display:inline-block;margin:8px;vertical-align:top;width:560px}
figcaption{font-weight:600;margin-bottom:4px}
svg{width:100%;height:auto;font-size:10px}
.plot{fill:#f6f8fa;stroke:#d0d7de}.axis{stroke:#8c959f}.tick{fill:#57606a}
.best{fill:none;stroke:#1a7f37;stroke-width:2}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #d0d7de;padding:2px 6px}
pre{background:#f6f8fa;padding:8px;overflow:auto}
"""


def render_html(data: dict[str, Any]) -> str:
    from lmscope.tune.report import summary_lines, table_lines

    summary = "".join(f"<li>{_esc(line)}</li>" for line in summary_lines(data))
    table = "\n".join(table_lines(data))
    charts = history_svg(data) + curves_svg(data) + importance_svg(data) + parallel_svg(data)
    best = json.dumps(data["best_config"], indent=2) if data["best_config"] else "none yet"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>study {_esc(data['study'])}"
        f"</title><style>{_CSS}</style></head><body><h1>Study {_esc(data['study'])}</h1>"
        f"<ul>{summary}</ul>{charts}{slice_svgs(data)}<h2>Trials</h2><pre>{_esc(table)}</pre>"
        f"<h2>Best config</h2><pre>{_esc(best)}</pre></body></html>"
    )
