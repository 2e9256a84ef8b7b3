"""Token files on disk: writing packed splits and reading them back as memory maps.

A prepared data directory holds, per split, `{split}.tokens.npy` (all documents' tokens, one
after another, each ending with the end token), `{split}.docs.npy` ([n, 2] int64: start and length
of each document), and for instruction data `{split}.mask.npy` (uint8, 1 where the token counts
towards the loss) and optionally `{split}.scores.npy` (float32 curriculum scores per document).
All are plain .npy files (no pickle), opened with memory mapping.

Training reads *rows*: (start, length) windows of at most context + 1 tokens, either packed
across documents or one document at a time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmscope.data.errors import DataError
from lmscope.files import atomic_path

IGNORE_INDEX = -100


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass
class EncodedDoc:
    ids: np.ndarray
    mask: np.ndarray | None = None  # None: every token counts
    score: float | None = None


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_split(
    directory: Path, split: str, docs: list[EncodedDoc], vocab_size: int, with_mask: bool
) -> dict[str, dict[str, object]]:
    """Write one split's files; return {file name: {tokens/rows, sha256}} for the manifest."""
    dtype = token_dtype(vocab_size)
    lengths = np.array([len(d.ids) for d in docs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if docs else lengths
    total = int(lengths.sum())
    written: dict[str, dict[str, object]] = {}

    tokens_path = directory / f"{split}.tokens.npy"
    with atomic_path(tokens_path) as tmp:
        tokens = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total,))
        for doc, start in zip(docs, starts, strict=True):
            tokens[start : start + len(doc.ids)] = doc.ids
        tokens.flush()
        del tokens
    written[tokens_path.name] = {"tokens": total}

    _save_npy(directory / f"{split}.docs.npy", np.stack([starts, lengths], axis=1).reshape(-1, 2))
    written[f"{split}.docs.npy"] = {"rows": len(docs)}
    if with_mask:
        mask = np.ones(total, dtype=np.uint8)
        for doc, start in zip(docs, starts, strict=True):
            if doc.mask is not None:
                mask[start : start + len(doc.ids)] = doc.mask
        _save_npy(directory / f"{split}.mask.npy", mask)
        written[f"{split}.mask.npy"] = {"tokens": total, "loss_tokens": int(mask.sum())}
    if any(d.score is not None for d in docs):
        scores = np.array([np.nan if d.score is None else d.score for d in docs], np.float32)
        _save_npy(directory / f"{split}.scores.npy", scores)
        written[f"{split}.scores.npy"] = {"rows": len(docs)}
    for name, info in written.items():
        info["sha256"] = file_sha256(directory / name)
    return written


class TokenSplit:
    """One split of a prepared data directory, memory-mapped."""

    def __init__(self, directory: str | Path, split: str) -> None:
        directory = Path(directory)
        self.name = split
        path = directory / f"{split}.tokens.npy"
        if not path.is_file():
            raise DataError(
                f"{directory} has no '{split}' split ({path.name} missing); run "
                "`lmscope data prepare` to create it"
            )
        self.tokens: np.ndarray = _load(path, mmap=True)
        self.docs: np.ndarray = _load(directory / f"{split}.docs.npy")
        mask_path = directory / f"{split}.mask.npy"
        self.mask: np.ndarray | None = _load(mask_path, mmap=True) if mask_path.is_file() else None
        scores_path = directory / f"{split}.scores.npy"
        self.scores: np.ndarray | None = _load(scores_path) if scores_path.is_file() else None
        if self.docs.ndim != 2 or self.docs.shape[1] != 2:
            raise DataError(f"{split}.docs.npy in {directory} must be an [n, 2] array")
        if self.mask is not None and self.mask.shape != self.tokens.shape:
            raise DataError(f"{split}.mask.npy does not match {split}.tokens.npy in {directory}")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def rows(self, context: int, pack: bool) -> np.ndarray:
        """[n, 2] (start, length) windows of at most context + 1 tokens (length >= 2).

        Packed rows tile the token stream with stride `context`, so every token but the first is
        a target exactly once. Unpacked rows do the same inside each document, so no row crosses
        a document boundary (long documents become several rows).
        """
        spans = [(0, len(self))] if pack else [(int(s), int(n)) for s, n in self.docs]
        rows = []
        for start, length in spans:
            offsets = np.arange(start, start + max(length - 1, 0), context, dtype=np.int64)
            ends = np.minimum(offsets + context + 1, start + length)
            rows.append(np.stack([offsets, ends - offsets], axis=1))
        out = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
        return out[out[:, 1] >= 2]

    def row_scores(self, rows: np.ndarray, by: str) -> np.ndarray:
        """A curriculum key per row: the length or score of the document the row starts in."""
        doc_starts = self.docs[:, 0]
        which = np.searchsorted(doc_starts, rows[:, 0], side="right") - 1
        if by == "length":
            return self.docs[which, 1].astype(np.float64)
        if by == "score":
            if self.scores is None:
                raise DataError(
                    f"curriculum by score needs scores: prepare the data with --score-key "
                    f"(the '{self.name}' split has none)"
                )
            return self.scores[which].astype(np.float64)
        raise DataError(f"curriculum 'by' must be 'length' or 'score', got {by!r}")

    def batch(
        self, rows: np.ndarray, context: int, pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets [b, T] for the given rows; targets are IGNORE_INDEX where the
        loss mask is 0 and on padding. T is the longest row's length - 1 (at most context)."""
        width = int(rows[:, 1].max()) - 1 if len(rows) else 0
        inputs = np.full((len(rows), width), pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for i, (start, length) in enumerate(rows):
            window = np.asarray(self.tokens[start : start + length], dtype=np.int64)
            inputs[i, : length - 1] = window[:-1]
            targets[i, : length - 1] = window[1:]
            if self.mask is not None:
                keep = np.asarray(self.mask[start + 1 : start + length], dtype=bool)
                targets[i, : length - 1][~keep] = IGNORE_INDEX
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def target_count(self, rows: np.ndarray) -> int:
        """How many targets in `rows` count towards the loss."""
        if self.mask is None:
            return int((rows[:, 1] - 1).sum())
        return int(sum(int(self.mask[s + 1 : s + n].sum()) for s, n in rows))


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"missing data file {path}; run `lmscope data prepare` again")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"cannot read data file {path}: {err}") from err
