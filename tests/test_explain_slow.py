"""The explain engine on the real smollm2-135m (slow: run with -m slow)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from lmscope.explain import TraceView, compute_flow, lens_logits, record

N = 40  # length of the random block; the prompt is the block twice


@pytest.fixture(scope="module")
def repeated(default_model):  # type: ignore[no-untyped-def]
    model = default_model.model
    g = torch.Generator().manual_seed(0)
    block = torch.randint(1000, 20000, (N,), generator=g)
    ids = torch.cat([block, block])[None]
    trace = record(model, ids, neurons=False)
    return model, ids, trace, compute_flow(model, trace)


@pytest.mark.slow
def test_repeated_tokens_are_predicted_by_induction(repeated) -> None:  # type: ignore[no-untyped-def]
    """In the second repeat the model copies: its loss drops far below the first half's."""
    _, ids, trace, _ = repeated
    logp = torch.log_softmax(trace.logits[0].float(), -1)
    nll = -logp[:-1].gather(-1, ids[0, 1:, None])[:, 0]
    first, second = float(nll[: N - 1].mean()), float(nll[N:].mean())
    # Found: about 13.4 nats on the random first half, about 2.3 on the repeat.
    assert second < 0.3 * first, (first, second)


@pytest.mark.slow
def test_routes_reach_the_token_after_the_first_occurrence(repeated) -> None:  # type: ignore[no-untyped-def]
    """For position N + k (token t_k again), the route at the default tau holds an attention edge
    from position k + 1 (right after t_k's first occurrence) straight into N + k."""
    _, _, _, flow = repeated
    missing = []
    for k in range(1, N - 1):
        routes = flow.routes(N + k, 0.04)
        sources = {
            int(e.source.rsplit("/", 1)[1])
            for e in routes.edges
            if e.kind == "attention" and e.target.endswith(f"/{N + k}")
        }
        if k + 1 not in sources:
            missing.append(k)
    # Found: every position, mostly through L17H3, L18H6, L20H6 and L23H2.
    assert not missing, missing


@pytest.mark.slow
def test_lens_of_the_last_residual_is_the_logits(repeated) -> None:  # type: ignore[no-untyped-def]
    model, _, trace, _ = repeated
    view = TraceView(model, trace)
    last = f"L{model.cfg.n_layers - 1}/resid_post"
    assert torch.equal(lens_logits(model, view, last), trace.logits[0].float())


@pytest.mark.slow
def test_1024_tokens_fit_in_4_gb() -> None:
    """A 1024-token prompt, the whole explain() pipeline, in a fresh process: peak RSS < 4 GB."""
    script = textwrap.dedent(
        """
        import resource, torch
        from lmscope.zoo.registry import load
        from lmscope.explain import explain
        loaded = load("smollm2-135m")
        ids = torch.randint(1000, 20000, (1024,), generator=torch.Generator().manual_seed(0))
        ex = explain(loaded, ids, saliency=False)
        assert ex.routes.nodes
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=1800, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    peak_gb = float(out.stdout.strip().splitlines()[-1])
    assert peak_gb < 4.0, peak_gb


@pytest.mark.slow
def test_integrated_gradients_stays_in_its_memory_budget_and_gives_it_back() -> None:
    """IG (128 steps) on 256 tokens of smollm2-135m, stopped after 3 passes, in a fresh process:
    what it adds at its peak stays under the budget, and what it keeps after is small."""
    script = textwrap.dedent(
        """
        import torch
        from lmscope.zoo.registry import load
        from lmscope.explain import ExplanationCancelled, integrated_gradients
        from lmscope.explain.budget import DEFAULT_MEMORY_BUDGET

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

        loaded = load("smollm2-135m")
        ids = torch.randint(1000, 20000, (256,), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            loaded.model(ids[None])  # every weight paged in before the baseline
        base = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak
        calls = []
        try:
            integrated_gradients(
                loaded.model, ids, n_steps=128, should_stop=lambda: calls.append(1) or len(calls) > 4
            )
        except ExplanationCancelled:
            pass
        print(status("VmHWM") - base, status("VmRSS") - base, DEFAULT_MEMORY_BUDGET)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=1800, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    added_peak, kept, budget = map(int, out.stdout.split())
    assert added_peak < budget, (added_peak, budget)
    assert kept < budget // 4, (kept, budget)
