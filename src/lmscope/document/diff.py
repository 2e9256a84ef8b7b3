"""`lmscope doc diff` and `lmscope doc history`: what changed between models, from their facts
(and, with a prompt file, which heads and neurons gained or lost importance: `circuits.py`).

The narration is template sentences over computed differences (every number in it is a fact
value or a difference of two), so it needs no writer.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from lmscope.document.circuits import (
    DEFAULT_TOP,
    Progress,
    check_top,
    circuit_lines,
    compare,
    incomparable,
    read_prompts,
    version_stats,
)
from lmscope.document.errors import DocError
from lmscope.document.templates import num

TOP_HEAD_CHANGES = 5


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def load_facts(model: str, probe: bool) -> dict[str, Any]:
    path = Path(model)
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DocError(f"cannot read {path}: {err}") from None
        if isinstance(data, dict) and data.get("schema") == "lmscope.facts":
            from lmscope.document.schema import check_facts

            return check_facts(data)
    from lmscope.document.sources import collect_facts

    return collect_facts(model, probe=probe)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            change: dict[str, Any] = {"key": key, "old": a.get(key), "new": b.get(key)}
            if all(
                isinstance(x, (int, float)) and not isinstance(x, bool)
                for x in (a.get(key), b.get(key))
            ):
                change["delta"] = b[key] - a[key]
            out.append(change)
    return out


def _metrics(facts: dict[str, Any]) -> dict[str, float]:
    ev = facts.get("evaluation") or {}
    return {
        f"{t['name']}/{n}": m["value"] for t in ev.get("tasks", []) for n, m in t["metrics"].items()
    }


def _heads(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    a = (old.get("interpretability") or {}).get("head_importance")
    b = (new.get("interpretability") or {}).get("head_importance")
    if not a or not b or len(a) != len(b) or len(a[0]) != len(b[0]):
        return []
    moves = [
        {"head": f"L{layer}H{head}", "old": a[layer][head], "new": b[layer][head],
         "delta": round(b[layer][head] - a[layer][head], 4)}
        for layer in range(len(a)) for head in range(len(a[0]))
    ]  # fmt: skip
    return sorted(moves, key=lambda m: -abs(m["delta"]))[:TOP_HEAD_CHANGES]


def _line(change: dict[str, Any]) -> str:
    text = f"{change['key']}: {num(change['old'])} -> {num(change['new'])}"
    return text + (
        f" ({'+' if change['delta'] >= 0 else ''}{num(change['delta'])})"
        if "delta" in change
        else ""
    )


def diff_facts(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    parts = {
        "architecture": _changes(old.get("architecture") or {}, new.get("architecture") or {}),
        "parameters": _changes(old["overview"]["parameters"], new["overview"]["parameters"]),
        "hyperparameters": _changes(
            (old.get("training") or {}).get("hyperparameters") or {},
            (new.get("training") or {}).get("hyperparameters") or {},
        ),
        "data": _changes(
            {"sources": [s.get("sha256") for s in (old.get("data") or {}).get("sources", [])]},
            {"sources": [s.get("sha256") for s in (new.get("data") or {}).get("sources", [])]},
        ),
        "metrics": _changes(_metrics(old), _metrics(new)),
        "outcome": _changes(
            (old.get("training") or {}).get("outcome") or {},
            (new.get("training") or {}).get("outcome") or {},
        ),
    }
    heads = _heads(old, new)
    lines = [f"From {old['model']['name']} to {new['model']['name']}:"]
    for part, changes in parts.items():
        if changes:
            lines.append(f"- {part}: {len(changes)} change(s)")
            lines += [f"    {_line(c)}" for c in changes[:20]]
        else:
            lines.append(f"- {part}: unchanged")
    if heads:
        lines.append("- heads whose importance on the probe set changed most:")
        lines += [
            f"    {h['head']}: {num(h['old'])} -> {num(h['new'])} ({num(h['delta'])})"
            for h in heads
        ]
    return {"old": old["model"]["name"], "new": new["model"]["name"], "changes": parts,
            "heads": heads, "text": "\n".join(lines)}  # fmt: skip


def diff_models(
    old: str,
    new: str,
    probe: bool = True,
    circuits: Path | None = None,
    top: int = DEFAULT_TOP,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The facts diff of two models; with `circuits` (a prompt file) also which heads and
    neurons gained or lost importance on those prompts (`document.circuits`)."""
    prompts = read_prompts(circuits) if circuits is not None else None
    check_top(top)
    result = diff_facts(load_facts(old, probe), load_facts(new, probe))
    if prompts is not None:
        pair = [version_stats(m, prompts, progress) for m in (old, new)]
        facts = compare(pair[0], pair[1], prompts, top)
        result["circuits"] = facts
        result["text"] += "\n" + "\n".join(circuit_lines(facts))
    return result


def _step(path: Path) -> float:
    meta = path / "metadata.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
            step = ((data.get("training") or {}).get("final") or {}).get("step")
            if isinstance(step, int):
                return float(step)
        except (OSError, json.JSONDecodeError):
            pass
    found = re.findall(r"\d+", path.name)
    return float(found[-1]) if found else float("inf")


def checkpoints_in(directory: Path) -> list[Path]:
    from lmscope.zoo.checkpoint import is_checkpoint

    if not directory.is_dir():
        raise DocError(f"{directory} is not a directory")
    found = [p for p in directory.rglob("config.json") if is_checkpoint(p.parent)]
    dirs = sorted({p.parent for p in found}, key=lambda p: (_step(p), str(p)))
    if not dirs:
        raise DocError(f"no lmscope checkpoints under {directory}")
    return dirs


def history(
    directory: Path,
    probe: bool = False,
    circuits: Path | None = None,
    top: int = DEFAULT_TOP,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The checkpoints under `directory` in step order and each step's diff (facts and text);
    with `circuits`, each step's circuit changes too (checkpoints of another head layout than
    their predecessor get a reason instead)."""
    prompts = read_prompts(circuits) if circuits is not None else None
    check_top(top)
    dirs = checkpoints_in(Path(directory))
    facts = [load_facts(str(d), probe) for d in dirs]
    if prompts is not None and len(dirs) < 2:
        prompts = None  # nothing to compare with: no aggregation
    stats = [version_stats(str(d), prompts, progress) for d in dirs] if prompts else []
    lines = [f"{len(dirs)} checkpoint(s) under {directory}, in step order:"]
    lines += [f"  {i + 1}. {d}" + (f" (circuits: {stats[i].origin})" if stats else "")
              for i, d in enumerate(dirs)]  # fmt: skip
    steps = []
    for i, (old, new) in enumerate(itertools.pairwise(facts)):
        step = diff_facts(old, new)
        lines += ["", step["text"]]
        if prompts is not None:
            reason = incomparable(stats[i], stats[i + 1])
            step["circuits"] = (
                {"old": stats[i].label, "new": stats[i + 1].label, "unavailable": reason}
                if reason
                else compare(stats[i], stats[i + 1], prompts, top)
            )
            lines += circuit_lines(step["circuits"])
        steps.append(step)
    return {"checkpoints": [str(d) for d in dirs], "steps": steps, "text": "\n".join(lines)}


def history_text(
    directory: Path, probe: bool = False, circuits: Path | None = None, top: int = DEFAULT_TOP
) -> str:
    return str(history(directory, probe, circuits, top)["text"])
