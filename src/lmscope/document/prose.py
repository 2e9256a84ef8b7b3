"""Sections rewritten by a writer and checked sentence by sentence: a generated sentence with
any unsupported claim, or one that lost a number or name of the template sentence it rewrites
(so it cannot drift to another statement), is dropped and its template sentence kept."""

from __future__ import annotations

from typing import Any

from lmscope.document.sections import SECTION_FACTS
from lmscope.document.templates import NOTES
from lmscope.document.verifier import index_facts, keeps_claims, value_words, verify_sentence
from lmscope.document.writer import Job, Writer

MIN_WORDS = 4


def section_facts(facts: dict[str, Any], section_id: str) -> dict[str, Any]:
    """The facts a section is written from (the layer table by its summary, not its rows)."""
    subset = {
        k: facts.get(k) for k in SECTION_FACTS.get(section_id, ()) if facts.get(k) is not None
    }
    layers: dict[str, Any] | None = subset.get("layers")
    if layers is not None:
        subset["layers"] = {k: v for k, v in layers.items() if k != "rows"}
    return subset


def _plausible(text: str) -> bool:
    words = text.split()
    return len(words) >= MIN_WORDS and text[-1:] in ".!" and text.isprintable()


def write_prose(
    facts: dict[str, Any], sections: list[dict[str, Any]], writer: Writer
) -> dict[str, Any]:
    """Rewrite `sections` in place (one writer call for the whole card, so a batched writer
    decodes every sentence together); returns per-section generated and kept counts."""
    stats: dict[str, Any] = {"writer": writer.name, "sections": {}}
    jobs: list[Job] = []
    for section in sections:
        subset = section_facts(facts, section["id"])
        jobs += [(section["title"], subset, s["text"]) for s in section["sentences"]]
    generated = iter(writer.rewrite(jobs) if jobs else [])
    for section in sections:
        subset = section_facts(facts, section["id"])
        templates = [s["text"] for s in section["sentences"]]
        vocabulary = " ".join([*templates, *NOTES.values(), section["title"]])
        index = index_facts(subset, vocabulary)
        values = value_words(subset)
        kept = 0
        for sentence in section["sentences"]:
            text = next(generated, "").strip()
            if not _plausible(text):
                sentence["rejected"] = {"text": text, "why": ["not a sentence"]}
                continue
            verdict = verify_sentence(text, index)
            lost = keeps_claims(sentence["text"], text, values)
            if verdict.supported and not lost:
                sentence.update(text=text, origin="llm", template=sentence["text"])
                kept += 1
            else:
                sentence["rejected"] = {"text": text, "why": verdict.unsupported + lost}
        stats["sections"][section["id"]] = {"generated": len(templates), "kept": kept}
    return stats
