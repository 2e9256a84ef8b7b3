"""Writing a card directory (all or nothing) and answering for a card in other formats."""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

from lmscope.document.card import Card, build_card
from lmscope.files import atomic_write_text, new_temp_dir, replace_dir

CARD_FILES = ("README.md", "card.html", "facts.json", "card.jsonld", "sentences.json")


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"


def write_card_dir(card: Card, out: Path) -> Path:
    """Write every card file into a fresh temp directory beside `out`, then rename it into
    place: `out` is never half-written."""
    out = Path(out)
    tmp = new_temp_dir(f".{out.name}.tmp-", out.parent)
    try:
        (tmp / "README.md").write_text(card.markdown)
        (tmp / "card.html").write_text(card.html)
        (tmp / "facts.json").write_text(dumps(card.facts))
        (tmp / "card.jsonld").write_text(dumps(card.jsonld))
        (tmp / "sentences.json").write_text(dumps({"prose": card.prose, "sections": card.sections}))
        replace_dir(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_facts(facts: dict[str, Any], out: Path) -> Path:
    atomic_write_text(Path(out), dumps(facts))
    return Path(out)


def write_card(
    checkpoint_dir: str | Path, no_llm: bool = True, out: str | Path | None = None
) -> Path:
    """The trainer's hook: document a finished checkpoint into `checkpoint_dir/card` (or `out`)
    with the template-only card (no probe run, so it costs well under a second)."""
    from lmscope.document.sources import collect_facts
    from lmscope.document.writer import make_writer

    directory = Path(checkpoint_dir)
    facts = collect_facts(str(directory), probe=False)
    writer = None if no_llm else make_writer(None, None)
    return write_card_dir(build_card(facts, writer), Path(out) if out else directory / "card")


# Cards of served models, built once per model object (weights do not change while served).
_SERVED: weakref.WeakKeyDictionary[Any, Card] = weakref.WeakKeyDictionary()


def card_response(loaded: Any, accept: str | None) -> tuple[str, str]:
    """(content, media_type) of a served model's card for an Accept header: markdown by
    default, HTML for text/html, the facts JSON for application/json, JSON-LD for
    application/ld+json. Template-only and without the probe, so it answers fast; built once
    per model and kept while the model lives."""
    from lmscope.document.facts import loaded_facts

    card = _SERVED.get(loaded.model)
    if card is None:
        card = _SERVED[loaded.model] = build_card(loaded_facts(loaded, probe=False))
    wanted = (accept or "").lower()
    if "application/ld+json" in wanted:
        return dumps(card.jsonld), "application/ld+json"
    if "application/json" in wanted:
        return dumps(card.facts), "application/json"
    if "text/html" in wanted:
        return card.html, "text/html; charset=utf-8"
    return card.markdown, "text/markdown; charset=utf-8"
