"""Inline SVG figures drawn from the facts: an architecture diagram and line plots."""

from __future__ import annotations

import html
from typing import Any


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "middle") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">'
            f"{html.escape(s)}</text>")  # fmt: skip


def _box(x: float, y: float, w: float, h: float, fill: str, label: str) -> str:
    return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="4" fill="{fill}" '
            f'stroke="#333"/>' + _text(x + w / 2, y + h / 2 + 4, label))  # fmt: skip


def architecture_diagram(facts: dict[str, Any]) -> str:
    """Embedding, one block drawn in detail (x N), final norm and unembedding, bottom to top."""
    arch = facts["architecture"]
    if "attention" not in arch:
        return _op_histogram(arch.get("op_types") or arch.get("layer_types") or {})
    att, mlp, norm = arch["attention"], arch["mlp"], arch["normalisation"]
    w, x = 300, 40
    items = [
        ("#e8e8e8", f"unembedding ({'tied' if arch['tied_embeddings'] else 'untied'})"),
        ("#f3e2c7", f"final {norm['kind']}"),
        (
            "#cfe3c0",
            f"MLP {'gated ' if mlp['gated'] else ''}{mlp['activation']}, width {mlp['width']}",
        ),
        ("#f3e2c7", f"{norm['kind']}"),
        ("#c7d9f3", f"{att['kind']} attention: {att['heads']} q / {att['kv_heads']} kv heads"),
        ("#f3e2c7", f"{norm['kind']}"),
        ("#e8e8e8", f"embedding + {arch['positional']['kind']} positions"),
    ]
    parts, y = [], 10
    for fill, label in items:
        parts.append(_box(x, y, w, 30, fill, label))
        y += 42
    parts.append(f'<rect x="{x - 12}" y="{10 + 2 * 42 - 6}" width="{w + 24}" height="{4 * 42}" '
                 'fill="none" stroke="#888" stroke-dasharray="4 3"/>')  # fmt: skip
    block = "parallel block" if arch.get("parallel_blocks") else "pre-norm block"
    parts.append(_text(x + w + 20, 10 + 2 * 42 + 80, f"x {arch['n_layers']}", 14, "start"))
    parts.append(_text(x + w + 20, 10 + 2 * 42 + 98, block, 11, "start"))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="460" height="{y + 10}" '
            f'role="img" aria-label="architecture">{"".join(parts)}</svg>')  # fmt: skip


def _op_histogram(counts: dict[str, int]) -> str:
    items = list(counts.items())[:12]
    if not items:
        return ""
    peak = max(v for _, v in items)
    parts = []
    for i, (op, n) in enumerate(items):
        y = 8 + 20 * i
        parts.append(_text(110, y + 12, op, 11, "end"))
        parts.append(
            f'<rect x="116" y="{y}" width="{260 * n / peak:.1f}" height="14" fill="#6b8fd6"/>'
        )
        parts.append(_text(120 + 260 * n / peak, y + 12, str(n), 11, "start"))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="460" height="{16 + 20 * len(items)}" '
            f'role="img" aria-label="operation counts">{"".join(parts)}</svg>')  # fmt: skip


def line_plot(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str) -> str:
    """Lines on shared axes; empty string when there is nothing to draw."""
    points = [p for s in series.values() for p in s]
    if len(points) < 2:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    W, H, L, B, T = 480, 230, 64, 30, 22
    colours = ["#1f5fbf", "#d9661f", "#2f9e44", "#9c36b5"]

    def sx(v: float) -> float:
        return L + (v - x0) / (x1 - x0) * (W - L - 10)

    def sy(v: float) -> float:
        return H - B - (v - y0) / (y1 - y0) * (H - B - T)

    parts = [f'<line x1="{L}" y1="{H - B}" x2="{W - 10}" y2="{H - B}" stroke="#333"/>',
             f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#333"/>',
             _text((L + W) / 2, H - 4, xlabel, 11), _text(L, 12, ylabel, 11, "start"),
             _text(L - 4, H - B, f"{y0:.3g}", 10, "end"), _text(L - 4, T + 4, f"{y1:.3g}", 10, "end"),
             _text(L, H - B + 14, f"{x0:g}", 10), _text(W - 10, H - B + 14, f"{x1:g}", 10)]  # fmt: skip
    for i, (name, pts) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in pts)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
        parts.append(
            _text(W - 14, 24 + 14 * i, name, 11, "end").replace("<text", f'<text fill="{colour}"')
        )
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
            f'aria-label="{html.escape(ylabel)}">{"".join(parts)}</svg>')  # fmt: skip


def metric_bars(rows: list[tuple[str, float, float, float]]) -> str:
    """(label, value, ci_low, ci_high) as bars with whiskers, each scaled to its own top."""
    if not rows:
        return ""
    parts = []
    for i, (label, value, lo, hi) in enumerate(rows):
        top = max(abs(hi), abs(value), 1e-12)
        y = 8 + 22 * i
        parts.append(_text(190, y + 12, label, 11, "end"))
        parts.append(
            f'<rect x="196" y="{y}" width="{max(0.0, 240 * value / top):.1f}" height="14" fill="#6b8fd6"/>'
        )
        parts.append(f'<line x1="{196 + 240 * lo / top:.1f}" x2="{196 + 240 * hi / top:.1f}" '
                     f'y1="{y + 7}" y2="{y + 7}" stroke="#222" stroke-width="2"/>')  # fmt: skip
        parts.append(_text(444, y + 12, f"{value:.4g}", 11, "start"))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="520" height="{16 + 22 * len(rows)}" '
            f'role="img" aria-label="metrics">{"".join(parts)}</svg>')  # fmt: skip
