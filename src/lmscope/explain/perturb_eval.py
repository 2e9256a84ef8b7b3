"""Scoring many perturbed copies of one prompt, reusing the key/value cache of unchanged prefixes.

A perturbation replaces some input tokens by a baseline token. Positions before the first
replaced one are identical to a reference sequence, so their keys and values need not be
recomputed: `MaskScorer` runs each reference once with a KV cache, then scores a batch of
perturbed rows by copying the reference's cached prefix into a batch cache and running only the
tokens from the batch's shortest common prefix on. Two references are kept: the prompt itself
(occlusion and deletion change late tokens of it) and the all-baseline sequence (Shapley
sampling and insertion start from it), and each row uses whichever shares the longer prefix.

Masks are boolean [N, T]: True keeps the prompt's token, False puts the baseline token there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmscope.explain.budget import ShouldStop, check_cancelled
from lmscope.explain.errors import ExplainInputError, check_position, check_tokens
from lmscope.explain.trace import to_tokens
from lmscope.model.cache import KVCache
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer

DEFAULT_BATCH = 16
WASTE = 1.25  # a batch may run at most this many times the positions its rows need
TOKENS_PER_BATCH = 8192  # rows x prompt length per batch at most (bounds the batch's KV cache)


def check_token_id(model: Transformer, token: int | None, what: str) -> None:
    if token is not None and (
        isinstance(token, bool)
        or not isinstance(token, int)
        or not 0 <= token < model.cfg.vocab_size
    ):
        raise ExplainInputError(
            f"{what} token id {token!r} is outside the vocabulary (0..{model.cfg.vocab_size - 1})"
        )


def default_baseline(model: Transformer) -> int:
    """The token that stands in for a removed one: the model's end-of-text token, else 0."""
    eos = model.cfg.eos_token_id
    return eos if eos is not None and 0 <= eos < model.cfg.vocab_size else 0


def score_of(logits: torch.Tensor, target: int, foil: int | None, score: str) -> torch.Tensor:
    """logits [B, V] -> [B] float64: the target's logit or log-probability, minus the foil's."""
    logits = logits.double()
    if score == "logprob":
        logits = torch.log_softmax(logits, dim=-1)
    elif score != "logit":
        raise ExplainInputError(f"score must be 'logit' or 'logprob', got {score!r}")
    out = logits[:, target]
    if foil is not None:
        out = out - logits[:, foil]
    return out


def chunks(prefixes: list[int], n_tokens: int, batch: int) -> list[tuple[int, int]]:
    """Split rows sorted by shared prefix (longest first) into [start, end) batches of at most
    `batch` rows. A batch runs every row from its shortest prefix on, so a batch is also closed
    when that would run over WASTE more positions than its rows need on their own."""
    out: list[tuple[int, int]] = []
    start, need = 0, 0
    for i, p in enumerate(prefixes):
        rows = i - start + 1
        if rows > batch or (rows > 1 and rows * (n_tokens - p) > WASTE * (need + n_tokens - p)):
            out.append((start, i))
            start, need = i, 0
        need += n_tokens - p
    if prefixes:
        out.append((start, len(prefixes)))
    return out


