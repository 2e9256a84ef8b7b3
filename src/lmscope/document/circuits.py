"""Circuit changes between model versions, for `doc diff` and `doc history` with --circuits.

Each version's head and neuron importance over a prompt set comes from `explain.aggregate`. An
aggregate result stored in a checkpoint directory (`lmscope explain aggregate --out`, or the
`aggregate-<prompts sha256>.json` this module caches there, written atomically) is reused when
it covers as many prompts at the same tau, records no other prompt set (nor another lmscope
version) and is newer than the weights. Two versions are compared by `explain.circuit_diff`;
the comparison is kept as facts (component, importance before and after, change, on-route
frequency before and after) and narrated by template lines whose every number is one of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmscope import __version__
from lmscope.document.errors import DocError
from lmscope.document.templates import num

if TYPE_CHECKING:  # the explain package (and torch) load only when circuits are asked for
    from lmscope.explain.aggregate import ComponentStats

DEFAULT_TOP = 3  # components listed per direction (heads, and neurons where measured)
TAU = 0.04  # route threshold of the on-route frequency (aggregate's default)
CACHE_PREFIX = "aggregate-"
NOISE = 1e-6  # smaller changes are the rounding of stored results (7 decimals), not changes
_MAX_STORED_BYTES = 64 << 20
Progress = Callable[[str], None]
_NOT_STORED = {"config.json", "metadata.json", "training_record.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}  # fmt: skip


@dataclass(frozen=True)
class PromptSet:
    source: str  # the file, as given
    texts: tuple[str, ...]
    sha256: str  # of the prompts joined by newlines


@dataclass
class VersionStats:
    label: str
    stats: ComponentStats
    origin: str  # "computed", "computed, cached in FILE" or "reused FILE"


def read_prompts(path: Path) -> PromptSet:
    """One prompt a line (blank lines skipped); a missing or empty file is a DocError."""
    path = Path(path)
    if not path.is_file():
        raise DocError(f"prompt file {str(path)!r} does not exist; give --circuits a text file "
                       "with one prompt a line")  # fmt: skip
    try:
        texts = tuple(line for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as err:
        raise DocError(f"cannot read the prompt file {path}: {err}") from None
    if not texts:
        raise DocError(f"{path} holds no prompts; give one prompt a line")
    from lmscope.explain.aggregate import prompts_digest

    return PromptSet(str(path), texts, prompts_digest(texts))


def _layout(stats: ComponentStats) -> tuple[int, int]:
    layers, heads = stats.head_sum.shape
    return int(layers), int(heads)


def _stored(directory: Path, prompts: PromptSet, layout: tuple[int, int]) -> VersionStats | None:
    """A usable aggregate result in `directory`: this prompt set's cache first, then the newest
    other aggregate JSON over as many prompts at TAU that is newer than the weights."""
    from lmscope.explain.circuit_diff import stats_from_dict
    from lmscope.explain.errors import ExplainInputError

    weights = [p.stat().st_mtime for p in directory.glob("*.safetensors")]
    newest = max(weights, default=0.0)
    mine = directory / f"{CACHE_PREFIX}{prompts.sha256[:16]}.json"
    others = [p for p in directory.glob("*.json") if p != mine and p.name not in _NOT_STORED]
    others.sort(key=lambda p: -p.stat().st_mtime)  # the newest first
    for path in ([mine] if mine.is_file() else []) + others:
        try:
            if path.stat().st_size > _MAX_STORED_BYTES or path.stat().st_mtime < newest:
                continue
            stats = stats_from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, ExplainInputError):
            continue  # not an aggregate result (or unreadable): not ours to judge
        recorded = stats.meta.get("prompts_sha256")
        version = stats.meta.get("lmscope_version", __version__)
        shard = stats.meta.get("shard", [0, 1])
        if (
            stats.n_prompts == len(prompts.texts)
            and math.isclose(stats.tau, TAU)
            and recorded in (None, prompts.sha256)
            and version == __version__
            and shard in ([0, 1], "all")
            and _layout(stats) == layout
        ):
            return VersionStats(str(directory), stats, f"reused {path.name}")
    return None


def _layout_of(directory: Path) -> tuple[int, int] | None:
    try:
        data = json.loads((directory / "config.json").read_text())
        return int(data["n_layers"]), int(data["n_heads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def version_stats(model: str, prompts: PromptSet, progress: Progress | None = None) -> VersionStats:
    """The aggregate of `model` (a name or a directory) over `prompts`: reused when stored in
    its checkpoint directory, else computed (and cached there for lmscope checkpoints);
    `progress` hears of each computation before it starts."""
    from lmscope.zoo.checkpoint import is_checkpoint

    directory = Path(model)
    checkpoint = directory.is_dir() and is_checkpoint(directory)
    if checkpoint:
        layout = _layout_of(directory)
        found = _stored(directory, prompts, layout) if layout else None
        if found is not None:
            return found
    elif directory.is_file() and directory.suffix == ".json":
        raise DocError(f"{model} is a facts file; --circuits needs a model lmscope can run")
    if progress is not None:
        progress(f"aggregating {len(prompts.texts)} prompt(s) on {model}")
    stats = _compute(model, prompts)
    origin = "computed"
    if checkpoint:
        target = directory / f"{CACHE_PREFIX}{prompts.sha256[:16]}.json"
        origin = _cache(stats, target) or origin
    return VersionStats(model, stats, origin)


def _compute(model: str, prompts: PromptSet) -> ComponentStats:
    from lmscope.explain.aggregate import aggregate
    from lmscope.explain.errors import ExplainInputError
    from lmscope.zoo.registry import load

    loaded = load(model)
    if loaded.tokenizer is None:
        raise DocError(f"{model} has no tokenizer, so the prompts cannot be encoded; save the "
                       "checkpoint with its tokenizer, or drop --circuits")  # fmt: skip
    ids = [list(loaded.tokenizer.encode(t)) for t in prompts.texts]
    try:
        stats = aggregate(loaded.model, ids, tau=TAU, name=model)
    except ExplainInputError as err:
        raise DocError(f"{model}, prompts of {prompts.source}: {err}") from None
    stats.meta.update({"prompts_sha256": prompts.sha256, "prompts_file": prompts.source,
                       "lmscope_version": __version__})  # fmt: skip
    return stats


def _cache(stats: ComponentStats, target: Path) -> str | None:
    """Store the result (with the neuron tables) atomically; a read-only directory is fine."""
    from lmscope.files import atomic_write_text

    data = stats.to_dict()  # with the tables unrounded, so a reused result equals a fresh one
    data["head_mean"] = stats.head_mean.tolist()
    data["head_std"] = stats.head_std.tolist()
    data["route_frequency"] = stats.route_frequency.tolist()
    data["neuron_mean"] = stats.neuron_mean.tolist()
    data["neuron_std"] = stats.neuron_std.tolist()
    try:
        atomic_write_text(target, json.dumps(data))
    except OSError:
        return None
    return f"computed, cached in {target.name}"


def _rows(rows: list[dict[str, Any]], old: ComponentStats, new: ComponentStats) -> list[Any]:
    """circuit_diff's rows with the on-route frequencies of heads added; changes under NOISE
    (the rounding of a stored result) left out."""
    out = []
    for row in rows:
        if abs(row["delta"]) < NOISE:
            continue
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
        name = row["component"]
        if "H" in name:
            layer, head = (int(x) for x in name[1:].split("H"))
            row["on_route_old"] = round(float(old.route_frequency[layer, head]), 4)
            row["on_route_new"] = round(float(new.route_frequency[layer, head]), 4)
        out.append(row)
    return out


def check_top(top: int) -> int:
    if top < 1:
        raise DocError(f"--circuit-top must be at least 1, got {top}")
    return top


def incomparable(old: VersionStats, new: VersionStats) -> str | None:
    """Why the two versions' heads cannot be compared, or None when they can."""
    a, b = _layout(old.stats), _layout(new.stats)
    if a == b:
        return None
    return (f"{old.label} has {a[0]} layers x {a[1]} heads and {new.label} {b[0]} x {b[1]}: "
            "the heads cannot be compared")  # fmt: skip


