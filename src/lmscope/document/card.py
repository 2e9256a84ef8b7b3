"""A card from facts: sections, optional verified prose, and the three renderings."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from lmscope.document.card_html import render_html
from lmscope.document.card_md import render_markdown
from lmscope.document.jsonld import render_jsonld
from lmscope.document.sections import build_sections
from lmscope.document.writer import Writer


@dataclass
class Card:
    facts: dict[str, Any]
    sections: list[dict[str, Any]]
    markdown: str
    html: str
    jsonld: dict[str, Any]
    prose: dict[str, Any] | None  # writer statistics, None for a template-only card


def build_card(facts: dict[str, Any], writer: Writer | None = None) -> Card:
    sections = build_sections(facts)
    stats = None
    if writer is not None:
        from lmscope.document.prose import write_prose

        stats = write_prose(facts, sections, writer)
    markdown = render_markdown(facts, sections, writer.name if writer else None)
    intro = markdown.split("\n# ", 1)[-1].split("\n", 2)[-1].split("\n## ", 1)[0].strip()
    first = next((s["text"] for s in sections[0]["sentences"]), facts["model"]["name"])
    return Card(
        facts=facts,
        sections=copy.deepcopy(sections),
        markdown=markdown,
        html=render_html(facts, sections, intro),
        jsonld=render_jsonld(facts, first),
        prose=stats,
    )
