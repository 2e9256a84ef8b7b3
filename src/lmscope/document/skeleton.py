"""The facts document's skeleton, shared by every reader: a new empty document, and the last
step that attaches the eval report and provenance and says what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmscope.document.provenance import (
    WEIGHT_SUFFIXES,
    file_entries,
    model_files,
    provenance,
    weights_checksum,
)
from lmscope.document.records import eval_facts, find_eval_report, read_json
from lmscope.document.schema import FACTS_SCHEMA_VERSION

# What each optional part needs, said where the part is missing.
SUPPLY = {
    "training": "no training record found: train with `lmscope train CONFIG` (it writes "
    "metadata.json and training_record.json beside the model)",
    "data": "no data manifest found: prepare the corpus with `lmscope data prepare FILES --out "
    "DIR` and train on it, so the training record carries the manifest",
    "evaluation": "no evaluation report found: run `lmscope eval MODEL --out eval-out` and pass "
    "`--eval eval-out`",
    "interpretability": "interpretability highlights need a model lmscope can run; run "
    "`lmscope doc facts` without `--no-probe` on an lmscope, Hugging Face or GGUF model",
    "layers": "layer shapes need a forward pass: give `--input-shape` for a PyTorch module",
}


def new_facts(name: str, kind: str, source: str | None, runnable: bool) -> dict[str, Any]:
    """An empty facts document of the current schema version, to be filled by one reader."""
    return {
        "schema": "lmscope.facts",
        "schema_version": FACTS_SCHEMA_VERSION,
        "model": {"name": name, "kind": kind, "source": source, "runnable": runnable},
        "overview": {"family": None, "task": None, "parameters": {"total": None}},
        "layers": {"positions": None, "macs_unit": "per position", "rows": []},
        "architecture": {},
        "training": None,
        "data": None,
        "evaluation": None,
        "interpretability": None,
        "provenance": provenance([]),
        "missing": {},
        "problems": [],
    }


def finish(facts: dict[str, Any], source: Path | None, eval_path: Path | None) -> dict[str, Any]:
    """Attach the eval report and provenance, and say what is missing and how to supply it."""
    problems: list[str] = facts["problems"]
    report_path = find_eval_report(source, eval_path)
    if report_path is not None:
        report = read_json(report_path, problems)
        if report is not None:
            facts["evaluation"] = eval_facts(report)
            facts["evaluation"]["report"] = str(report_path)
    files = model_files(source) if source is not None else []
    if report_path is not None and report_path.is_file():
        files.append(report_path)
    entries = file_entries(files)
    facts["provenance"] = provenance(entries)
    overview = facts["overview"]
    if overview.get("checksum") is None:
        overview["checksum"] = weights_checksum(entries)
    weights = [e for e in entries if e["path"].endswith(WEIGHT_SUFFIXES)]
    if overview.get("file_size_bytes") is None and weights:
        overview["file_size_bytes"] = sum(e["bytes"] for e in weights)
    for part in ("training", "data", "evaluation", "interpretability"):
        if facts.get(part) is None:
            facts["missing"][part] = SUPPLY[part]
    rows = facts["layers"]["rows"]
    facts["layers"]["modules"] = len(rows)
    macs = [r.get("macs_per_position") for r in rows]
    facts["layers"]["macs_total"] = sum(macs) if rows and None not in macs else None  # type: ignore[arg-type]
    if not rows:
        facts["missing"]["layers"] = SUPPLY["layers"]
    return facts