def compare(old: VersionStats, new: VersionStats, prompts: PromptSet, top: int) -> dict[str, Any]:
    """The circuit facts of going from `old` to `new`; DocError when the heads differ."""
    from lmscope.explain.circuit_diff import circuit_diff
    from lmscope.explain.errors import ExplainInputError

    reason = incomparable(old, new)
    if reason:
        raise DocError(f"{reason}; compare checkpoints of one architecture (or drop --circuits)")
    check_top(top)
    try:
        diff = circuit_diff(old.stats, new.stats, k=top)
    except ExplainInputError as err:
        raise DocError(f"{old.label} and {new.label}: {err}") from None
    neurons = [v.label for v in (old, new) if not v.stats.neuron_sum.numel()]
    return {
        "old": old.label,
        "new": new.label,
        "prompts": prompts.source,
        "prompts_sha256": prompts.sha256,
        "n_prompts": len(prompts.texts),
        "tau": TAU,
        "origin": {"old": old.origin, "new": new.origin},
        "gained": _rows(diff.gained, old.stats, new.stats),
        "lost": _rows(diff.lost, old.stats, new.stats),
        "head_delta": [[round(float(v), 6) for v in row] for row in diff.head_delta.tolist()],
        "neurons_missing": neurons,  # versions whose stored result has no neuron tables
    }


