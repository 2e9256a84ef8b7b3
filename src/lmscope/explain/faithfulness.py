"""How far to trust an input attribution: agreement between methods and deletion/insertion curves.

- Agreement: Spearman's rank correlation of two methods' token scores (ties get their mean
  rank), for every pair of methods.
- Deletion: remove tokens (put the baseline token in their place) from the most to the least
  important and score after each step; insertion: start from the all-baseline input and put the
  tokens back in the same order. The curves are normalised to the fraction of the full change,
  (score - score(all baseline)) / (score(prompt) - score(all baseline)), and their area under
  the curve (trapezoid over the fraction of tokens changed, 0..1) is reported: a faithful method
  has a low deletion AUC and a high insertion AUC; `insertion_auc - deletion_auc` sums it up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.explain.budget import ShouldStop
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.perturb_eval import DEFAULT_BATCH, MaskScorer
from lmscope.explain.results import JsonResult, rounded
from lmscope.explain.saliency import Attribution
from lmscope.model.transformer import Transformer


def ranks(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Ranks 1..n (float64), ties sharing their mean rank."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    order = v.argsort(stable=True)
    sorted_v = v[order]
    r = torch.empty_like(v)
    i, n = 0, v.numel()
    while i < n:
        j = i
        while j + 1 < n and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def rank_correlation(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman's rho of two equally long score lists (nan when either is constant)."""
    ra, rb = ranks(a), ranks(b)
    if ra.numel() != rb.numel():
        raise ExplainInputError(
            f"rank correlation needs equally long score lists, got {ra.numel()} and {rb.numel()}"
        )
    if ra.numel() < 2:
        raise ExplainInputError("rank correlation needs at least 2 scores")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra @ rb) / den) if den > 0 else float("nan")


def agreement(attributions: Sequence[Attribution]) -> dict[str, dict[str, float]]:
    """Pairwise rank correlation of methods explaining the same tokens: {a: {b: rho}}."""
    out: dict[str, dict[str, float]] = {}
    for x in attributions:
        row = out.setdefault(x.method, {})
        for y in attributions:
            if x.tokens != y.tokens:
                raise ExplainInputError(
                    f"{x.method} and {y.method} explain different tokens; compare attributions "
                    "of the same prompt and position"
                )
            row[y.method] = rank_correlation(x.scores, y.scores)
    return out


@dataclass
class Faithfulness(JsonResult):
    method: str
    order: list[int]  # token positions, most important first
    deletion: list[float]  # normalised score after removing the first k tokens, k = 0..n
    insertion: list[float]  # normalised score after putting back the first k tokens
    deletion_auc: float
    insertion_auc: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.insertion_auc - self.deletion_auc

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "order": self.order,
            "deletion": rounded(self.deletion),
            "insertion": rounded(self.insertion),
            "deletion_auc": self.deletion_auc,
            "insertion_auc": self.insertion_auc,
            "score": self.score,
            "meta": self.meta,
        }


def auc(curve: torch.Tensor) -> float:
    """Trapezoid area of a curve sampled at k/n, k = 0..n."""
    n = curve.numel() - 1
    return float((curve[1:] + curve[:-1]).sum() / (2 * n)) if n > 0 else 0.0


def deletion_insertion(
    model: Transformer,
    attribution: Attribution,
    *,
    baseline: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    should_stop: ShouldStop | None = None,
) -> Faithfulness:
    """Deletion and insertion curves of `attribution` (see module docstring). The score explained
    is the attribution's own (target, foil, logit/log-prob); the gradient methods' target must be
    set (attention rollout has none)."""
    if attribution.target is None:
        raise ExplainInputError(
            f"{attribution.method} names no target token, so there is no score to delete from"
        )
    if baseline is None:
        baseline = attribution.meta.get("baseline")
    scorer = MaskScorer(
        model,
        attribution.tokens,
        -1,
        attribution.target,
        attribution.foil,
        attribution.score,
        baseline,
        batch_size,
        should_stop,
    )
    n = scorer.n_tokens
    order = torch.tensor(attribution.scores, dtype=torch.float64).argsort(
        descending=True, stable=True
    )
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    steps = torch.arange(n + 1)[:, None]
    first_k = rank[None, :] < steps  # [n + 1, n]: the first k tokens of the order
    deleted = scorer(~first_k)
    inserted = scorer(first_k)
    span = scorer.value - scorer.baseline_value
    scale = span if abs(span) > 1e-12 else 1.0
    del_curve = (deleted - scorer.baseline_value) / scale
    ins_curve = (inserted - scorer.baseline_value) / scale
    return Faithfulness(
        attribution.method,
        order.tolist(),
        del_curve.tolist(),
        ins_curve.tolist(),
        auc(del_curve),
        auc(ins_curve),
        {
            "value": scorer.value,
            "baseline_value": scorer.baseline_value,
            "baseline": scorer.baseline,
            "target": scorer.target,
        },
    )
