"""Generation speed of lmscope's model against transformers' LlamaForCausalLM, same weights.

    .venv/bin/python bench/model_speed.py                # full run (a few minutes)
    .venv/bin/python bench/model_speed.py --quick        # short run
    .venv/bin/python bench/model_speed.py --threads 1 2  # one table per torch thread count

On smollm2-135m (loaded through the registry), in one process:
- prompt forward (prefill into a KV cache, last-position logits) of 64 and 512 tokens;
- single-stream greedy decoding with a KV cache, fp32 and bf16, tokens/s;
- batch-8 greedy decoding, aggregate tokens/s.
lmscope decodes through `lmscope.engine.generate_batch`, i.e. the one scheduler (slot KV cache,
grouped prefill) that the server runs too.
"lmscope" is the model as loaded (reference path); "lmscope+fast" after
`optimize_for_decoding`, which prepacks the same float32 weights for oneDNN (see
`lmscope.model.prepacked`). Decode speed is measured as
(N - 1) / (time(N new tokens) - time(1 new token)), so the prompt's prefill cancels out.
Every figure is the best of several runs (the least disturbed by other work); wall-clock time
on a shared machine is noisy, so the CPU time of this process is printed next to it.
Targets: lmscope+fast single stream >= 1.5x transformers, batch-8 aggregate >= 4x single.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
FALLBACK_TEXT = "The quick brown fox jumps over the lazy dog. " * 200


@dataclass
class Timing:
    wall: float
    cpu: float


def best_of(fn: Callable[[], Any], repeat: int) -> Timing:
    fn()  # warm-up
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return Timing(wall, cpu)


def rate(tokens: int, long: Timing, short: Timing) -> Timing:
    """tokens per second from the difference of two runs (prefill and first token cancel)."""
    return Timing(
        tokens / max(long.wall - short.wall, 1e-9), tokens / max(long.cpu - short.cpu, 1e-9)
    )


def corpus_ids(tokenizer: Any, n_tokens: int, count: int) -> list[list[int]]:
    text = SHARED_TEXT.read_text() if SHARED_TEXT.is_file() else FALLBACK_TEXT
    ids = tokenizer.encode(text[: 200 * n_tokens * count])
    return [ids[i * n_tokens : (i + 1) * n_tokens] for i in range(count)]


def hf_twin(model: Any) -> Any:
    """transformers' LlamaForCausalLM holding the same weights as our model."""
    from transformers import LlamaForCausalLM

    from lmscope.zoo.hf import to_hf_state_dict

    config, state = to_hf_state_dict(model)
    hf = LlamaForCausalLM(config).to(model.dtype).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    hf.generation_config.eos_token_id = None  # decode exactly the asked-for number of tokens
    return hf


def check_same_logits(ours: Any, hf: Any, ids: list[int]) -> float:
    with torch.inference_mode():
        tokens = torch.tensor([ids])
        return float((ours(tokens) - hf(tokens).logits).abs().max())


# ---- the three measurements ------------------------------------------------------------------


def prefill_ours(model: Any, ids: list[int]) -> Callable[[], Any]:
    tokens = torch.tensor([ids])

    def run() -> Any:
        with torch.inference_mode():
            return model(tokens, cache=model.new_cache(1, len(ids) + 1), last_only=True)

    return run


def prefill_hf(hf: Any, ids: list[int]) -> Callable[[], Any]:
    tokens = torch.tensor([ids])

    def run() -> Any:
        with torch.inference_mode():
            return hf(tokens, use_cache=True, logits_to_keep=1)

    return run


def decode_ours(model: Any, tokenizer: Any, prompts: list[list[int]]) -> Callable[[int], Any]:
    from lmscope.engine import SamplingParams, generate_batch

    def run(n: int) -> Any:
        params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)
        out = generate_batch(model, tokenizer, prompts, params, eos_token_ids=())
        assert all(len(r.token_ids) == n for r in out)
        return out

    return run


def decode_hf(hf: Any, prompts: list[list[int]]) -> Callable[[int], Any]:
    from transformers import GenerationConfig

    tokens = torch.tensor(prompts)  # equal lengths: no padding on either side

    def run(n: int) -> Any:
        config = GenerationConfig(
            do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0
        )
        with torch.inference_mode():
            out = hf.generate(
                tokens, attention_mask=torch.ones_like(tokens), generation_config=config
            )
        assert out.shape[1] == tokens.shape[1] + n
        return out

    return run


def decode_rate(run: Callable[[int], Any], n: int, repeat: int, batch: int) -> Timing:
    short = best_of(lambda: run(1), repeat)
    long = best_of(lambda: run(n), repeat)
    return rate(batch * (n - 1), long, short)


# ---- report ----------------------------------------------------------------------------------


