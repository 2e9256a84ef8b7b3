"""Scoring many perturbed copies of one prompt, reusing the key/value cache of unchanged prefixes.

A perturbation replaces some input tokens by a baseline token. Positions before the first
replaced one are identical to a reference sequence, so their keys and values need not be
recomputed: `MaskScorer` runs each reference once with a KV cache and runs each perturbed row
only from its first difference on. Two references are kept: the prompt itself (occlusion and
deletion change late tokens of it) and the all-baseline sequence (Shapley sampling and insertion
start from it), and each row uses whichever shares the longer prefix.

The rows' suffixes have different lengths (occluding token i leaves T - i to run), so rather than
pad every row of a batch to its longest suffix, suffixes are packed side by side into batch rows
of at most T positions (`pack`), each with its own positions and an attention mask that lets it
see the reference's cached prefix and its own keys only; the model unembeds just the suffixes'
last positions. Occlusion of every token then runs T(T+1)/2 positions, not ~T^2/2 plus padding.

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

DEFAULT_BATCH = 16  # packed rows (each at most the prompt's length) per forward
MAX_SEGMENTS = 8  # perturbed rows packed into one batch row at most
TOKENS_PER_BATCH = 8192  # cached + new positions x rows per batch at most (bounds its KV cache)


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


def pack(lengths: list[int], capacity: int, most: int = MAX_SEGMENTS) -> list[list[int]]:
    """Indices of `lengths` packed into bins of at most `capacity` positions and `most` items,
    first-fit decreasing; bins fullest first. Packing the rows' suffixes into shared batch rows
    leaves little padding: occluding token i runs T - i positions, and i pairs with T - i."""
    bins: list[list[int]] = []
    fill: list[int] = []
    smallest = min(lengths, default=0)
    open_bins: list[int] = []  # bins that can still take the smallest item
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        b = next((b for b in open_bins if fill[b] + n <= capacity), None)
        if b is None:
            b = len(bins)
            bins.append([])
            fill.append(0)
            open_bins.append(b)
        bins[b].append(i)
        fill[b] += n
        if fill[b] + smallest > capacity or len(bins[b]) >= most:
            open_bins.remove(b)
    order = sorted(range(len(bins)), key=lambda b: -fill[b])
    return [bins[b] for b in order]


def batches(shapes: list[tuple[int, int]], most: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi) runs of packed rows, given as (cached prefix, positions) each, for
    one forward each: at most `most` rows, and rows x (longest prefix + most positions) at most
    `budget` (the batch's KV cache), though never fewer than one row."""
    out: list[tuple[int, int]] = []
    lo, past, width = 0, 0, 0
    for i, (p, n) in enumerate(shapes):
        past, width = max(past, p), max(width, n)
        if i > lo and (i - lo + 1 > most or (i - lo + 1) * (past + width) > budget):
            out.append((lo, i))
            lo, past, width = i, p, n
    if shapes:
        out.append((lo, len(shapes)))
    return out


class MaskScorer:
    """The score at the prompt's last position for any set of token masks (see module doc).

    `n_positions` counts the token positions run through the model so far (the cost measure the
    prefix reuse lowers; a full forward of every row would cost N * T). `batch_size` is the most
    packed batch rows per forward; long prompts get fewer (at most TOKENS_PER_BATCH rows x
    tokens).
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
        host_rows = rows.cpu()  # the packed batches are assembled on the host
        for which in (0, 1):
            idx = todo[ref[todo] == which]
            if idx.numel() == 0:
                continue
            starts = best[idx].tolist()
            lengths = [self.n_tokens - p for p in starts]
            bins = pack(lengths, max(lengths))
            shapes = [(max(starts[i] for i in b), sum(lengths[i] for i in b)) for b in bins]
            for lo, hi in batches(shapes, self.batch_size, TOKENS_PER_BATCH):
                check_cancelled(self.should_stop, "the perturbation attribution")
                group = [[(int(idx[i]), starts[i]) for i in b] for b in bins[lo:hi]]
                rows_run = torch.tensor([r for b in group for r, _ in b])
                out[rows_run] = self._run(host_rows, group, which)
        return out

    def _run(
        self, rows: torch.Tensor, group: list[list[tuple[int, int]]], ref: int
    ) -> torch.Tensor:
        """Scores of the rows in `group` (bins of (row, start): the row equals reference `ref`
        before `start`), in bin order, in one forward of the packed batch."""
        model = self.model
        batch = PackedBatch(rows, group, self.n_tokens, self.baseline)
        past, n_rows = batch.past, len(group)
        cache: KVCache | None = None
        if past > 0:
            cache = model.new_cache(n_rows, past + batch.width)
            cache.keys[:, :, :, :past] = self._cache.keys[:, ref : ref + 1, :, :past]
            cache.values[:, :, :, :past] = self._cache.values[:, ref : ref + 1, :, :past]
            cache.length = past
        device = model.device
        with eval_mode(model), torch.no_grad():
            logits = model(
                batch.ids.to(device),
                positions=batch.positions.to(device),
                attention_mask=batch.mask.to(device),
                cache=cache,
                at=batch.ends.to(device),
            )
        self.n_positions += n_rows * batch.width
        ends = logits.flatten(0, 1)[batch.used.to(device)]
        return score_of(ends, self.target, self.foil, self.score).cpu()


class PackedBatch:
    """The model inputs for bins of suffixes (see the module doc), built on the host.

    Bin b becomes batch row b: its suffixes side by side, each at its own positions, seeing the
    `past` cached reference keys before its start and its own keys causally; padding sees only
    itself. `ends` [rows, most] indexes each suffix's last position (padded with the first's),
    `used` the entries of ends.flatten() that are real suffixes, in bin order."""

    def __init__(
        self, rows: torch.Tensor, group: list[list[tuple[int, int]]], n_tokens: int, baseline: int
    ) -> None:
        n = n_tokens
        self.past = past = max(start for b in group for _, start in b)
        self.width = width = max(sum(n - start for _, start in b) for b in group)
        most = max(len(b) for b in group)
        self.ids = torch.full((len(group), width), baseline, dtype=rows.dtype)
        self.positions = torch.zeros(len(group), width, dtype=torch.long)
        self.mask = torch.zeros(len(group), 1, width, past + width, dtype=torch.bool)
        self.ends = torch.zeros(len(group), most, dtype=torch.long)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        for b, segments in enumerate(group):
            at = 0
            for j, (row, start) in enumerate(segments):
                size = n - start
                self.ids[b, at : at + size] = rows[row, start:]
                self.positions[b, at : at + size] = torch.arange(start, n)
                self.mask[b, 0, at : at + size, :start] = True
                own = slice(past + at, past + at + size)
                self.mask[b, 0, at : at + size, own] = causal[:size, :size]
                self.ends[b, j] = at + size - 1
                at += size
            pad = torch.arange(at, width)
            self.mask[b, 0, pad, past + pad] = True
            self.ends[b, len(segments) :] = self.ends[b, 0]
        self.used = torch.tensor(
            [b * most + j for b, seg in enumerate(group) for j in range(len(seg))]
        )
