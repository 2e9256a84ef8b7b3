"""Perturbation attributions over input tokens: occlusion, feature ablation and Shapley value
sampling (LIME and KernelSHAP are in `perturb_sampling`).

Every method explains the same score as the gradient methods of `saliency` (the target's logit
or log-probability at `position`, optionally minus a foil's) and returns the same `Attribution`.
A token is removed by putting a baseline token in its place (default: the model's end-of-text
token). Scores are computed by `MaskScorer`, batched and reusing the KV cache of every
perturbed row's unchanged prefix, so occluding late tokens costs only the tokens after them (the
rows' suffixes are packed side by side, so short ones add no padding).

The definitions follow Captum 0.9 (the test oracle, tests/test_explain_perturb.py):
- feature ablation: attr(feature) = score(prompt) - score(prompt with the feature's tokens
  replaced); a feature is one token, or a group of tokens given by `features` (one group id per
  token, like Captum's feature_mask), and every token of a group gets the group's attribution;
- occlusion: windows of `window` tokens every `stride` tokens; a token's attribution is the mean
  of score(prompt) - score(occluded) over the windows that cover it (0 if none does);
- Shapley value sampling: for each of `n_samples` random permutations of the features (drawn with
  torch.randperm from a generator seeded with `seed`), features are put back one by one into the
  all-baseline input and each is credited with the change of the score; the mean over
  permutations. With all permutations it is the exact Shapley value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

from lmscope.explain.budget import ShouldStop
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.perturb_eval import DEFAULT_BATCH, MaskScorer
from lmscope.explain.saliency import Attribution, Score
from lmscope.model.transformer import Transformer

Tokens = torch.Tensor | Sequence[int]


def check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExplainInputError(f"{what} must be a positive integer, got {value!r}")
    return value


def feature_groups(features: Sequence[int] | torch.Tensor | None, n_tokens: int) -> torch.Tensor:
    """Group index [T] per token (0..F-1), from Captum-style feature ids (any integers)."""
    if features is None:
        return torch.arange(n_tokens)
    ids = torch.as_tensor(features, dtype=torch.long).flatten()
    if ids.numel() < n_tokens:
        raise ExplainInputError(
            f"features gives {ids.numel()} group ids but {n_tokens} tokens are explained; "
            "give one group id per token"
        )
    _, groups = torch.unique(ids[:n_tokens], return_inverse=True)
    return groups


def token_masks(keep: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Feature-level keep masks [N, F] -> token-level masks [N, T]."""
    return keep.bool()[:, groups]


def result(
    scorer: MaskScorer, method: str, scores: torch.Tensor, meta: dict[str, Any]
) -> Attribution:
    meta = {
        "value": scorer.value,
        "baseline_value": scorer.baseline_value,
        "baseline": scorer.baseline,
        "positions_run": scorer.n_positions,
        **meta,
    }
    return Attribution(
        method,
        scorer.position,
        scorer.target,
        scorer.foil,
        scores.double().tolist(),
        scorer.tokens[0].tolist(),
        scorer.score,
        meta,
    )


def make_scorer(
    model: Transformer,
    tokens: Tokens,
    position: int,
    target: int | None,
    foil: int | None,
    score: str,
    baseline: int | None,
    batch_size: int,
    should_stop: ShouldStop | None,
) -> MaskScorer:
    return MaskScorer(
        model, tokens, position, target, foil, score, baseline, batch_size, should_stop
    )


def feature_ablation(
    model: Transformer,
    tokens: Tokens,
    position: int = -1,
    target: int | None = None,
    foil: int | None = None,
    score: Score = "logit",
    *,
    baseline: int | None = None,
    features: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH,
    should_stop: ShouldStop | None = None,
) -> Attribution:
    """score(prompt) - score(prompt with one feature replaced by `baseline`), per feature."""
    scorer = make_scorer(
        model, tokens, position, target, foil, score, baseline, batch_size, should_stop
    )
    groups = feature_groups(features, scorer.n_tokens)
    n_features = int(groups.max()) + 1
    keep = ~torch.eye(n_features, dtype=torch.bool)
    diffs = scorer.value - scorer(token_masks(keep, groups))  # [F]
    return result(scorer, "feature_ablation", diffs[groups], {"n_features": n_features})


