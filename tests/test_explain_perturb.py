"""Perturbation attributions against Captum 0.9 (the oracle: same masks, seeds and baseline) and
against exact Shapley values computed here by brute force; the prefix-cached scorer against
full forwards; faithfulness curves and rank correlation against direct computations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmscope.explain.errors import ExplainInputError
from lmscope.explain.faithfulness import agreement, deletion_insertion, rank_correlation
from lmscope.explain.perturb import feature_ablation, occlusion, shapley_value_sampling
from lmscope.explain.perturb_eval import MaskScorer
from lmscope.explain.perturb_sampling import kernel_shap, lime
from test_explain_support import FAMILIES, tiny_model, tokens


@pytest.fixture(scope="module")
def captum_attr():  # type: ignore[no-untyped-def]
    """Captum 0.9, the oracle (a test-only dependency); only its comparisons skip without it."""
    return pytest.importorskip("captum.attr")


T = 9
TARGET = 5
BASE = 7
TOL = 1e-5


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa", "neox_parallel"])
def model(request):  # type: ignore[no-untyped-def]
    return tiny_model(request.param, n_layers=2)


def forward_score(model):  # type: ignore[no-untyped-def]
    """The score as Captum sees it: a full forward of every row (no cache), target's logit."""

    def f(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(ids)[:, -1, TARGET].double()

    return f


def ids() -> torch.Tensor:
    return tokens(T)[None]


def close(ours: list[float], theirs: torch.Tensor, tol: float = TOL) -> None:
    got = torch.tensor(ours, dtype=torch.float64)
    want = theirs.double().flatten()
    assert torch.allclose(got, want, atol=tol, rtol=0), (got - want).abs().max()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefix_cached_scores_equal_full_forwards(family: str) -> None:
    """Every family (learned, sinusoidal and rotary positions; MHA, GQA, MQA; parallel)."""
    model = tiny_model(family, n_layers=2)
    scorer = MaskScorer(model, ids(), target=TARGET, baseline=BASE, batch_size=3)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(20, T, generator=g) > 0.3
    masks[0] = True  # the prompt itself
    masks[1] = False  # the all-baseline input
    masks[2, :-1] = True  # only the last token changed: one position to run
    masks[2, -1] = False
    before = scorer.n_positions
    got = scorer(masks)
    want = forward_score(model)(torch.where(masks, ids(), BASE))
    assert torch.allclose(got, want, atol=TOL, rtol=0)
    assert scorer.n_positions - before < 18 * T  # prefixes were reused


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_occlusion_rows_equal_full_forwards(family: str) -> None:
    """Occluding one token at a time: the suffixes run packed side by side (T - i and i + 1
    positions share a batch row), T(T+1)/2 positions in all, and every score is still the full
    forward's."""
    model = tiny_model(family, n_layers=2)
    scorer = MaskScorer(model, ids(), target=TARGET, baseline=BASE, batch_size=2)
    masks = ~torch.eye(T, dtype=torch.bool)
    before = scorer.n_positions
    got = scorer(masks)
    want = forward_score(model)(torch.where(masks, ids(), BASE))
    assert torch.allclose(got, want, atol=TOL, rtol=0)
    # Each row runs from its first difference from the prompt or the all-baseline row (row 0
    # shares its first token with the latter): 8 alone, then (8, 1), (7, 2), (6, 3), (5, 4).
    assert BASE not in ids()[0].tolist()
    need = (T - 1) + sum(T - i for i in range(1, T))
    assert scorer.n_positions - before == need  # no padding


def test_packed_rows_on_the_prepacked_path() -> None:
    """The packed mask and `at` also go through the prepacked inference path (float32 rounding
    apart, the reference path's scores)."""
    model = tiny_model("llama_gqa", n_layers=2)
    want = forward_score(model)(torch.where(~torch.eye(T, dtype=torch.bool), ids(), BASE))
    if not model.enable_prepacked():
        pytest.skip("no oneDNN here")
    got = occlusion(model, ids(), target=TARGET, baseline=BASE, batch_size=3)
    model.disable_prepacked()
    close(got.scores, got.meta["value"] - want, tol=1e-4)  # score(prompt) - score(occluded)


def test_model_unembeds_only_the_positions_asked_for() -> None:
    model = tiny_model("llama_gqa", n_layers=2)
    at = torch.tensor([[0, 4, 8], [3, 3, 1]])
    batch = torch.stack([ids()[0], ids()[0].flip(0)])
    with torch.no_grad():
        full = model(batch)
        got = model(batch, at=at)
    want = torch.stack([full[b, at[b]] for b in range(2)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]  # a 4-d mask is used as given
    with torch.no_grad():
        torch.testing.assert_close(model(batch, attention_mask=causal), full, atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match="a 4-d mask must be"):
            model(batch, attention_mask=causal[..., 1:])


def test_feature_ablation_matches_captum(model, captum_attr) -> None:  # type: ignore[no-untyped-def]
    fa = captum_attr.FeatureAblation(forward_score(model))
    want = fa.attribute(ids(), baselines=BASE)
    close(feature_ablation(model, ids(), target=TARGET, baseline=BASE, batch_size=4).scores, want)
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])
    want = fa.attribute(ids(), baselines=BASE, feature_mask=groups[None])
    got = feature_ablation(model, ids(), target=TARGET, baseline=BASE, features=groups)
    close(got.scores, want)


