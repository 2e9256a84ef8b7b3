"""Figures for the explain engine (prints them; not a test).

    .venv/bin/python bench/explain_speed.py                 # everything, torch on 2 threads
    .venv/bin/python bench/explain_speed.py gpt2 --threads 1  # one part (names below)
    .venv/bin/python bench/explain_speed.py ig-memory --passes 16  # IG memory, stopped early

- gpt2: full route graph (all layers, tokens, heads and MLPs) for 64 tokens on a GPT-2-small-
  shaped random model (12 layers, d_model 768, 12 heads). Target: <= 0.5 s (LM-TT: 5.8 s).
- smollm2: route graph for 64 tokens on smollm2-135m vs a plain forward pass in the same run.
  Target: <= 2x the forward.
- long: 1024 tokens on smollm2-135m, in a fresh process: <= 8 s, peak RSS (VmHWM) < 2.5 GiB.
- ig: integrated gradients, 32 steps, 64 tokens on smollm2-135m. Target: < 10 s.
- ig-memory: integrated gradients, 128 steps, 256 tokens on smollm2-135m in a fresh process
  under the default memory budget: points per pass, peak RSS (VmHWM) and RSS after it returns.
  `--passes N` cancels it (should_stop) after N passes: the peak is reached in the first pass,
  so a few passes show it at a fraction of the cost of all 64.
- load: a cached load of smollm2-135m (the converted safetensors), best of 3.
- occlusion: occlusion of every token of a 64-token prompt on smollm2-135m (prefix KV cache
  reused), and Captum's FeatureAblation on the same model, prompt and baseline in the same run.
  Targets: < 5 s and >= 2x faster than Captum (needs `pip install captum`, else ours only).
- kernelshap: KernelSHAP with 200 samples on the same 64 tokens. Target: < 60 s.
- aggregate: head/neuron importance over 100 prompts of ~32 tokens (`--prompts N` for fewer).
  Target: < 2 minutes.
- route-faithfulness: an induction prompt (random tokens, repeated); ablating the route's heads
  must hurt the repeated token far more than ablating as many random heads (both reported).
- patching: head importance by activation patching for a clean/corrupted pair ("The capital of
  France is" / "... Italy is"), and its rank correlation with the ALTI head importance.
Timings are the best of several runs after a warm-up (median alongside); on a shared machine
they are noisy. With other processes busy on the same 2 cores, torch on 2 threads can be several
times slower than on 1 (OpenMP threads wait for each other), so compare --threads 1 and 2.
"""

from __future__ import annotations

import os

# Torch's OpenMP threads spin while they wait for each other; on a machine shared with other
# work that makes 2 threads several times slower than 1. Passive waiting avoids it. Must be set
# before torch starts; export OMP_WAIT_POLICY=ACTIVE to measure the default behaviour.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


class Timing(float):
    """Best time (the float value) with the median of the runs attached."""

    median: float

    def __format__(self, spec: str) -> str:
        return f"{float(self):{spec}} s (median {self.median:.3f})"


def timed(fn: Callable[[], Any], repeat: int = 7) -> tuple[Timing, Any]:
    """Best of `repeat` runs after a warm-up: the run least disturbed by other work."""
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    best = Timing(min(times))
    best.median = statistics.median(times)
    return best, out


def route_graph(model: Any, ids: torch.Tensor, neurons: bool = False) -> Any:
    """Trace + every importance (all layers, tokens, heads, MLPs) + the routes of all tokens."""
    from lmscope.explain import compute_flow, record

    trace = record(model, ids, neurons=neurons)
    flow = compute_flow(model, trace)
    return flow, flow.routes(None, 0.04)


