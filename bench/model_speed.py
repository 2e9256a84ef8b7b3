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

With `--quantize int8` the same run adds the int8 path (`lmscope.model.quantized`): single-stream
and batch-8 decoding against the prepacked float32 path (target >= 2x single stream), bits per
byte of float32 and int8 on a slice of ../shared/data/wikitext2_valid.txt (target: within 1%),
the CPU-time split of one decoding step (matmuls, other work in the model, the engine), and
which float32 path `prepare_for_decoding` picks on this machine.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
WIKITEXT = SHARED_TEXT.with_name("wikitext2_valid.txt")
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


def bits_per_byte(model: Any, tokenizer: Any, n_chars: int, window: int = 512) -> float:
    """Bits per byte of the first `n_chars` of WikiText-2 validation, in windows of `window`
    tokens (each window scored from its own start, as `lmscope eval` does without a stride)."""
    text = WIKITEXT.read_text(encoding="utf-8")[:n_chars] if WIKITEXT.is_file() else FALLBACK_TEXT
    ids = tokenizer.encode(text)
    nll, n_bytes = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start : start + window + 1]])
            logp = model(chunk[:, :-1]).log_softmax(-1).gather(-1, chunk[:, 1:, None])
            nll -= float(logp.sum())
            n_bytes += len(tokenizer.decode(chunk[0, 1:].tolist()).encode("utf-8"))
    return nll / n_bytes / math.log(2)


def ten(fn: Callable[[], None]) -> None:
    for _ in range(10):
        fn()


def step_split(model: Any, tokenizer: Any, prompt: list[list[int]], repeat: int) -> str:
    """CPU ms of one single-stream decoding step: the projections alone, the rest of the
    model, and the engine around it (scheduler, sampling, detokenizing)."""
    path = model._prepacked
    x = torch.randn(1, 1, model.cfg.d_model)

    def projections() -> None:
        for layer in path.layers:
            layer.qkv(x)
            layer.out(x)
            hidden = layer.fc_in(x)
            layer.fc_out(hidden[..., : layer.d_mlp] if layer.gated else hidden)
        path.unembed(x)

    cache = model.new_cache(1, 64)
    nxt = torch.tensor([[5]])
    with torch.inference_mode():
        model(torch.tensor(prompt), cache=cache)

        def step() -> None:
            model(nxt, cache=cache)
            cache.length = len(prompt[0])  # stay at the prompt's length

        matmul = best_of(lambda: ten(projections), repeat).cpu * 100
        whole = best_of(lambda: ten(step), repeat).cpu * 100
    engine = 1000 / decode_rate(decode_ours(model, tokenizer, prompt), 16, repeat, 1).cpu
    return (
        f"{engine:.1f} ms cpu per step = matmuls {matmul:.1f} + other model work "
        f"{whole - matmul:.1f} + engine {engine - whole:.1f}"
    )


def run_quantized(
    name: str, loaded: Any, fast32: Any, prompts8: list[list[int]], quick: bool, repeat: int
) -> None:
    from lmscope.model.decoding import prepare_for_decoding
    from lmscope.model.quantized import quantize_for_decoding

    tok, ours32 = loaded.tokenizer, loaded.model
    int8 = quantize_for_decoding(copy.deepcopy(ours32))
    n_new = 16 if quick else 48
    prompt = prompts8[:1]
    rows = []
    for label, batch in (("decode 1 stream", prompt), ("decode batch 8, aggregate", prompts8)):
        fp32_t = decode_rate(decode_ours(fast32, tok, batch), n_new, repeat, len(batch))
        int8_t = decode_rate(decode_ours(int8, tok, batch), n_new, repeat, len(batch))
        rows.append((label, fmt(int8_t, "tok/s"), fmt(fp32_t, "tok/s"), ratio(int8_t, fp32_t)))
    n_chars = 6000 if quick else 30000
    fp32_bpb = bits_per_byte(ours32, tok, n_chars)
    int8_bpb = bits_per_byte(int8, tok, n_chars)
    print(f"\n== {name}: int8 (lmscope.model.quantized) vs the prepacked float32 path ==")
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'int8':>27}  {'fp32 prepacked':>27}  int8 vs fp32 (target >= 2x)")
    for label, a, b, r in rows:
        print(f"{label:{width}}  {a:>27}  {b:>27}  {r}")
    print(
        f"bits per byte, WikiText-2 valid first {n_chars} chars: fp32 {fp32_bpb:.4f}, "
        f"int8 {int8_bpb:.4f} ({100 * (int8_bpb / fp32_bpb - 1):+.2f}%, target within 1%)"
    )
    print(f"step split, fp32 prepacked: {step_split(fast32, tok, prompt, repeat)}")
    print(f"step split, int8:           {step_split(int8, tok, prompt, repeat)}")
    choice = prepare_for_decoding(copy.deepcopy(ours32), batch=8)
    print(f"prepare_for_decoding (float32) picks {choice.path}: {choice.reason}")


def run_suite(name: str, threads: int, quick: bool, quantize: str | None = None) -> None:
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
    if quantize is not None:
        run_quantized(name, loaded, fast32, prompts8, quick, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats")
    parser.add_argument("--model", default="smollm2-135m", help="a LLaMA-shaped model name or path")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="torch threads"
    )
    parser.add_argument(
        "--quantize", choices=["int8"], help="also measure the int8 path: speed and bits per byte"
    )
    parser.add_argument(
        "--only-quantized", action="store_true", help="with --quantize: skip the transformers rows"
    )
    args = parser.parse_args()
    for threads in args.threads:
        if args.only_quantized and args.quantize:
            run_quantized_only(args.model, threads, args.quick, args.quantize)
        else:
            run_suite(args.model, threads, args.quick, args.quantize)


def run_quantized_only(name: str, threads: int, quick: bool, quantize: str) -> None:
    """The int8 rows alone (a shorter run on a busy machine)."""
    from lmscope.model.prepacked import optimize_for_decoding
    from lmscope.zoo.registry import load

    torch.set_num_threads(threads)
    loaded = load(name)
    fast32 = optimize_for_decoding(copy.deepcopy(loaded.model))
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {threads} thread(s), load average {load_avg:.1f}")
    run_quantized(
        name, loaded, fast32, corpus_ids(loaded.tokenizer, 32, 8), quick, 2 if quick else 3
    )


if __name__ == "__main__":
    main()
