"""LIME and KernelSHAP over input tokens: a weighted linear surrogate of the score, fitted on
random keep/remove masks of the features (tokens, or the groups given by `features`).

Sampling is seeded (a torch.Generator seeded with `seed`) and draws exactly what Captum 0.9 draws
from the global generator after torch.manual_seed(seed):
- LIME: each sample keeps every feature with probability 1/2 (torch.bernoulli); its weight is
  exp(-d^2 / (2 kernel_width^2)) with d the cosine distance between the sample and the all-ones
  mask (the interpretable space, so the weight does not depend on token ids);
- KernelSHAP: the all-ones and all-zeros masks first (weight 1e6, standing in for the infinite
  Shapley-kernel weight), then for each sample a size k ~ (F - 1) / (k (F - k)) and k features
  with the largest standard normal draws, weight 1 (the sampling itself carries the kernel).
The surrogate is a weighted least-squares fit with an intercept (ridge penalty `alpha` for LIME,
0 by default; Captum's LIME defaults to a Lasso instead), solved in float64; the attributions are
its coefficients. Every sample is scored by `MaskScorer` (batched, prefix KV cache reused).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lmscope.explain.budget import ShouldStop
from lmscope.explain.errors import ExplainInputError
from lmscope.explain.perturb import (
    Tokens,
    check_count,
    feature_groups,
    make_scorer,
    result,
    token_masks,
)
from lmscope.explain.perturb_eval import DEFAULT_BATCH
from lmscope.explain.saliency import Attribution, Score
from lmscope.model.transformer import Transformer

INF_WEIGHT = 1_000_000.0


def weighted_linear_fit(
    x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float = 0.0
) -> torch.Tensor:
    """Coefficients of min sum_i w_i (y_i - b - x_i . c)^2 + alpha |c|^2 (intercept b free).

    Centred by the weighted means, then a least-squares solve of the sqrt(w)-scaled system
    (minimum-norm where the samples do not determine every coefficient).
    """
    x, y, w = x.double(), y.double(), weights.double()
    x_c = x - (w @ x) / w.sum()
    y_c = y - (w @ y) / w.sum()
    root = w.sqrt()[:, None]
    a, b = x_c * root, y_c[:, None] * root
    if alpha > 0:
        n = x.shape[1]
        a = torch.cat([a, math.sqrt(alpha) * torch.eye(n, dtype=a.dtype)])
        b = torch.cat([b, torch.zeros(n, 1, dtype=b.dtype)])
    return torch.linalg.lstsq(a, b, driver="gelsd").solution[:, 0]


def lime(
    model: Transformer,
    tokens: Tokens,
    position: int = -1,
    target: int | None = None,
    foil: int | None = None,
    score: Score = "logit",
    *,
    n_samples: int = 200,
    seed: int = 0,
    kernel_width: float = 0.25,
    alpha: float = 0.0,
    baseline: int | None = None,
    features: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH,
    should_stop: ShouldStop | None = None,
) -> Attribution:
    """LIME with Bernoulli(1/2) masks and an exponential cosine kernel (see module docstring)."""
    check_count(n_samples, "n_samples")
    if not kernel_width > 0 or not alpha >= 0:
        raise ExplainInputError(
            f"kernel_width must be > 0 and alpha >= 0, got {kernel_width} and {alpha}"
        )
    scorer = make_scorer(
        model, tokens, position, target, foil, score, baseline, batch_size, should_stop
    )
    groups = feature_groups(features, scorer.n_tokens)
    n_features = int(groups.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    half = torch.full((1, n_features), 0.5)
    keep = torch.cat([torch.bernoulli(half, generator=gen) for _ in range(n_samples)])
    kept = keep.sum(1).double()
    cos = kept / (math.sqrt(n_features) * kept.sqrt()).clamp(min=1e-8)
    weights = torch.exp(-((1.0 - cos) ** 2) / (2 * kernel_width**2))
    values = scorer(token_masks(keep, groups))
    coef = weighted_linear_fit(keep, values, weights, alpha)
    meta = {
        "n_samples": n_samples,
        "seed": seed,
        "kernel_width": kernel_width,
        "alpha": alpha,
        "n_features": n_features,
    }
    return result(scorer, "lime", coef[groups], meta)


def kernel_shap(
    model: Transformer,
    tokens: Tokens,
    position: int = -1,
    target: int | None = None,
    foil: int | None = None,
    score: Score = "logit",
    *,
    n_samples: int = 200,
    seed: int = 0,
    baseline: int | None = None,
    features: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH,
    should_stop: ShouldStop | None = None,
) -> Attribution:
    """KernelSHAP with Shapley-kernel sampling (see module docstring); n_samples counts the two
    end points, so at least 3 are needed for one random coalition."""
    check_count(n_samples, "n_samples")
    scorer = make_scorer(
        model, tokens, position, target, foil, score, baseline, batch_size, should_stop
    )
    groups = feature_groups(features, scorer.n_tokens)
    n_features = int(groups.max()) + 1
    if n_features < 2:
        raise ExplainInputError("KernelSHAP needs at least 2 features (tokens or groups)")
    keep = shap_samples(n_features, n_samples, seed)
    weights = torch.ones(n_samples, dtype=torch.float64)
    weights[:2] = INF_WEIGHT
    values = scorer(token_masks(keep, groups))
    coef = weighted_linear_fit(keep, values, weights)
    meta = {"n_samples": n_samples, "seed": seed, "n_features": n_features}
    return result(scorer, "kernel_shap", coef[groups], meta)


def shap_samples(n_features: int, n_samples: int, seed: int) -> torch.Tensor:
    """[n_samples, F] float masks: all ones, all zeros, then Shapley-kernel coalitions."""
    k = torch.arange(n_features, dtype=torch.float32)  # float32, as Captum builds it
    denom = k * (n_features - k)
    denom[0] = 1.0
    probs = torch.tensor(n_features - 1) / denom
    probs[0] = 0.0
    probs = probs / probs.sum(-1, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.ones(1, n_features), torch.zeros(1, n_features)]
    for _ in range(max(0, n_samples - 2)):
        size = int(torch.multinomial(probs[None], 1, True, generator=gen))
        draws = torch.randn(1, n_features, generator=gen)
        threshold = torch.kthvalue(draws, n_features - size).values.item()
        rows.append((draws > threshold).float())
    return torch.cat(rows)[:n_samples]
