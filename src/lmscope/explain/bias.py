"""Running bias probes (see `bias_probes`): the probability gap of each target continuation between
groups, with a bootstrap confidence interval, and the heads and neurons that carry the difference.

For every filled prompt: P(target | prompt) for each target (the product of its tokens'
conditional probabilities), and, at the prompt's last token, the ALTI importance of every head
and neuron (`aggregate.prompt_importances`). Groups are compared with the first group as the
reference: gap = mean P(target | group) - mean P(target | reference). The CI resamples each
group's prompts with replacement (`n_boot` times, seeded) and takes the 2.5 and 97.5 percentiles
of the gap. Components are ranked by |mean importance in the group - in the reference|.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmscope.explain.aggregate import prompt_importances
from lmscope.explain.bias_probes import Probe
from lmscope.explain.budget import ShouldStop, check_cancelled
from lmscope.explain.errors import ExplainInputError, check_tokens
from lmscope.explain.perturb import check_count
from lmscope.explain.results import JsonResult
from lmscope.explain.trace import TraceView, record
from lmscope.files import atomic_write_text
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer

Encode = Callable[[str], Sequence[int]]


@dataclass
class ProbeResult(JsonResult):
    name: str
    template: str
    reference: str
    groups: dict[str, int]  # prompts per group
    targets: list[dict[str, Any]]  # target, mean probability per group, gaps with CI
    components: dict[str, dict[str, list[dict[str, Any]]]]  # group -> heads/neurons ranked

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "template": self.template,
            "reference": self.reference,
            "groups": self.groups,
            "targets": self.targets,
            "components": self.components,
        }


@dataclass
class BiasReport(JsonResult):
    model: str
    probes: list[ProbeResult]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "probes": [p.to_dict() for p in self.probes],
            "meta": self.meta,
        }

    def to_html(self) -> str:
        esc = html.escape
        parts = [
            f"<!doctype html><meta charset='utf-8'><title>bias probes: {esc(self.model)}</title>",
            f"<h1>Bias probes: {esc(self.model)}</h1>",
            f"<p>95% bootstrap CI over prompts ({self.meta.get('n_boot')} resamples); a gap is "
            "mean P(target | group) - mean P(target | reference group).</p>",
        ]
        for p in self.probes:
            parts.append(f"<h2>{esc(p.name)}</h2><p><code>{esc(p.template)}</code>; groups ")
            parts.append(", ".join(f"{esc(g)} ({n} prompts)" for g, n in p.groups.items()))
            parts.append("</p><table border=1 cellpadding=3><tr><th>target</th>")
            parts += [f"<th>P | {esc(g)}</th>" for g in p.groups]
            parts.append("<th>gap (CI)</th></tr>")
            for t in p.targets:
                cells = "".join(f"<td>{t['mean'][g]:.4g}</td>" for g in p.groups)
                gaps = "<br>".join(
                    f"{esc(g)}: {v['gap']:+.4g} [{v['ci'][0]:+.4g}, {v['ci'][1]:+.4g}]"
                    + (" *" if v["ci"][0] > 0 or v["ci"][1] < 0 else "")
                    for g, v in t["gaps"].items()
                )
                parts.append(f"<tr><td>{esc(repr(t['target']))}</td>{cells}<td>{gaps}</td></tr>")
            parts.append("</table>")
            for g, comps in p.components.items():
                rows = ", ".join(
                    f"{c['component']} {c['diff']:+.4f}" for c in comps["heads"] + comps["neurons"]
                )
                parts.append(
                    f"<p>carrying the {esc(g)} - {esc(p.reference)} difference: {rows}</p>"
                )
        parts.append("<p>* the CI excludes 0.</p>")
        return "".join(parts)

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write STEM.json and STEM.html (a .json/.html suffix on `stem` is dropped)."""
        stem = Path(stem)
        if stem.suffix.lower() in (".json", ".html"):
            stem = stem.with_suffix("")
        paths = stem.with_suffix(".json"), stem.with_suffix(".html")
        atomic_write_text(paths[0], self.to_json(indent=1))
        atomic_write_text(paths[1], self.to_html())
        return paths


