"""Perplexity scoring throughput and agreement: lmscope's batched scorer against transformers'
own forward on the same windows, in the same run.

Prints tokens/s for both (and the ratio), and how far the two total log-likelihoods are apart
(relative), on ../shared/data/wikitext2_valid.txt split into WikiText articles.

    python bench/eval_speed.py [--window 1024] [--docs N] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from lmscope.evaluate.loglik import Window, rolling_windows, score_windows
from lmscope.evaluate.metrics import PerplexityItems
from lmscope.evaluate.tasks import split_documents
from lmscope.zoo.default import DEFAULT_MODEL, EMBEDDED_MODELS
from lmscope.zoo.registry import load

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2_valid.txt"


def hf_scores(model: torch.nn.Module, windows: list[Window]) -> list[torch.Tensor]:
    """One window per forward through transformers' LlamaForCausalLM (its own fast path)."""
    out = []
    with torch.inference_mode():
        for w in windows:
            logits = model(torch.tensor([w.inputs])).logits[0, -w.n_scored :].float()
            logprobs = torch.log_softmax(logits, -1)
            out.append(logprobs.gather(-1, torch.tensor(w.targets)[:, None])[:, 0].double())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--docs", type=int, default=None, help="first N articles only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    lm = load("smollm2-135m")
    source = EMBEDDED_MODELS[DEFAULT_MODEL].source_path()
    reference = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    ).eval()
    docs = split_documents(DATA.read_text(encoding="utf-8"), "headings")[: args.docs]
    prefix = lm.tokenizer.eos_token_id
    windows: list[Window] = []
    for owner, doc in enumerate(docs):
        ids = lm.tokenizer.encode(doc, add_special_tokens=False)
        windows += rolling_windows(ids, args.window, prefix, owner)
    n_tokens = sum(w.n_scored for w in windows)
    print(f"{len(docs)} articles, {n_tokens} tokens, {len(windows)} windows of <= {args.window}")

    start = time.perf_counter()
    ours = score_windows(lm.model, windows)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = hf_scores(reference, windows)
    theirs_s = time.perf_counter() - start

    total_ours = sum(float(s.sum()) for s in ours)
    total_theirs = sum(float(s.sum()) for s in theirs)
    worst = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    ll = [0.0] * len(docs)
    tokens = [0] * len(docs)
    for w, s in zip(windows, ours, strict=True):
        ll[w.owner] += float(s.sum())
        tokens[w.owner] += w.n_scored
    items = PerplexityItems.from_docs(ll, tokens, docs)
    idx = np.arange(len(docs))
    print(
        f"bits_per_byte {items.bits_per_byte(idx):.5f}, word_perplexity "
        f"{items.word_perplexity(idx):.3f}, token_perplexity {items.token_perplexity(idx):.4f}"
    )
    print(
        f"loss (mean nll/token): lmscope {-total_ours / n_tokens:.6f}, transformers "
        f"{-total_theirs / n_tokens:.6f}; relative difference "
        f"{abs(total_ours - total_theirs) / abs(total_theirs):.2e}; worst token {worst:.2e}"
    )
    print(
        f"lmscope {n_tokens / ours_s:.0f} tok/s ({ours_s:.1f} s), transformers "
        f"{n_tokens / theirs_s:.0f} tok/s ({theirs_s:.1f} s): {theirs_s / ours_s:.2f}x"
    )
    assert math.isfinite(total_ours)


if __name__ == "__main__":
    main()
