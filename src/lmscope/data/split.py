"""Deterministic train/validation/test split by document.

Records with the same content share a split (so duplicates cannot leak from train into
validation), and the assignment depends only on the contents and the seed, never on file order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lmscope.data.clean import record_key
from lmscope.data.errors import DataError

SPLITS = ("train", "val", "test")


def split_counts(groups: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError("val_fraction + test_fraction must leave something to train on")
    n_val = max(1, round(groups * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(groups * test_fraction)) if test_fraction > 0 else 0
    if groups - n_val - n_test < 1:
        raise DataError(
            f"only {groups} distinct documents: too few for a train/val/test split with "
            f"fractions {val_fraction}/{test_fraction}; add text, use --doc-split line, or "
            "lower the fractions"
        )
    return n_val, n_test


def split_records(
    records: Sequence[dict[str, Any]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Indices of `records` in each split, each list in the records' original order."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record_key(record), []).append(index)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val, n_test = split_counts(len(keys), val_fraction, test_fraction)
    chosen = {
        "test": keys[:n_test],
        "val": keys[n_test : n_test + n_val],
        "train": keys[n_test + n_val :],
    }
    return {name: sorted(i for key in chosen[name] for i in groups[key]) for name in SPLITS}
