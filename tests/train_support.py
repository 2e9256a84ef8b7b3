"""What the training tests share: the corpus, a prepared data directory and how a tiny training
config takes its per-test overrides. Each test module keeps its own base config (its sizes are
what it measures); `one_thread` lives in conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lmscope.data.prepare import PrepareConfig, prepare

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
_WORDS = [
    "to",
    "be",
    "or",
    "not",
    "that",
    "is",
    "the",
    "question",
    "whether",
    "tis",
    "nobler",
    "in",
    "mind",
]


def corpus(chars: int) -> str:
    """The first `chars` characters of tinyshakespeare, or seeded word salad without it."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text()[:chars]
    rng = np.random.default_rng(0)
    return "\n\n".join(" ".join(rng.choice(_WORDS, 40)) for _ in range(200))


def prepared_data(root: Path, chars: int, **options: Any) -> Path:
    """`corpus(chars)` written under `root` and prepared into `root/data` (a char tokenizer or a
    BPE of `vocab_size`, as `options` say)."""
    (root / "corpus.txt").write_text(corpus(chars))
    out = root / "data"
    prepare(
        PrepareConfig(inputs=[str(root / "corpus.txt")], out=str(out), progress=False, **options)
    )
    return out


def with_sections(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """`base` with each section overridden: dict sections merge key by key, others replace."""
    config = dict(base)
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **values}
        else:
            config[name] = values
    return config