def _row_line(kind: str, row: dict[str, Any]) -> str:
    text = (f"{kind} {row['component']}: {num(row['base'])} -> {num(row['other'])} "
            f"({'+' if row['delta'] >= 0 else ''}{num(row['delta'])})")  # fmt: skip
    if "on_route_old" in row:
        text += (f", on the route for {row['on_route_old']:.0%} -> {row['on_route_new']:.0%} "
                 "of the prompts")  # fmt: skip
    return text


def circuit_lines(facts: dict[str, Any]) -> list[str]:
    """The narration of one comparison (or of why there is none)."""
    if "unavailable" in facts:
        return [f"- circuits: not compared ({facts['unavailable']})"]
    scope = "importance at the last token"
    if facts["neurons_missing"]:
        scope += f"; heads only, no neuron tables stored for {', '.join(facts['neurons_missing'])}"
    lines = [f"- circuit changes over the {facts['n_prompts']} prompt(s) of {facts['prompts']} "
             f"({scope}):"]  # fmt: skip
    rows = [_row_line("gained", r) for r in facts["gained"]]
    rows += [_row_line("lost", r) for r in facts["lost"]]
    return lines + [f"    {r}" for r in rows or ["no head or neuron changed importance"]]


def history_html(result: dict[str, Any]) -> str:
    """A self-contained page of a diff or history result: its text, and for each compared step
    the [layers, heads] heatmap of importance changes (red gained, blue lost)."""
    import html

    import torch

    from lmscope.explain.circuit_diff import heatmap_svg

    steps = result.get("steps") or [result]
    maps = []
    for step in steps:
        facts = step.get("circuits") or {}
        if "head_delta" in facts:
            maps.append(
                f"<h2>{html.escape(facts['old'])} &rarr; {html.escape(facts['new'])}</h2>"
                "<p>head importance change (rows are layers, columns heads)</p>"
                + heatmap_svg(torch.tensor(facts["head_delta"], dtype=torch.float64))
            )
    return (
        "<!doctype html><meta charset='utf-8'><title>lmscope version history</title>"
        f"<h1>Version history</h1><pre>{html.escape(result['text'])}</pre>{''.join(maps)}"
    )
