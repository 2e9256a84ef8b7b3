"""Interpretability highlights on a small built-in probe set, computed with `lmscope.explain`.

- important heads: each head's share of the attention output at the last position (explain's
  flow decomposition), averaged over the probe prompts;
- induction heads: on a random token sequence repeated twice, the attention a head pays from
  each token of the second copy to the token after its earlier occurrence (the classic
  repeated-random-tokens test); a head with a mean score >= INDUCTION_THRESHOLD is reported;
- logit-lens settling: the first residual node from which the model's final top-1 token stays
  top-1 through every later node (explain's lens trajectory), per prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from lmscope.explain.flow import compute_flow
from lmscope.explain.heads import head_importance, head_label
from lmscope.explain.lens import trajectory
from lmscope.explain.trace import TraceView, record
from lmscope.model.transformer import Transformer

PROBE_PROMPTS = (
    "The capital of France is",
    "One, two, three, four,",
    "The cat sat on the",
)
INDUCTION_LENGTH = 24  # random tokens in each copy
INDUCTION_THRESHOLD = 0.3
INDUCTION_SEED = 0
TOP_HEADS = 5


def _encode(tokenizer: Any, text: str, vocab: int) -> list[int]:
    if tokenizer is not None:
        ids = list(tokenizer.encode(text))
        if ids and max(ids) < vocab:
            return ids
    return [b % vocab for b in text.encode()]  # no tokenizer: bytes folded into the vocabulary


def induction_scores(model: Transformer, length: int = INDUCTION_LENGTH) -> torch.Tensor:
    """[L, H] mean attention from the second copy's tokens to the token after their first
    occurrence."""
    cfg = model.cfg
    length = min(length, (cfg.n_ctx - 1) // 2)
    gen = torch.Generator().manual_seed(INDUCTION_SEED)
    low = min(10, cfg.vocab_size - 1)
    half = torch.randint(low, cfg.vocab_size, (length,), generator=gen)
    tokens = torch.cat([half, half])[None]
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(cfg.n_layers)]
    trace = model.run_with_trace(tokens, names=names)
    scores = torch.zeros(cfg.n_layers, cfg.n_heads)
    queries = torch.arange(length, 2 * length)
    keys = queries - length + 1
    for layer in range(cfg.n_layers):
        pattern = trace[names[layer]][0].float()  # [head, query, key]
        scores[layer] = pattern[:, queries, keys].mean(-1)
    return scores


def _settle(ranks: list[int], nodes: list[str]) -> str | None:
    for i in range(len(ranks)):
        if all(r == 0 for r in ranks[i:]):
            return nodes[i]
    return None


def highlights(model: Transformer, tokenizer: Any) -> dict[str, Any]:
    cfg = model.cfg
    importance = torch.zeros(cfg.n_layers, cfg.n_heads)
    settles: list[dict[str, Any]] = []
    with torch.no_grad():
        for prompt in PROBE_PROMPTS:
            ids = _encode(tokenizer, prompt, cfg.vocab_size)[: cfg.n_ctx]
            view = TraceView(model, record(model, ids, neurons=False))
            flow = compute_flow(model, view)
            importance += head_importance(flow, len(ids) - 1)
            traj = trajectory(model, view, -1)
            settles.append({"prompt": prompt, "node": _settle(traj.ranks, traj.nodes)})
        importance /= len(PROBE_PROMPTS)
        induction = induction_scores(model)
    flat = importance.flatten()
    top = flat.topk(min(TOP_HEADS, flat.numel()))
    induction_heads: list[dict[str, Any]] = [
        {"head": head_label(layer, head), "score": round(float(induction[layer, head]), 4)}
        for layer, head in (induction >= INDUCTION_THRESHOLD).nonzero().tolist()
    ]
    induction_heads.sort(key=lambda h: -h["score"])
    best = induction.flatten().argmax()
    return {
        "probe_prompts": list(PROBE_PROMPTS),
        "method": "flow decomposition (explain.compute_flow) at the last position, mean over "
        "the probe prompts",
        "top_heads": [
            {
                "head": head_label(int(i) // cfg.n_heads, int(i) % cfg.n_heads),
                "share": round(float(v), 4),
            }
            for v, i in zip(top.values, top.indices, strict=True)
        ],
        "head_importance": [[round(float(v), 4) for v in row] for row in importance],
        "induction": {
            "sequence_length": 2 * min(INDUCTION_LENGTH, (cfg.n_ctx - 1) // 2),
            "threshold": INDUCTION_THRESHOLD,
            "heads": induction_heads,
            "strongest": {
                "head": head_label(int(best) // cfg.n_heads, int(best) % cfg.n_heads),
                "score": round(float(induction.flatten()[best]), 4),
            },
        },
        "logit_lens_settles": settles,
    }