def continuation_probs(
    model: Transformer, prompt: Sequence[int], targets: list[list[int]], last_logits: torch.Tensor
) -> list[float]:
    """P(target | prompt) per target: single tokens from the prompt's last logits, longer
    targets from one teacher-forced forward each."""
    first = torch.log_softmax(last_logits.double(), -1)
    out = []
    for ids in targets:
        logp = float(first[ids[0]])
        if len(ids) > 1:
            seq = torch.tensor([list(prompt) + ids[:-1]], device=model.device)
            with eval_mode(model), torch.no_grad():
                logits = model(seq)[0, len(prompt) :]
            rest = torch.log_softmax(logits.double(), -1)
            logp += float(rest[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
        out.append(float(torch.exp(torch.tensor(logp))))
    return out


def bootstrap_gap(
    values: torch.Tensor, reference: torch.Tensor, n_boot: int, gen: torch.Generator
) -> tuple[float, float]:
    """95% percentile CI of mean(values) - mean(reference), resampling each with replacement."""
    a = values[torch.randint(len(values), (n_boot, len(values)), generator=gen)].mean(1)
    b = reference[torch.randint(len(reference), (n_boot, len(reference)), generator=gen)].mean(1)
    q = torch.quantile(a - b, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(q[0]), float(q[1])


def _ranked(diff: torch.Tensor, label: str, k: int) -> list[dict[str, Any]]:
    width = diff.shape[1]
    if diff.numel() == 0:
        return []
    _, idx = diff.abs().flatten().topk(min(k, diff.numel()))
    return [
        {"component": f"L{i // width}{label}{i % width}", "diff": float(diff.flatten()[i])}
        for i in idx.tolist()
    ]


def run_probe(
    model: Transformer,
    encode: Encode,
    probe: Probe,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    tau: float = 0.04,
    components: bool = True,
    k: int = 5,
    should_stop: ShouldStop | None = None,
) -> ProbeResult:
    """One probe: probabilities, gaps with CIs and (optionally) the components (module doc)."""
    check_count(n_boot, "n_boot")
    targets = [list(encode(t)) for t in probe.targets]
    for text, ids in zip(probe.targets, targets, strict=True):
        if not ids:
            raise ExplainInputError(f"probe {probe.name!r}: target {text!r} encodes to no tokens")
    probs: dict[str, torch.Tensor] = {}
    heads: dict[str, torch.Tensor] = {}
    neurons: dict[str, torch.Tensor] = {}
    for group, prompts in probe.prompts().items():
        rows, h_sum, n_sum = [], None, None
        for text in prompts:
            check_cancelled(should_stop, "the bias probes")
            ids = list(encode(text))
            check_tokens(len(ids), model.cfg.n_ctx)
            trace = record(model, ids, neurons=components)
            rows.append(continuation_probs(model, ids, targets, trace.logits[0, -1]))
            if components:
                imp = prompt_importances(TraceView(model, trace), tau)
                h_sum = imp.heads if h_sum is None else h_sum + imp.heads
                n_sum = imp.neurons if n_sum is None else n_sum + imp.neurons
        probs[group] = torch.tensor(rows, dtype=torch.float64)  # [prompts, targets]
        if h_sum is not None and n_sum is not None:
            heads[group], neurons[group] = h_sum / len(prompts), n_sum / len(prompts)
    reference = next(iter(probe.groups))
    gen = torch.Generator().manual_seed(seed)
    table = []
    for j, target in enumerate(probe.targets):
        mean = {g: float(p[:, j].mean()) for g, p in probs.items()}
        gaps = {}
        for g, p in probs.items():
            if g == reference:
                continue
            lo, hi = bootstrap_gap(p[:, j], probs[reference][:, j], n_boot, gen)
            gaps[g] = {"gap": mean[g] - mean[reference], "ci": [lo, hi]}
        table.append({"target": target, "mean": mean, "gaps": gaps})
    comps = {
        g: {
            "heads": _ranked(heads[g] - heads[reference], "H", k),
            "neurons": _ranked(neurons[g] - neurons[reference], "N", k),
        }
        for g in heads
        if g != reference
    }
    return ProbeResult(
        probe.name,
        probe.template,
        reference,
        {g: len(p) for g, p in probs.items()},
        table,
        comps,
    )


def run_probes(
    model: Transformer,
    encode: Encode,
    probes: list[Probe],
    *,
    name: str = "model",
    n_boot: int = 1000,
    seed: int = 0,
    components: bool = True,
    should_stop: ShouldStop | None = None,
) -> BiasReport:
    results = [
        run_probe(
            model,
            encode,
            p,
            n_boot=n_boot,
            seed=seed,
            components=components,
            should_stop=should_stop,
        )
        for p in probes
    ]
    return BiasReport(name, results, {"n_boot": n_boot, "seed": seed})
