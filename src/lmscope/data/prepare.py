"""`lmscope data prepare`: corpus files in, a prepared data directory out.

read -> clean -> split by document -> tokenizer (trained on the train split only, or reused)
-> tokenize -> memory-mapped token files per split -> manifest.json (written last: a directory
with a manifest is complete).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lmscope.data.clean import CleanSettings, clean_records
from lmscope.data.dataset import EncodedDoc, file_sha256, token_dtype, write_split
from lmscope.data.errors import DataError
from lmscope.data.instruct import encode_instruction, is_instruction, resolve_template
from lmscope.data.manifest import MANIFEST_FILE, new_manifest, write_manifest
from lmscope.data.sources import read_records
from lmscope.data.split import SPLITS, split_records
from lmscope.data.tokenizer import (
    CHAR,
    SpecialTokens,
    TextTokenizer,
    load_tokenizer,
    train_bpe,
    train_chars,
)


@dataclass
class PrepareConfig:
    """Every setting of `lmscope data prepare` (see docs/train.md)."""

    inputs: list[str]
    out: str
    format: str = "auto"  # auto (by extension) | text | jsonl
    text_key: str = "text"  # JSONL field holding plain text
    doc_split: str = "paragraph"  # text files: file | paragraph (blank lines) | line
    clean: CleanSettings = field(default_factory=CleanSettings)
    # None: train a BPE; "char": one token per character; else a tokenizer.json, directory or model
    tokenizer: str | None = None
    vocab_size: int = 8192
    min_frequency: int = 2
    special_tokens: SpecialTokens = field(default_factory=SpecialTokens)
    template: str = "auto"  # instruction data: auto | chatml | plain
    score_key: str | None = None  # JSONL field with a curriculum score
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0
    overwrite: bool = False
    progress: bool = True

    def settings_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("out", "overwrite", "progress"):
            data.pop(key)
        return data


def _score(record: dict[str, Any], key: str | None) -> float | None:
    if key is None:
        return None
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        where = f"{record.get('_source')}:{record.get('_line', '?')}"
        raise DataError(f"score column '{key}' must be a finite number in every record ({where})")
    return float(value)


def encode_records(
    records: list[dict[str, Any]],
    tokenizer: TextTokenizer,
    template: str,
    score_key: str | None,
    desc: str,
    progress: bool,
) -> list[EncodedDoc]:
    """Tokenise records: plain text gets the end token appended; instruction records a mask."""
    dtype = token_dtype(tokenizer.vocab_size)
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    docs: list[EncodedDoc] = []
    chunk = 1024
    bar = tqdm(total=len(records), desc=desc, unit="doc", disable=not progress, leave=False)
    for begin in range(0, len(records), chunk):
        part = records[begin : begin + chunk]
        plain = [r["text"] for r in part if not is_instruction(r)]
        encoded = iter(tokenizer.encode_batch(plain))
        for record in part:
            score = _score(record, score_key)
            if is_instruction(record):
                ids, mask = encode_instruction(record, tokenizer, template)
                docs.append(EncodedDoc(np.asarray(ids, dtype), np.asarray(mask, np.uint8), score))
            else:
                docs.append(EncodedDoc(np.asarray(next(encoded) + eos, dtype), None, score))
        bar.update(len(part))
    bar.close()
    return docs


def _training_texts(records: list[dict[str, Any]]) -> list[str]:
    texts: list[str] = []
    for record in records:
        texts.extend(record[k] for k in ("text", "prompt", "completion") if k in record)
        texts.extend(m["content"] for m in record.get("messages", []))
    return texts


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    if (out / MANIFEST_FILE).exists() and not overwrite:
        raise DataError(f"{out} already holds prepared data; pass --overwrite to replace it")


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Run the whole pipeline; return the manifest written to `config.out`."""
    out = Path(config.out)
    _check_out_dir(out, config.overwrite)
    records, files = read_records(
        config.inputs,
        file_format=config.format,
        doc_split=config.doc_split,
        text_key=config.text_key,
    )
    cleaned, stats = clean_records(records, config.clean)
    if not cleaned:
        raise DataError(
            f"no text left in {', '.join(config.inputs)} after cleaning ({stats.records_in} "
            f"records read, min_chars={config.clean.min_chars}, max_chars={config.clean.max_chars}): "
            "the corpus is empty or every document was filtered out"
        )
    indices = split_records(cleaned, config.val_fraction, config.test_fraction, config.seed)
    splits = {name: [cleaned[i] for i in indices[name]] for name in SPLITS}

    if config.tokenizer is None:
        tokenizer = train_bpe(
            _training_texts(splits["train"]),
            config.vocab_size,
            specials=config.special_tokens,
            min_frequency=config.min_frequency,
            show_progress=config.progress,
        )
        tokenizer_source = "trained"
    elif config.tokenizer == CHAR:
        tokenizer = train_chars(_training_texts(splits["train"]), specials=config.special_tokens)
        tokenizer_source = "characters"
    else:
        tokenizer = load_tokenizer(config.tokenizer)
        tokenizer_source = str(config.tokenizer)
    instruction = any(is_instruction(r) for r in cleaned)
    template = resolve_template(config.template, tokenizer) if instruction else "none"

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until the new one is written
    tokenizer_path = tokenizer.save(out)
    split_info: dict[str, Any] = {}
    for name in SPLITS:
        docs = encode_records(
            splits[name], tokenizer, template, config.score_key, f"tokenize {name}", config.progress
        )
        written = write_split(out, name, docs, tokenizer.vocab_size, with_mask=instruction)
        tokens = sum(len(d.ids) for d in docs)
        loss_tokens = sum(len(d.ids) if d.mask is None else int(d.mask.sum()) for d in docs)
        split_info[name] = {
            "documents": len(docs),
            "tokens": tokens,
            "loss_tokens": loss_tokens,
            "files": written,
        }
    if split_info["train"]["tokens"] < 2:
        raise DataError("the train split has fewer than 2 tokens; add text to the corpus")

    manifest = new_manifest()
    manifest.update(
        {
            "kind": "instruction" if instruction else "text",
            "sources": [
                {
                    "path": str(f.path),
                    "bytes": f.size,
                    "format": f.format,
                    "sha256": file_sha256(f.path),
                }
                for f in files
            ],
            "settings": config.settings_dict(),
            "cleaning": stats.to_dict(),
            "tokenizer": {
                "source": tokenizer_source,
                "file": tokenizer_path.name,
                "sha256": file_sha256(tokenizer_path),
                "vocab_size": tokenizer.vocab_size,
                "special_tokens": {
                    "bos": tokenizer.specials.bos,
                    "eos": tokenizer.specials.eos,
                    "pad": tokenizer.specials.pad,
                },
                "token_ids": {
                    "bos": tokenizer.bos_id,
                    "eos": tokenizer.eos_id,
                    "pad": tokenizer.pad_id,
                },
                "template": template,
            },
            "token_dtype": str(token_dtype(tokenizer.vocab_size)),
            "split": {
                "seed": config.seed,
                "val_fraction": config.val_fraction,
                "test_fraction": config.test_fraction,
                "unit": "document (identical documents share a split)",
            },
            "splits": split_info,
        }
    )
    write_manifest(out, manifest)
    return manifest
