"""The reference profile drift is measured against: prompt-like samples of the data a model is
meant to see, and what the prompt signals look like on them.

A reference is a calibration text (one sample per non-empty line) or a prepared data directory
(`lmscope data prepare`; one sample per document of its validation split, or of train when
validation is empty). The samples are scored by the served model itself, so the reference's
log-likelihoods are the same quantity the engine measures on live prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmscope.engine.prompts import encode_text
from lmscope.engine.scheduler import prompt_tail_logprob

MIN_SAMPLES = 20
SCORE_TOKEN_BUDGET = 2048  # tokens per reference scoring forward


class DriftReferenceError(ValueError):
    """A drift reference that cannot be used (missing, too small, another tokenizer)."""


@dataclass
class ReferenceProfile:
    """Per-sample prompt signals of the reference, and its token counts (for rarity)."""

    source: str
    prompt_tokens: list[float]
    prompt_logprob: list[float]
    rare_token_share: list[float]
    token_counts: np.ndarray  # [vocab]: how often each token occurs in the samples
    unknown_id: int | None = None

    @property
    def samples(self) -> int:
        return len(self.prompt_tokens)

    def rare_share(self, ids: list[int]) -> float:
        """Share of `ids` never seen in the reference (or the tokenizer's unknown token)."""
        if not ids:
            return 0.0
        arr = np.asarray(ids, dtype=np.int64)
        arr = arr[(arr >= 0) & (arr < self.token_counts.size)]
        unseen = len(ids) - arr.size + int(np.count_nonzero(self.token_counts[arr] == 0))
        if self.unknown_id is not None:
            unseen += sum(1 for t in arr.tolist() if t == self.unknown_id and self.token_counts[t])
        return unseen / len(ids)


def reference_samples(
    source: str, tokenizer: Any, *, max_samples: int, seed: int = 0
) -> list[list[int]]:
    """Token ids of up to `max_samples` reference samples (a seeded draw), whole."""
    path = Path(source)
    if path.is_dir():
        samples = _data_dir_samples(path, tokenizer)
    elif path.is_file():
        samples = _text_samples(path, tokenizer)
    else:
        raise DriftReferenceError(
            f"drift reference {source} does not exist; give a text file (one prompt-like sample "
            "per line) or a directory made by `lmscope data prepare`"
        )
    samples = [s for s in samples if s]
    if len(samples) < MIN_SAMPLES:
        raise DriftReferenceError(
            f"drift reference {source} has {len(samples)} non-empty samples; give at least "
            f"{MIN_SAMPLES} (one per line of a text file, one per document of a data directory)"
        )
    if len(samples) > max_samples:
        samples = random.Random(seed).sample(samples, max_samples)
    return samples


def _text_samples(path: Path, tokenizer: Any) -> list[list[int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DriftReferenceError(f"cannot read drift reference {path}: {err}") from None
    lines = [line.strip() for line in text.splitlines()]
    return [encode_text(tokenizer, line) for line in lines if line]


def _data_dir_samples(path: Path, tokenizer: Any) -> list[list[int]]:
    from lmscope.data.dataset import TokenSplit
    from lmscope.data.errors import DataError
    from lmscope.data.manifest import read_manifest
    from lmscope.data.tokenizer import TextTokenizer

    try:
        manifest = read_manifest(path)
        info = manifest.get("tokenizer") or {}
        data_tokenizer = TextTokenizer.load(path / str(info.get("file", "tokenizer.json")))
        splits = manifest.get("splits") or {}
        name = "val" if (splits.get("val") or {}).get("documents") else "train"
        split = TokenSplit(path, name)
    except DataError as err:
        raise DriftReferenceError(f"drift reference: {err}") from None
    eos = (info.get("token_ids") or {}).get("eos")
    docs: list[list[int]] = []
    for start, length in split.docs.tolist():
        ids = [int(t) for t in split.tokens[start : start + length]]
        if ids and eos is not None and ids[-1] == eos:
            ids = ids[:-1]  # a document's end token; a prompt does not carry one
        docs.append(ids)
    check_same_tokenizer(path, data_tokenizer.backend, tokenizer, docs)
    return docs


def check_same_tokenizer(
    path: Path, data_backend: Any, tokenizer: Any, docs: list[list[int]]
) -> None:
    """Refuse a data directory whose token ids mean other tokens for the served model."""
    vocab = len(tokenizer)
    used = sorted({t for doc in docs for t in doc})
    if used and used[-1] >= vocab:
        raise DriftReferenceError(
            f"drift reference {path} holds token id {used[-1]}, outside this model's vocabulary "
            f"of {vocab}: it was prepared with another tokenizer; prepare it with the model's "
            "tokenizer (`lmscope data prepare ... --tokenizer MODEL`) or pass a text file"
        )
    served = tokenizer.convert_ids_to_tokens(used)
    for token_id, here in zip(used, served, strict=True):
        there = data_backend.id_to_token(token_id)
        if there != here:
            raise DriftReferenceError(
                f"drift reference {path} was prepared with another tokenizer (token {token_id} "
                f"is {there!r} there and {here!r} for this model); prepare it with the model's "
                "tokenizer (`lmscope data prepare ... --tokenizer MODEL`) or pass a text file"
            )


def mean_logprobs(model: Any, samples: list[list[int]]) -> list[float | None]:
    """Each sample's prompt signal under `model`: the mean log-likelihood of its last tokens
    (`prompt_tail_logprob`, as the engine measures live prompts; None for one token), in
    right-padded batches (causal attention: padding after a sample does not change it)."""
    out: list[float | None] = [None] * len(samples)
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))
    batch: list[int] = []

    def run(indices: list[int]) -> None:
        width = max(len(samples[i]) for i in indices)
        tokens = torch.zeros(len(indices), width, dtype=torch.long)
        for row, i in enumerate(indices):
            tokens[row, : len(samples[i])] = torch.tensor(samples[i])
        with torch.inference_mode():
            logits = model(tokens.to(model.device))
        for row, i in enumerate(indices):
            out[i] = prompt_tail_logprob(logits[row, : len(samples[i])], samples[i])

    for i in order:
        width = len(samples[i])
        if batch and width * (len(batch) + 1) > SCORE_TOKEN_BUDGET:
            run(batch)
            batch = []
        batch.append(i)
    if batch:
        run(batch)
    return out


def build_profile(
    source: str,
    model: Any,
    tokenizer: Any,
    *,
    max_samples: int = 200,
    max_tokens: int = 128,
) -> ReferenceProfile:
    """Sample the reference, score it with the model, and compute its prompt signals; the rare-
    token share of a sample counts tokens unseen in the *other* samples (leave one out), as a
    live prompt's counts tokens unseen in all of them."""
    samples = reference_samples(source, tokenizer, max_samples=max_samples)
    vocab = max(len(tokenizer), int(model.cfg.vocab_size))
    counts = np.zeros(vocab, dtype=np.int64)
    for ids in samples:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
    unknown = getattr(tokenizer, "unk_token_id", None)
    shares = []
    for ids in samples:
        arr = np.asarray(ids, dtype=np.int64)
        own = np.bincount(arr, minlength=vocab)[arr]
        unseen = int(np.count_nonzero(counts[arr] - own == 0))
        if unknown is not None:
            unseen += int(np.count_nonzero((arr == unknown) & (counts[arr] - own > 0)))
        shares.append(unseen / len(ids))
    logprobs = mean_logprobs(model, [s[-max_tokens:] for s in samples])  # the end, in context
    return ReferenceProfile(
        source=source,
        prompt_tokens=[float(len(s)) for s in samples],
        prompt_logprob=[lp for lp in logprobs if lp is not None],
        rare_token_share=shares,
        token_counts=counts,
        unknown_id=unknown,
    )