def occlusion(
    model: Transformer,
    tokens: Tokens,
    position: int = -1,
    target: int | None = None,
    foil: int | None = None,
    score: Score = "logit",
    *,
    window: int = 1,
    stride: int = 1,
    baseline: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    should_stop: ShouldStop | None = None,
) -> Attribution:
    """Sliding-window occlusion (see module docstring); window=1 occludes one token at a time."""
    check_count(window, "window")
    check_count(stride, "stride")
    scorer = make_scorer(
        model, tokens, position, target, foil, score, baseline, batch_size, should_stop
    )
    n = scorer.n_tokens
    if window > n:
        raise ExplainInputError(
            f"window of {window} tokens is longer than the {n} tokens explained; use at most {n}"
        )
    starts = torch.arange(0, n - window + 1, stride)
    cover = torch.zeros(len(starts), n, dtype=torch.bool)
    for row, s in enumerate(starts.tolist()):
        cover[row, s : s + window] = True
    diffs = scorer.value - scorer(~cover)  # [W]
    total = (diffs[:, None] * cover).sum(0)
    counts = cover.sum(0)
    attr = torch.where(counts > 0, total / counts.clamp(min=1), 0.0)
    return result(scorer, "occlusion", attr, {"window": window, "stride": stride})


def shapley_value_sampling(
    model: Transformer,
    tokens: Tokens,
    position: int = -1,
    target: int | None = None,
    foil: int | None = None,
    score: Score = "logit",
    *,
    n_samples: int = 25,
    seed: int = 0,
    baseline: int | None = None,
    features: Sequence[int] | torch.Tensor | None = None,
    exact: bool = False,
    batch_size: int = DEFAULT_BATCH,
    should_stop: ShouldStop | None = None,
) -> Attribution:
    """Shapley values estimated from `n_samples` random feature permutations (see module doc).

    exact=True uses every permutation instead (F! of them; only for a handful of features).
    """
    check_count(n_samples, "n_samples")
    scorer = make_scorer(
        model, tokens, position, target, foil, score, baseline, batch_size, should_stop
    )
    groups = feature_groups(features, scorer.n_tokens)
    n_features = int(groups.max()) + 1
    if exact:
        if n_features > 8:
            raise ExplainInputError(
                f"exact Shapley values need all {n_features}! permutations; use exact=False "
                "(sampling) or group the tokens into at most 8 features"
            )
        perms = torch.tensor(list(itertools.permutations(range(n_features))))
    else:
        gen = torch.Generator().manual_seed(seed)
        perms = torch.stack([torch.randperm(n_features, generator=gen) for _ in range(n_samples)])
    n_perm = perms.shape[0]
    # Row k of permutation p keeps its first k + 1 features: [P, F, F] keep masks.
    steps = torch.arange(n_features)
    rank = torch.empty_like(perms)
    rank.scatter_(1, perms, steps.expand(n_perm, -1))  # rank[p, f]: where f comes in p
    keep = rank[:, None, :] <= steps[None, :, None]
    values = scorer(token_masks(keep.reshape(-1, n_features), groups)).view(n_perm, n_features)
    prev = torch.cat([torch.full((n_perm, 1), scorer.baseline_value), values[:, :-1]], 1)
    gains = values - prev  # gain of the feature added at each step
    attr = torch.zeros(n_features, dtype=torch.float64)
    attr.index_add_(0, perms.flatten(), gains.flatten())
    attr /= n_perm
    meta = {"n_samples": n_perm, "seed": None if exact else seed, "n_features": n_features}
    if exact:
        meta["permutations"] = math.factorial(n_features)
    return result(scorer, "shapley_value_sampling", attr[groups], meta)