class MaskScorer:
    """The score at the prompt's last position for any set of token masks (see module doc).

    `n_positions` counts the token positions run through the model so far (the cost measure the
    prefix reuse lowers; a full forward of every row would cost N * T). `batch_size` is the most
    rows per forward; long prompts get fewer (at most TOKENS_PER_BATCH rows x tokens).
    """

    def __init__(
        self,
        model: Transformer,
        tokens: torch.Tensor | Sequence[int],
        position: int = -1,
        target: int | None = None,
        foil: int | None = None,
        score: str = "logit",
        baseline: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        should_stop: ShouldStop | None = None,
    ) -> None:
        t = to_tokens(tokens)
        check_tokens(t.shape[1], model.cfg.n_ctx)
        self.position = check_position(position, t.shape[1], "position")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ExplainInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if score not in ("logit", "logprob"):
            raise ExplainInputError(f"score must be 'logit' or 'logprob', got {score!r}")
        check_token_id(model, target, "target")
        check_token_id(model, foil, "foil")
        baseline = default_baseline(model) if baseline is None else baseline
        check_token_id(model, baseline, "baseline")
        self.model = model
        self.tokens = t[:, : self.position + 1].to(model.device)  # causality: 0..position
        self.n_tokens = self.tokens.shape[1]
        self.baseline = baseline
        self.foil, self.score = foil, score
        # Long prompts get fewer rows per batch (the batch cache is rows x T positions).
        self.batch_size = min(batch_size, max(1, TOKENS_PER_BATCH // self.n_tokens))
        self.should_stop = should_stop
        self.n_positions = 0
        base_row = torch.full_like(self.tokens, baseline)
        self._refs = torch.cat([self.tokens, base_row])  # [2, T]
        with eval_mode(model), torch.no_grad():
            cache = model.new_cache(2, self.n_tokens)
            logits = model(self._refs, cache=cache, last_only=True)[:, -1]
        self.n_positions += 2 * self.n_tokens
        self._cache = cache
        self.target = int(logits[0].argmax()) if target is None else target
        ends = score_of(logits, self.target, foil, score)
        self.value = float(ends[0])  # score of the prompt
        self.baseline_value = float(ends[1])  # score of the all-baseline sequence

    def inputs(self, masks: torch.Tensor) -> torch.Tensor:
        """Token ids [N, T] for boolean masks [N, T] (True keeps the prompt's token)."""
        return torch.where(masks.to(self.tokens.device), self.tokens, self.baseline)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Scores [N] (float64) of the perturbed prompts described by `masks` [N, T]."""
        if masks.dim() != 2 or masks.shape[1] != self.n_tokens:
            raise ExplainInputError(
                f"masks must be [N, {self.n_tokens}] (one column per token), "
                f"got {tuple(masks.shape)}"
            )
        rows = self.inputs(masks.bool())
        out = torch.empty(rows.shape[0], dtype=torch.float64)
        # Longest prefix each row shares with each reference; use the better reference.
        same = rows[:, None, :] == self._refs[None]  # [N, 2, T]
        prefix = same.int().cumprod(-1).sum(-1)  # [N, 2]
        best, ref = prefix.max(-1)
        for which, value in ((0, self.value), (1, self.baseline_value)):
            whole = (ref == which) & (best == self.n_tokens)
            out[whole.cpu()] = value
        todo = (best < self.n_tokens).nonzero().flatten()
        for which in (0, 1):
            idx = todo[ref[todo] == which]
            idx = idx[best[idx].argsort(descending=True)]
            if idx.numel() == 0:
                continue
            for chunk in chunks(best[idx].tolist(), self.n_tokens, self.batch_size):
                check_cancelled(self.should_stop, "the perturbation attribution")
                sel = idx[chunk[0] : chunk[1]]
                start = int(best[sel].min())
                out[sel.cpu()] = self._run(rows[sel], which, start)
        return out

    def _run(self, rows: torch.Tensor, ref: int, start: int) -> torch.Tensor:
        """Scores of `rows`, which equal reference `ref` before position `start`."""
        model = self.model
        cache: KVCache | None = None
        if start > 0:
            cache = model.new_cache(rows.shape[0], self.n_tokens)
            cache.keys[:, :, :, :start] = self._cache.keys[:, ref : ref + 1, :, :start]
            cache.values[:, :, :, :start] = self._cache.values[:, ref : ref + 1, :, :start]
            cache.length = start
        with eval_mode(model), torch.no_grad():
            logits = model(rows[:, start:], cache=cache, last_only=True)[:, -1]
        self.n_positions += rows.shape[0] * (self.n_tokens - start)
        return score_of(logits, self.target, self.foil, self.score).cpu()
