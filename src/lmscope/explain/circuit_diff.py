"""Circuit diff: how the head and neuron importances of a task changed between two models (a base
and its fine-tune, two checkpoints), from their `aggregate` results on the same prompts.

`head_delta` = other's mean head importance - base's; `gained` and `lost` rank the largest
changes either way, with each head's mean in both models and its change of on-route frequency.
`heatmap_svg` draws [L, H] deltas (blue lost, red gained); `to_html` is a self-contained page.
`stats_from_dict` reads a saved `aggregate` result back, so stored results can be diffed.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmscope.explain.aggregate import ComponentStats
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.results import JsonResult, rounded
from lmscope.files import atomic_write_text


@dataclass
class CircuitDiff(JsonResult):
    base: str
    other: str
    head_delta: torch.Tensor  # [L, H]
    route_delta: torch.Tensor  # [L, H] change of on-route frequency
    neuron_delta: torch.Tensor  # [L, M] (empty when neurons were not aggregated)
    gained: list[dict[str, Any]] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "other": self.other,
            "head_delta": rounded(self.head_delta.tolist()),
            "route_delta": rounded(self.route_delta.tolist()),
            "gained": self.gained,
            "lost": self.lost,
            "meta": self.meta,
        }

    def to_html(self) -> str:
        rows = "".join(
            f"<tr><td>{kind}</td><td>{html.escape(r['component'])}</td>"
            f"<td>{r['base']:.4f}</td><td>{r['other']:.4f}</td><td>{r['delta']:+.4f}</td></tr>"
            for kind, rows in (("gained", self.gained), ("lost", self.lost))
            for r in rows
        )
        title = f"circuit diff: {html.escape(self.base)} -> {html.escape(self.other)}"
        return (
            f"<!doctype html><meta charset='utf-8'><title>{title}</title>"
            f"<h1>{title}</h1><p>{self.meta.get('n_prompts', '?')} prompts; head importance "
            "change (red gained, blue lost; rows are layers, columns heads)</p>"
            f"{heatmap_svg(self.head_delta)}"
            "<table border=1 cellpadding=3><tr><th></th><th>component</th><th>base</th>"
            f"<th>other</th><th>change</th></tr>{rows}</table>"
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = self.to_html() if path.suffix.lower() == ".html" else self.to_json(indent=1)
        atomic_write_text(path, text)
        return path


def _ranked(
    delta: torch.Tensor, base: torch.Tensor, other: torch.Tensor, k: int, label: str, largest: bool
) -> list[dict[str, Any]]:
    width = delta.shape[1]
    values, idx = delta.flatten().topk(min(k, delta.numel()), largest=largest)
    out = []
    for v, i in zip(values.tolist(), idx.tolist(), strict=True):
        if (v > 0) != largest or v == 0:
            continue
        layer, col = divmod(i, width)
        out.append(
            {
                "component": f"L{layer}{label}{col}",
                "base": float(base[layer, col]),
                "other": float(other[layer, col]),
                "delta": v,
            }
        )
    return out


def circuit_diff(base: ComponentStats, other: ComponentStats, k: int = 10) -> CircuitDiff:
    """The change from `base` to `other` (see module docstring); both from the same prompts."""
    if base.head_sum.shape != other.head_sum.shape:
        raise ExplainInputError(
            f"the two models have different head layouts ({tuple(base.head_sum.shape)} vs "
            f"{tuple(other.head_sum.shape)}); a circuit diff compares versions of one architecture"
        )
    if base.n_prompts != other.n_prompts:
        raise ExplainInputError(
            f"the aggregations cover {base.n_prompts} and {other.n_prompts} prompts; aggregate "
            "both models over the same prompt set"
        )
    delta = other.head_mean - base.head_mean
    if base.neuron_sum.shape == other.neuron_sum.shape and base.neuron_sum.numel():
        neuron_delta = other.neuron_mean - base.neuron_mean
    else:
        neuron_delta = torch.zeros(0)
    gained = _ranked(delta, base.head_mean, other.head_mean, k, "H", True)
    lost = _ranked(delta, base.head_mean, other.head_mean, k, "H", False)
    if neuron_delta.numel():
        gained += _ranked(neuron_delta, base.neuron_mean, other.neuron_mean, k, "N", True)
        lost += _ranked(neuron_delta, base.neuron_mean, other.neuron_mean, k, "N", False)
    return CircuitDiff(
        base.model,
        other.model,
        delta,
        other.route_frequency - base.route_frequency,
        neuron_delta,
        gained,
        lost,
        {"n_prompts": base.n_prompts, "tau": base.tau},
    )


def stats_from_dict(data: Any) -> ComponentStats:
    """An `aggregate` result read back from its JSON (`ComponentStats.to_dict`, as `lmscope
    explain aggregate --out` writes it). The sums are rebuilt from the stored means, spreads
    and on-route frequencies (7 decimals); neurons only where `neuron_mean` and `neuron_std`
    were stored too (the plain result keeps the top neurons alone)."""
    try:
        n, tau = int(data["n_prompts"]), float(data["tau"])
        mean, std, freq = (
            torch.tensor(data[k], dtype=torch.float64)
            for k in ("head_mean", "head_std", "route_frequency")
        )
        n_mean = torch.tensor(data.get("neuron_mean") or [], dtype=torch.float64)
        n_std = torch.tensor(data.get("neuron_std") or [], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ExplainInputError(f"not an aggregate result (bad or missing {err})") from None
    if n < 1 or mean.ndim != 2 or std.shape != mean.shape or freq.shape != mean.shape:
        raise ExplainInputError("not an aggregate result: its head tables disagree in shape")
    if n_mean.ndim != 2 or n_std.shape != n_mean.shape or n_mean.shape[0] != mean.shape[0]:
        n_mean = n_std = torch.zeros(mean.shape[0], 0, dtype=torch.float64)
    meta = data.get("meta")
    return ComponentStats(
        str(data.get("model", "model")),
        n,
        tau,
        mean * n,
        (std**2 + mean**2) * n,
        (freq * n).round(),
        n_mean * n,
        (n_std**2 + n_mean**2) * n,
        dict(meta) if isinstance(meta, dict) else {},
    )


def heatmap_svg(matrix: torch.Tensor, cell: int = 14) -> str:
    """A diverging [rows, cols] heatmap as inline SVG (red > 0, blue < 0, white 0)."""
    rows, cols = matrix.shape
    scale = float(matrix.abs().max()) or 1.0
    rects = []
    for r in range(rows):
        for c in range(cols):
            v = float(matrix[r, c]) / scale
            fade = int(255 * (1 - abs(v)))
            color = f"rgb(255,{fade},{fade})" if v > 0 else f"rgb({fade},{fade},255)"
            rects.append(
                f"<rect x='{c * cell}' y='{r * cell}' width='{cell}' height='{cell}' "
                f"fill='{color}'><title>L{r}H{c}: {float(matrix[r, c]):+.4f}</title></rect>"
            )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{cols * cell}' height='{rows * cell}'>"
        + "".join(rects)
        + "</svg>"
    )