def bench_gpt2() -> None:
    from lmscope.explain import compute_flow, record
    from lmscope.model.config import ModelConfig
    from lmscope.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_ctx=1024)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 64))
    with torch.no_grad():
        t_fwd, _ = timed(lambda: model(ids))
    t_trace, trace = timed(lambda: record(model, ids, neurons=False))
    t_flow, flow = timed(lambda: compute_flow(model, trace))
    t_routes, routes = timed(lambda: flow.routes(None, 0.04))
    t_all, _ = timed(lambda: route_graph(model, ids))
    print("GPT-2-small shape (random weights), 64 tokens")
    print(f"  plain forward            {t_fwd:7.3f}")
    print(f"  trace (record)           {t_trace:7.3f}")
    print(f"  all importances (flow)   {t_flow:7.3f}")
    print(f"  routes of all 64 tokens  {t_routes:7.3f}   ({len(routes.edges)} edges at tau 0.04)")
    print(f"  full route graph total   {t_all:7.3f}   (target <= 0.5 s; LM-TT 5.8 s)")


def _smollm2() -> Any:
    from lmscope.zoo.registry import load

    return load("smollm2-135m")


def _prompt_ids(loaded: Any, n: int) -> torch.Tensor:
    with open(__file__) as f:
        text = f.read() * 4
    ids = loaded.tokenizer.encode(text)[:n]
    assert len(ids) == n
    return torch.tensor([ids])


def bench_smollm2() -> None:
    loaded = _smollm2()
    model = loaded.model
    ids = _prompt_ids(loaded, 64)
    with torch.no_grad():
        t_fwd, _ = timed(lambda: model(ids))
    t_graph, _ = timed(lambda: route_graph(model, ids))
    print("smollm2-135m, 64 tokens")
    print(f"  plain forward            {t_fwd:7.3f}")
    print(
        f"  full route graph         {t_graph:7.3f}  = {t_graph / t_fwd:.2f}x forward (target <= 2x)"
    )


def _in_child(name: str, *args: str) -> None:
    """Run the `name` workload in a fresh process so its peak RSS is its own; print its output."""
    threads = ["--threads", str(torch.get_num_threads())]
    out = subprocess.run(
        [sys.executable, __file__, name, *threads, *args], capture_output=True, text=True
    )
    print(out.stdout, end="")
    if out.returncode:
        print(out.stderr)


def bench_long() -> None:
    _in_child("long-child")


def bench_long_child() -> None:
    from lmscope.explain import explain

    loaded = _smollm2()
    ids = _prompt_ids(loaded, 1024)
    start, cpu = time.perf_counter(), time.process_time()
    ex = explain(loaded, ids[0], tau=0.04, saliency=False)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print("smollm2-135m, 1024 tokens (fresh process; explain(): trace, flow, routes, lens, heads)")
    print(
        f"  total                    {total:7.1f} s  { {k: round(v, 2) for k, v in ex.timings.items()} }"
        "  (target <= 8 s)"
    )
    print(
        f"  CPU time                 {cpu:7.1f} s  (all threads; wall on an idle machine is lower)"
    )
    print(f"  peak RSS                 {peak_gb:7.2f} GiB  (target < 2.5 GiB)")
    print(f"  route of the last token  {len(ex.routes.nodes)} nodes, {len(ex.routes.edges)} edges")


def bench_ig() -> None:
    from lmscope.explain import integrated_gradients

    loaded = _smollm2()
    ids = _prompt_ids(loaded, 64)
    t_ig, attr = timed(lambda: integrated_gradients(loaded.model, ids, n_steps=32), repeat=2)
    print("smollm2-135m, integrated gradients, 32 steps, 64 tokens")
    print(f"  time                     {t_ig:7.2f}   (target < 10 s)")
    print(f"  completeness gap         {attr.meta['delta']:+.4f} (score {attr.meta['value']:.3f})")