@pytest.mark.parametrize(("window", "stride"), [(1, 1), (3, 2), (4, 1)])
def test_occlusion_matches_captum(model, captum_attr, window: int, stride: int) -> None:  # type: ignore[no-untyped-def]
    occ = captum_attr.Occlusion(forward_score(model))
    want = occ.attribute(ids(), sliding_window_shapes=(window,), strides=(stride,), baselines=BASE)
    got = occlusion(model, ids(), target=TARGET, baseline=BASE, window=window, stride=stride)
    close(got.scores, want)
    assert got.method == "occlusion" and got.meta["window"] == window


def test_shapley_value_sampling_matches_captum(model, captum_attr) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    want = captum_attr.ShapleyValueSampling(forward_score(model)).attribute(
        ids(), baselines=BASE, n_samples=6
    )
    got = shapley_value_sampling(model, ids(), target=TARGET, baseline=BASE, n_samples=6, seed=3)
    close(got.scores, want)


def brute_force_shapley(model, groups: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Exact Shapley values by the subset formula, one full forward per coalition."""
    f = forward_score(model)
    n = int(groups.max()) + 1
    value: dict[frozenset[int], float] = {}
    for k in range(n + 1):
        for subset in itertools.combinations(range(n), k):
            keep = torch.isin(groups, torch.tensor(subset, dtype=torch.long))
            value[frozenset(subset)] = float(f(torch.where(keep[None], ids(), BASE))[0])
    phi = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        for s, v in value.items():
            if i in s:
                continue
            weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
            phi[i] += weight * (value[s | {i}] - v)
    return phi[groups]


def test_exact_shapley_equals_brute_force(model) -> None:  # type: ignore[no-untyped-def]
    groups = torch.tensor([0, 1, 1, 2, 3, 3, 4, 5, 5])
    got = shapley_value_sampling(
        model, ids(), target=TARGET, baseline=BASE, features=groups, exact=True
    )
    close(got.scores, brute_force_shapley(model, groups))
    # Efficiency: the values sum (per feature) to score(prompt) - score(all baseline).
    per_feature = [got.scores[i] for i in (0, 1, 3, 4, 6, 7)]  # one token of each group
    assert math.isclose(
        sum(per_feature), got.meta["value"] - got.meta["baseline_value"], abs_tol=TOL
    )


def test_kernel_shap_matches_captum(model, captum_attr) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(5)
    want = captum_attr.KernelShap(forward_score(model)).attribute(
        ids(), baselines=BASE, n_samples=40
    )
    got = kernel_shap(model, ids(), target=TARGET, baseline=BASE, n_samples=40, seed=5)
    close(got.scores, want)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_lime_matches_captum(model, captum_attr, alpha: float) -> None:  # type: ignore[no-untyped-def]
    from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge

    width = 0.4

    def similarity(_orig, _pert, sample: torch.Tensor, **_kw) -> float:  # type: ignore[no-untyped-def]
        z = sample.double().flatten()
        cos = float(z.sum()) / max(math.sqrt(z.numel() * float(z.sum())), 1e-8)
        return math.exp(-((1 - cos) ** 2) / (2 * width**2))

    surrogate = SkLearnRidge(alpha=alpha) if alpha else SkLearnLinearRegression()
    explainer = captum_attr.Lime(
        forward_score(model), interpretable_model=surrogate, similarity_func=similarity
    )
    torch.manual_seed(11)
    want = explainer.attribute(ids(), baselines=BASE, n_samples=60)
    got = lime(
        model,
        ids(),
        target=TARGET,
        baseline=BASE,
        n_samples=60,
        seed=11,
        kernel_width=width,
        alpha=alpha,
    )
    close(got.scores, want)


def test_rank_correlation_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (30,), generator=g).double()  # many ties
    b = a + torch.randn(30, generator=g)
    assert math.isclose(rank_correlation(a, b), stats.spearmanr(a, b).statistic, abs_tol=1e-12)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_deletion_insertion_curves(model) -> None:  # type: ignore[no-untyped-def]
    attr = occlusion(model, ids(), target=TARGET, baseline=BASE)
    faith = deletion_insertion(model, attr)
    f = forward_score(model)
    value, base = attr.meta["value"], attr.meta["baseline_value"]
    order = faith.order
    assert sorted(order) == list(range(T))
    assert [attr.scores[i] for i in order] == sorted(attr.scores, reverse=True)
    for k in (0, 3, T):
        keep = torch.ones(T, dtype=torch.bool)
        keep[order[:k]] = False
        direct = float(f(torch.where(keep[None], ids(), BASE))[0])
        assert faith.deletion[k] == pytest.approx((direct - base) / (value - base), abs=1e-4)
        direct = float(f(torch.where(~keep[None], ids(), BASE))[0])
        assert faith.insertion[k] == pytest.approx((direct - base) / (value - base), abs=1e-4)
    assert faith.deletion[0] == pytest.approx(1.0) and faith.deletion[-1] == pytest.approx(0.0)
    curve = torch.tensor(faith.deletion)
    assert faith.deletion_auc == pytest.approx(float(torch.trapezoid(curve, dx=1 / T)))
    table = agreement([attr, feature_ablation(model, ids(), target=TARGET, baseline=BASE)])
    assert table["occlusion"]["feature_ablation"] == pytest.approx(1.0)  # window 1: the same


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: lime(m, ids(), n_samples=0), "n_samples must be a positive integer"),
        (lambda m: kernel_shap(m, ids(), n_samples=0), "n_samples must be a positive integer"),
        (lambda m: shapley_value_sampling(m, ids(), n_samples=0), "n_samples"),
        (lambda m: occlusion(m, ids(), window=0), "window must be a positive integer"),
        (lambda m: occlusion(m, ids(), window=T + 1), "window of 10 tokens is longer"),
        (lambda m: feature_ablation(m, ids(), baseline=10_000), "baseline token id 10000"),
        (lambda m: feature_ablation(m, ids(), features=[0, 1]), "one group id per token"),
        (lambda m: feature_ablation(m, ids(), batch_size=0), "batch_size must be"),
        (lambda m: feature_ablation(m, [], batch_size=1), "the prompt is empty"),
    ],
)
def test_bad_input_is_one_clear_error(model, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExplainInputError, match=message):
        call(model)


def test_packing_covers_every_row_once_within_capacity() -> None:
    from lmscope.explain.perturb_eval import pack

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 65, (100,), generator=g).tolist()
    bins = pack(lengths, 64, most=3)
    assert sorted(i for b in bins for i in b) == list(range(100))
    fills = [sum(lengths[i] for i in b) for b in bins]
    assert all(f <= 64 for f in fills) and all(1 <= len(b) <= 3 for b in bins)
    assert fills == sorted(fills, reverse=True)
    # Occluding each of 64 tokens: suffixes 1..64 pair up into 33 rows (64, 63 + 1, ... 32).
    occl = pack(list(range(1, 65)), 64)
    assert len(occl) == 33 and all(sum(j + 1 for j in b) == 64 for b in occl[:-1])
    assert pack([], 64) == []


def test_batches_bound_rows_and_the_kv_cache() -> None:
    from lmscope.explain.perturb_eval import batches

    g = torch.Generator().manual_seed(1)
    shapes = [(int(p), int(n)) for p, n in torch.randint(0, 64, (50, 2), generator=g) + 1]
    spans = batches(shapes, 6, 400)
    assert spans[0][0] == 0 and spans[-1][1] == 50
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous, no overlap
    for lo, hi in spans:
        part = shapes[lo:hi]
        assert 1 <= len(part) <= 6
        cache = len(part) * (max(p for p, _ in part) + max(n for _, n in part))
        assert len(part) == 1 or cache <= 400
        if hi < 50 and len(part) < 6:  # closed only when the next row would break a bound
            more = [*part, shapes[hi]]
            assert len(more) * (max(p for p, _ in more) + max(n for _, n in more)) > 400
    assert batches([(500, 500)], 6, 400) == [(0, 1)]  # one row even over the budget
    assert batches([], 6, 400) == []


def test_long_prompts_get_fewer_rows_per_batch() -> None:
    from lmscope.explain.perturb_eval import TOKENS_PER_BATCH

    model = tiny_model("gpt2", n_layers=1, n_ctx=256)
    assert MaskScorer(model, tokens(8), batch_size=16).batch_size == 16
    long = MaskScorer(model, torch.arange(200) % 64, batch_size=64)
    assert long.batch_size == TOKENS_PER_BATCH // 200 < 64


def test_faithfulness_of_gradient_methods(model) -> None:  # type: ignore[no-untyped-def]
    """The same scores apply to the gradient methods' attributions (their baseline: the
    default token); attention rollout names no target and is refused."""
    from lmscope.explain import TraceView, attention_rollout, gradient_x_input, record

    grad = gradient_x_input(model, ids()[0], target=TARGET)
    faith = deletion_insertion(model, grad, baseline=BASE)
    assert faith.method == "gradient_x_input" and len(faith.deletion) == T + 1
    assert faith.deletion[0] == pytest.approx(1.0) and faith.insertion[-1] == pytest.approx(1.0)
    table = agreement([grad, occlusion(model, ids(), target=TARGET, baseline=BASE)])
    assert -1.0 <= table["gradient_x_input"]["occlusion"] <= 1.0
    rollout = attention_rollout(TraceView(model, record(model, ids()[0])))
    with pytest.raises(ExplainInputError, match="names no target token"):
        deletion_insertion(model, rollout)
