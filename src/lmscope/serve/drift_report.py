"""A one-file HTML drift report: per model and signal, the reference and current distributions
side by side (inline SVG bars over the same bins), with PSI, KS and the drift flag.

Input is a drift snapshot, the JSON of GET /v1/drift (`DriftHub.snapshot()`); the page needs no
network and no script.
"""

from __future__ import annotations

import html
import math
from typing import Any

WIDTH, HEIGHT, PAD = 520, 180, 28
REF_COLOUR, CUR_COLOUR = "#4a7ab7", "#e08a2c"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and (value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5)):
        return f"{value:.2e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def bin_labels(histogram: dict[str, Any]) -> list[str]:
    """One label per bin: categories, or the interval (lo, hi] of each quantile bin."""
    if "categories" in histogram:
        return [str(c) for c in histogram["categories"]]
    edges = histogram["edges"]
    bounds = [histogram.get("min", -math.inf), *edges, histogram.get("max", math.inf)]
    labels = []
    for i in range(len(edges) + 1):
        lo, hi = bounds[i], bounds[i + 1]
        labels.append(f"≤ {_num(hi, 2)}" if i == 0 else f"({_num(lo, 2)}, {_num(hi, 2)}]")
    labels[-1] = f"> {_num(bounds[-2], 2)}" if edges else "all"
    return labels


def bars_svg(histogram: dict[str, Any]) -> str:
    """Grouped bars: for each bin the reference share and the current share."""
    ref, cur = histogram["reference"], histogram["current"]
    labels = bin_labels(histogram)
    n = max(1, len(ref))
    top = max([*ref, *cur, 1e-9])
    slot = (WIDTH - 2 * PAD) / n
    bar = slot * 0.38
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT + 40}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT + 40}" role="img">',
        f'<line x1="{PAD}" y1="{HEIGHT}" x2="{WIDTH - PAD}" y2="{HEIGHT}" stroke="#888"/>',
    ]
    for i in range(len(ref)):
        x = PAD + i * slot + slot * 0.1
        for j, (share, colour, who) in enumerate(
            ((ref[i], REF_COLOUR, "reference"), (cur[i], CUR_COLOUR, "current"))
        ):
            h = (HEIGHT - PAD) * share / top
            tip = html.escape(f"{who} {labels[i]}: {share:.1%}")
            parts.append(
                f'<rect x="{x + j * bar:.1f}" y="{HEIGHT - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{tip}</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar:.1f}" y="{HEIGHT + 14}" font-size="9" text-anchor="middle">'
            f"{html.escape(labels[i])}</text>"
        )
    parts.append(
        f'<rect x="{PAD}" y="4" width="10" height="10" fill="{REF_COLOUR}"/>'
        f'<text x="{PAD + 14}" y="13" font-size="11">reference</text>'
        f'<rect x="{PAD + 90}" y="4" width="10" height="10" fill="{CUR_COLOUR}"/>'
        f'<text x="{PAD + 104}" y="13" font-size="11">current window</text></svg>'
    )
    return "".join(parts)


def _signal_html(sig: dict[str, Any]) -> str:
    flag = '<b class="drift">DRIFT</b>' if sig.get("drift") else '<span class="ok">stable</span>'
    stats = (
        f"PSI {_num(sig.get('psi'))} · KS {_num(sig.get('ks'))} · p {_num(sig.get('ks_pvalue'))}"
        f" · n {sig.get('n_reference')} reference ({html.escape(str(sig.get('reference')))}) / "
        f"{sig.get('n_current')} current"
    )
    if sig.get("mean_reference") is not None:
        stats += f" · mean {_num(sig['mean_reference'])} → {_num(sig.get('mean_current'))}"
    chart = bars_svg(sig["histogram"]) if sig.get("histogram") else "<p>no data yet</p>"
    return (
        f'<div class="signal"><h3>{html.escape(sig["name"])} {flag}</h3>'
        f'<p class="stats">{stats}</p>{chart}</div>'
    )


def render_report(snapshot: dict[str, Any], title: str = "lmscope drift report") -> str:
    """The whole HTML page for a drift snapshot."""
    thresholds = snapshot.get("thresholds", {})
    rule = (
        f"A signal drifts when its window holds at least {thresholds.get('min_samples')} "
        f"requests, PSI ≥ {thresholds.get('psi')} and (numeric signals) the KS p-value &lt; "
        f"{thresholds.get('ks_alpha')}. Prompt signals are compared with the reference data; "
        "output signals with the server's first window of requests."
    )
    body = []
    for model in snapshot.get("models", []):
        ref = model.get("reference", {})
        verdict = "drift detected" if model.get("drift") else "no drift"
        body.append(
            f"<section><h2>{html.escape(str(model.get('model')))}: {verdict}</h2>"
            f"<p>{model.get('requests')} requests seen; reference "
            f"{html.escape(str(ref.get('source')))} ({ref.get('samples')} samples)</p>"
            + "".join(_signal_html(sig) for sig in model.get("signals", []))
            + "</section>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}"
        ".signal{display:inline-block;vertical-align:top;margin:0 1.5em 1.5em 0}"
        ".stats{font-size:.85em;color:#555;margin:.2em 0}.drift{color:#b00}.ok{color:#070}"
        f"</style></head><body><h1>{html.escape(title)}</h1><p>{rule}</p>"
        + "".join(body)
        + "</body></html>\n"
    )
