"""Log-likelihoods, batched through the model.

Two jobs: the log-likelihood of a whole document (perplexity), in disjoint windows as
lm-evaluation-harness's `loglikelihood_rolling` computes it, or in sliding windows with a stride;
and the log-likelihood of continuations given a context (label scoring). Both cut the work into
`Window`s (input tokens plus how many of the last positions are scored) and run windows of
similar length together, right-padded, so a batch costs about what its longest row costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmscope.model.transformer import Transformer

TOKEN_BUDGET = 4096  # padded tokens per forward


@dataclass(frozen=True)
class Window:
    """Score the next-token predictions of the last `n_scored` positions of `inputs`;
    `targets` are those next tokens (len == n_scored)."""

    inputs: tuple[int, ...]
    targets: tuple[int, ...]
    owner: int  # which document or continuation the scores belong to

    @property
    def n_scored(self) -> int:
        return len(self.targets)


def rolling_windows(
    ids: Sequence[int], window: int, prefix_id: int | None, owner: int, stride: int | None = None
) -> list[Window]:
    """Windows that score every token of `ids` once.

    Disjoint (stride None): each window predicts up to `window` tokens from the tokens of the same
    window only, the first token from `prefix_id` (lm-eval's rolling windows with context 1).
    Sliding (stride s): each window scores the next s tokens with up to window - s tokens of
    context before them (the first window scores all it holds). Without a prefix token the first
    token of the document is not scored.
    """
    if window < 2:
        raise ValueError("window must be at least 2 tokens")
    tokens = ([prefix_id] if prefix_id is not None else []) + list(ids)
    first = 1  # tokens[j] predicts tokens[j + 1]; score targets tokens[first:]
    out: list[Window] = []
    end = first
    step = window if stride is None else stride
    while end < len(tokens):
        new_end = min(len(tokens), end + (window if not out else step))
        # disjoint: the inputs are exactly the predicting positions; sliding: add context
        start = end - 1 if stride is None else max(0, new_end - 1 - window)
        inputs = tuple(tokens[start : new_end - 1])
        targets = tuple(tokens[end:new_end])
        out.append(Window(inputs, targets, owner))
        end = new_end
    return out


def continuation_windows(
    context: Sequence[int], continuation: Sequence[int], n_ctx: int, owner: int
) -> Window:
    """One window scoring `continuation` after `context` (context truncated on the left)."""
    if not continuation:
        raise ValueError("the continuation has no tokens")
    whole = list(context) + list(continuation)
    inputs = whole[:-1][-n_ctx:]
    return Window(tuple(inputs), tuple(continuation), owner)


def score_windows(
    model: Transformer,
    windows: Sequence[Window],
    *,
    token_budget: int = TOKEN_BUDGET,
    progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Per-window float64 log-probabilities of the targets, in the order given.

    Windows are sorted by length and run in right-padded batches of at most `token_budget`
    padded tokens; right padding never changes the causal predictions of real positions.
    """
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].inputs), reverse=True)
    scores: list[torch.Tensor | None] = [None] * len(windows)
    device = model.device
    i = 0
    with torch.inference_mode():
        while i < len(order):
            width = len(windows[order[i]].inputs)
            rows = max(1, token_budget // max(width, 1))
            batch = order[i : i + rows]
            tokens = torch.zeros(len(batch), width, dtype=torch.long)
            for r, index in enumerate(batch):
                inputs = windows[index].inputs
                tokens[r, : len(inputs)] = torch.tensor(inputs)
            logits = model(tokens.to(device))
            for r, index in enumerate(batch):
                w = windows[index]
                end = len(w.inputs)
                row = logits[r, end - w.n_scored : end].float()
                logprobs = torch.log_softmax(row, dim=-1)
                target = torch.tensor(w.targets, device=device)[:, None]
                scores[index] = logprobs.gather(-1, target)[:, 0].double().cpu()
            if progress is not None:
                progress(sum(windows[j].n_scored for j in batch))
            i += len(batch)
    return [s for s in scores if s is not None]
