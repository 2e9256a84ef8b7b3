"""JSON-LD: schema.org CreativeWork with an additionalType for the model (as FAIR4ML does)."""

from __future__ import annotations

from typing import Any

from lmscope import __version__
from lmscope.document.card_md import front_matter

FAIR4ML_MODEL = "https://w3id.org/fair4ml#MLModel"


def _prop(name: str, value: Any) -> dict[str, Any]:
    return {"@type": "PropertyValue", "name": name, "value": value}


def render_jsonld(facts: dict[str, Any], description: str) -> dict[str, Any]:
    model, ov = facts["model"], facts["overview"]
    meta = front_matter(facts)
    doc: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "CreativeWork",
        "additionalType": FAIR4ML_MODEL,
        "name": model["name"],
        "description": description,
        "dateCreated": facts["provenance"]["created"],
        "license": meta["license"],
        "keywords": meta["tags"],
        "creator": {
            "@type": "SoftwareApplication",
            "name": "lmscope",
            "softwareVersion": __version__,
        },
        "additionalProperty": [
            _prop(k, v)
            for k, v in (
                ("parameters", ov["parameters"].get("total")),
                ("family", ov.get("family")),
                ("task", ov.get("task")),
                ("contextLength", ov.get("context_length")),
                ("vocabularySize", ov.get("vocab_size")),
                ("dtype", ov.get("dtype")),
            )
            if v is not None
        ],
    }
    if meta.get("base_model"):
        doc["isBasedOn"] = meta["base_model"]
    checksum = ov.get("checksum")
    if checksum:
        doc["identifier"] = f"sha256:{checksum['value']}"
    if ov.get("file_size_bytes"):
        doc["contentSize"] = f"{ov['file_size_bytes']} bytes"
    ev = facts.get("evaluation") or {}
    doc["additionalProperty"] += [
        _prop(f"{t['name']}/{name}", m["value"])
        for t in ev.get("tasks", [])
        for name, m in t["metrics"].items()
    ]
    return doc