def _status_gib(key: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status, in GiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def bench_ig_memory() -> None:
    _in_child("ig-memory-child", *(["--passes", str(PASSES)] if PASSES else []))


def bench_ig_memory_child() -> None:
    from lmscope.explain import ExplanationCancelled, integrated_gradients
    from lmscope.explain.budget import DEFAULT_MEMORY_BUDGET, points_per_batch

    loaded = _smollm2()
    model = loaded.model
    ids = _prompt_ids(loaded, 256)
    batch = points_per_batch(model.cfg, 256, model.dtype)
    with torch.no_grad():
        model(ids)  # every weight paged in before the baseline
    base, load_peak = _status_gib("VmRSS"), _status_gib("VmHWM")
    try:  # reset the high-water mark so the peak below is the explanation's own (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    checks: list[float] = []

    def should_stop() -> bool:  # the first check comes before the first pass
        checks.append(time.perf_counter())
        return bool(PASSES) and len(checks) > PASSES + 1

    start = time.perf_counter()
    try:
        integrated_gradients(model, ids, n_steps=128, should_stop=should_stop)
        ran = "all 128 steps"
    except ExplanationCancelled:
        ran = f"cancelled after {PASSES} passes"
    total = time.perf_counter() - start
    passes = len(checks) - (2 if PASSES and len(checks) > PASSES + 1 else 1)  # checks, not passes
    print(f"smollm2-135m, integrated gradients, 128 steps, 256 tokens, fresh process ({ran})")
    print(
        f"  budget                   {DEFAULT_MEMORY_BUDGET / 1024**3:.2f} GiB -> {batch} points per pass"
    )
    print(f"  RSS before (model in)    {base:7.2f} GiB  (peak while loading {load_peak:.2f} GiB)")
    print(f"  peak RSS (VmHWM)         {_status_gib('VmHWM'):7.2f} GiB")
    print(f"  RSS after it returned    {_status_gib('VmRSS'):7.2f} GiB")
    print(f"  time                     {total:7.1f} s ({total / max(passes, 1):.2f} s per pass)")


def bench_load() -> None:
    from lmscope.zoo.registry import load

    _smollm2()  # converts on the first use
    t_load, _ = timed(lambda: load("smollm2-135m"), repeat=3)
    print(f"smollm2-135m cached load     {t_load:7.3f}")


def bench_occlusion() -> None:
    from lmscope.explain.perturb import occlusion

    loaded = _smollm2()
    model = loaded.model
    ids = _prompt_ids(loaded, 64)
    t_ours, attr = timed(lambda: occlusion(model, ids), repeat=REPEAT)
    print("smollm2-135m, occlusion of each of 64 tokens (window 1)")
    print(f"  ours (prefix KV reused)  {t_ours:7.2f}   (target < 5 s)")
    print(f"  positions run            {attr.meta['positions_run']} (full forwards: {65 * 64})")
    try:
        from captum.attr import FeatureAblation
    except ImportError:
        print("  Captum FeatureAblation  not installed (pip install captum)")
        return

    def score(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x, last_only=True)[:, -1, attr.target]

    ablation = FeatureAblation(score)
    t_captum, theirs = timed(
        lambda: ablation.attribute(ids, baselines=attr.meta["baseline"]), repeat=REPEAT
    )
    gap = float((torch.tensor(attr.scores) - theirs[0].double()).abs().max())
    print(
        f"  Captum FeatureAblation   {t_captum:7.2f}   = {t_captum / t_ours:.2f}x ours (target >= 2x)"
    )
    print(f"  max |ours - Captum|      {gap:.2e}")


def bench_kernelshap() -> None:
    from lmscope.explain.perturb_sampling import kernel_shap

    loaded = _smollm2()
    ids = _prompt_ids(loaded, 64)
    t, attr = timed(lambda: kernel_shap(loaded.model, ids, n_samples=200), repeat=1)
    print("smollm2-135m, KernelSHAP, 200 samples, 64 tokens")
    print(f"  time                     {t:7.2f}   (target < 60 s)")
    print(f"  positions run            {attr.meta['positions_run']} (full forwards: {200 * 64})")


def bench_aggregate() -> None:
    from lmscope.explain.aggregate import aggregate

    loaded = _smollm2()
    text = _prompt_ids(loaded, 32 * PROMPTS)[0].tolist()
    prompts = [text[i * 32 : (i + 1) * 32] for i in range(PROMPTS)]
    start = time.perf_counter()
    stats = aggregate(loaded.model, prompts)
    total = time.perf_counter() - start
    print(f"smollm2-135m, aggregation over {PROMPTS} prompts of 32 tokens")
    print(
        f"  time                     {total:7.2f} s  ({total / PROMPTS:.2f} s per prompt; "
        "target < 120 s for 100)"
    )
    print(f"  top heads                {[h['head'] for h in stats.top_heads(5)]}")


def bench_route_faithfulness() -> None:
    from lmscope.explain import compute_flow, record
    from lmscope.explain.causal import route_faithfulness

    loaded = _smollm2()
    model = loaded.model
    g = torch.Generator().manual_seed(0)
    block = torch.randint(1000, 20000, (40,), generator=g)  # as tests/test_explain_slow.py
    ids = torch.cat([block, block[:20]])  # induction: the next token is block[20]
    routes = compute_flow(model, record(model, ids)).routes(-1, 0.04)
    start = time.perf_counter()
    result = route_faithfulness(model, ids, routes, target=int(block[20]), n_random=10, mlps=False)
    took = time.perf_counter() - start
    print("smollm2-135m, induction prompt (40 random tokens, then the first 20 again)")
    print(f"  target log-prob          {result.clean_logprob:.3f}")
    print(f"  route heads ablated      {len(result.components)}: drop {result.route_drop:.3f}")
    print(
        f"  as many random heads     mean drop {result.random_drop:.3f} "
        f"(max {max(result.random_drops):.3f}, 10 draws)"
    )
    print(f"  score (route - random)   {result.score:.3f}   ({took:.1f} s)")


def bench_patching() -> None:
    from lmscope.explain import compute_flow, record
    from lmscope.explain.causal import head_agreement, patching_head_importance
    from lmscope.explain.heads import head_importance

    loaded = _smollm2()
    model, tok = loaded.model, loaded.tokenizer
    clean = tok.encode("The capital of France is")
    corrupt = tok.encode("The capital of Italy is")
    start = time.perf_counter()
    result = patching_head_importance(model, clean, corrupt)
    took = time.perf_counter() - start
    alti = head_importance(compute_flow(model, record(model, clean)), -1)
    rho = head_agreement(result, alti)
    top = result.restored.flatten().abs().topk(5).indices.tolist()
    n_heads = result.restored.shape[1]
    print(
        f"smollm2-135m, patching every head, {len(clean)} tokens, target {tok.decode([result.target])!r}"
    )
    print(f"  time                     {took:7.2f} s")
    print(f"  top heads (restored)     {[f'L{i // n_heads}H{i % n_heads}' for i in top]}")
    print(f"  rank correlation w/ ALTI {rho:.3f}")


PARTS = {
    "gpt2": bench_gpt2,
    "smollm2": bench_smollm2,
    "long": bench_long,
    "ig": bench_ig,
    "long-child": bench_long_child,
    "ig-memory": bench_ig_memory,
    "ig-memory-child": bench_ig_memory_child,
    "load": bench_load,
    "occlusion": bench_occlusion,
    "kernelshap": bench_kernelshap,
    "aggregate": bench_aggregate,
    "route-faithfulness": bench_route_faithfulness,
    "patching": bench_patching,
}
PARTS_DEFAULT = [p for p in PARTS if not p.endswith("-child")]
PASSES = 0  # --passes N: stop integrated gradients after N passes (ig-memory)
PROMPTS = 100  # --prompts N: prompts aggregated (aggregate)
REPEAT = 3  # --repeat N: timed runs of occlusion and Captum (after a warm-up)

if __name__ == "__main__":
    args = sys.argv[1:]
    threads = 2
    if "--threads" in args:
        at = args.index("--threads")
        threads = int(args[at + 1])
        del args[at : at + 2]
    if "--passes" in args:
        at = args.index("--passes")
        PASSES = int(args[at + 1])
        del args[at : at + 2]
    for flag in ("--prompts", "--repeat"):
        if flag in args:
            at = args.index(flag)
            globals()[flag[2:].upper()] = int(args[at + 1])
            del args[at : at + 2]
    torch.set_num_threads(threads)
    if not (len(args) == 1 and args[0].endswith("-child")):
        print(f"torch threads: {threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    for part in args or [*PARTS_DEFAULT]:
        PARTS[part]()