def fmt(t: Timing, unit: str) -> str:
    if unit == "ms":
        return f"{1000 * t.wall:8.1f} ms ({1000 * t.cpu:7.1f} cpu)"
    return f"{t.wall:8.1f} tok/s ({t.cpu:6.1f} cpu)"


def ratio(a: Timing, b: Timing, *, lower_is_better: bool = False) -> str:
    if lower_is_better:
        return f"{b.wall / a.wall:5.2f}x ({b.cpu / a.cpu:4.2f}x cpu)"
    return f"{a.wall / b.wall:5.2f}x ({a.cpu / b.cpu:4.2f}x cpu)"


def run_suite(name: str, threads: int, quick: bool) -> None:
    from lmscope.model.prepacked import optimize_for_decoding
    from lmscope.zoo.registry import load

    torch.set_num_threads(threads)
    repeat = 2 if quick else 3
    n_new = 16 if quick else 48
    loaded = load(name)
    tok = loaded.tokenizer
    ours32 = loaded.model.eval()
    fast32 = optimize_for_decoding(copy.deepcopy(ours32))
    hf32 = hf_twin(ours32)
    ids512 = corpus_ids(tok, 512, 1)[0]
    ids64 = ids512[:64]
    prompts8 = corpus_ids(tok, 32, 8)
    drift = check_same_logits(ours32, hf32, ids64)
    fast_drift = check_same_logits(fast32, hf32, ids64)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n== {name}: torch {torch.__version__}, {threads} thread(s), load average {load_avg:.1f}, "
        f"max |logit difference| vs transformers {drift:.1e} (+fast: {fast_drift:.1e}) =="
    )
    rows: list[tuple[str, str, str, str]] = []

    for label, ids in (("prefill 64 tokens", ids64), ("prefill 512 tokens", ids512)):
        ours_t = best_of(prefill_ours(fast32, ids), repeat)
        hf_t = best_of(prefill_hf(hf32, ids), repeat)
        rows.append(
            (
                label + " fp32",
                fmt(ours_t, "ms"),
                fmt(hf_t, "ms"),
                ratio(ours_t, hf_t, lower_is_better=True),
            )
        )

    single: dict[str, Timing] = {}
    prompt = prompts8[:1]
    hf_t = decode_rate(decode_hf(hf32, prompt), n_new, repeat, 1)
    plain_t = decode_rate(decode_ours(ours32, tok, prompt), n_new, repeat, 1)
    single["fp32"] = decode_rate(decode_ours(fast32, tok, prompt), n_new, repeat, 1)
    rows.append(
        (
            "decode 1 stream fp32, as loaded",
            fmt(plain_t, "tok/s"),
            fmt(hf_t, "tok/s"),
            ratio(plain_t, hf_t),
        )
    )
    rows.append(
        (
            "decode 1 stream fp32, +fast",
            fmt(single["fp32"], "tok/s"),
            fmt(hf_t, "tok/s"),
            ratio(single["fp32"], hf_t),
        )
    )
    # bf16: the fast path is float32-only, so one row
    ours16, hf16 = copy.deepcopy(ours32).to(torch.bfloat16), copy.deepcopy(hf32).to(torch.bfloat16)
    hf_t = decode_rate(decode_hf(hf16, prompt), n_new, repeat, 1)
    single["bf16"] = decode_rate(decode_ours(ours16, tok, prompt), n_new, repeat, 1)
    rows.append(
        (
            "decode 1 stream bf16",
            fmt(single["bf16"], "tok/s"),
            fmt(hf_t, "tok/s"),
            ratio(single["bf16"], hf_t),
        )
    )
    del ours16, hf16

    batch_hf = decode_rate(decode_hf(hf32, prompts8), n_new, repeat, 8)
    batch_ours = decode_rate(decode_ours(fast32, tok, prompts8), n_new, repeat, 8)
    rows.append(
        (
            "decode batch 8 fp32, aggregate",
            fmt(batch_ours, "tok/s"),
            fmt(batch_hf, "tok/s"),
            ratio(batch_ours, batch_hf),
        )
    )

    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'lmscope':>27}  {'transformers':>27}  lmscope vs transformers")
    for label, ours_s, hf_s, r in rows:
        print(f"{label:{width}}  {ours_s:>27}  {hf_s:>27}  {r}")
    print(
        f"batch-8 aggregate / lmscope single stream (fp32, +fast): "
        f"{ratio(batch_ours, single['fp32'])}   (target >= 4x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats")
    parser.add_argument("--model", default="smollm2-135m", help="a LLaMA-shaped model name or path")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="torch threads"
    )
    args = parser.parse_args()
    for threads in args.threads:
        run_suite(args.model, threads, args.quick)


if __name__ == "__main__":
    main()
