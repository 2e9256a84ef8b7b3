"""Checks every claim of a generated sentence against the facts it was written from.

A claim is a number (with its unit: K/M/B, thousand/million/billion, %, bytes, seconds...), a
name (a word with a capital inside, a digit, or a capital not at the sentence start) or a
comparative ("more than", "better", "state-of-the-art", ...). A number is supported when a fact
number equals it within the rounding the sentence shows (134.5M covers 134,515,008) or after a
unit change (45% = 0.45, 2 minutes = 120 s, 1.2 GB = 1.2e9 or 1.2 * 2^30 bytes); a name when it
occurs in the facts' text or in the template vocabulary; a comparative only when it compares two
supported numbers in the right direction. Anything else makes the sentence unsupported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

_SCALE = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6, "b": 1e9, "billion": 1e9,
          "g": 1e9, "t": 1e12, "trillion": 1e12}  # fmt: skip
_UNIT_FACTORS: dict[str, tuple[float, ...]] = {
    "%": (0.01, 1.0),
    "percent": (0.01, 1.0),
    "kb": (1e3, 2**10),
    "mb": (1e6, 2**20),
    "gb": (1e9, 2**30),
    "minute": (60.0,),
    "minutes": (60.0,),
    "hour": (3600.0,),
    "hours": (3600.0,),
    "ms": (1e-3,),
}
_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
          "hundred": 100, "dozen": 12, "half": 0.5, "twice": 2, "double": 2, "triple": 3}  # fmt: skip
NUMBER = re.compile(
    r"(?<![\w.])(?P<num>\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"\s?(?P<unit>%|percent\b|[kKmMbBgGtT]\b|thousand\b|million\b|billion\b|trillion\b|"
    r"kb\b|mb\b|gb\b|KB\b|MB\b|GB\b|minutes?\b|hours?\b|ms\b)?"
)
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
_TOKEN = re.compile(r"(?<![\d.,])[A-Za-z][A-Za-z0-9_\-./]*")
COMPARATIVES = re.compile(
    r"\b(more|less|fewer|larger|smaller|greater|higher|lower|bigger|better|worse|faster|slower|"
    r"outperform\w*|best|worst|state[- ]of[- ]the[- ]art|superior|inferior|most|least|"
    r"largest|smallest|highest|lowest|exceeds?)\b",
    re.IGNORECASE,
)
_BETWEEN = re.compile(
    r"(?P<a>\d[\d,.]*)\D{0,40}?\b(?P<cmp>more|larger|greater|higher|bigger|fewer|less|smaller|"
    r"lower)\s+than\b\D{0,40}?(?P<b>\d[\d,.]*)",
    re.IGNORECASE,
)


@dataclass
class Verdict:
    supported: bool
    unsupported: list[str] = field(default_factory=list)
    claims: int = 0


@dataclass
class FactIndex:
    """Numbers and words of a facts subset, ready for lookups."""

    numbers: list[float]
    text: str
    words: set[str]


def _walk(value: Any, numbers: list[float], strings: list[str]) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            numbers.append(float(value))
    elif isinstance(value, str):
        strings.append(value)
    elif isinstance(value, dict):
        numbers.append(float(len(value)))
        for key, item in value.items():
            strings.append(str(key))
            _walk(item, numbers, strings)
    elif isinstance(value, (list, tuple)):
        numbers.append(float(len(value)))
        for item in value:
            _walk(item, numbers, strings)


def index_facts(facts: Any, vocabulary: str = "") -> FactIndex:
    numbers: list[float] = []
    strings: list[str] = [vocabulary]
    _walk(facts, numbers, strings)
    for s in strings:  # numbers written inside fact strings ("L18H6", "blocks.3") count too
        numbers += [float(m) for m in re.findall(r"\d+(?:\.\d+)?", s)]
    text = " ".join(strings).lower()
    words = set(_TOKEN.findall(text))
    words |= {p for w in list(words) for p in re.split(r"[-./_]", w) if p}
    return FactIndex(sorted(set(numbers)), text, words)


def _precision(literal: str) -> float:
    """Half a unit in the last digit shown: '134.5' -> 0.05, '3' -> 0.5, '1e-3' -> tiny."""
    mantissa = literal.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exp = int(literal.lower().split("e")[1]) if "e" in literal.lower() else 0
    return 0.5 * 10.0 ** (exp - decimals)


def _matches(value: float, tolerance: float, index: FactIndex) -> bool:
    slack = tolerance * 1.0001 + 1e-12
    return any(abs(v - value) <= slack or abs(abs(v) - value) <= slack for v in index.numbers)


def number_supported(literal: str, unit: str | None, index: FactIndex) -> bool:
    value = float(literal.replace(",", ""))
    tol = _precision(literal.replace(",", ""))
    unit_key = (unit or "").lower()
    if unit_key in _SCALE:
        return _matches(value * _SCALE[unit_key], tol * _SCALE[unit_key], index)
    if unit_key in _UNIT_FACTORS:
        return any(_matches(value * f, tol * f, index) for f in _UNIT_FACTORS[unit_key]) or (
            _matches(value, tol, index)
        )
    return _matches(value, tol, index)


def _name_known(name: str, index: FactIndex) -> bool:
    """A name is known when it is a word of the facts, or every part of it is (L3H2 as written,
    'GPT-NeoX' from 'gpt' and 'neox')."""
    lowered = name.lower()
    if lowered in index.words:
        return True
    parts = [p for p in re.split(r"[-./_]", lowered) if p]
    return bool(parts) and all(p in index.words for p in parts)


def _names(sentence: str) -> list[str]:
    """Words that name something: an inner capital, a digit, or a capital after the start."""
    out = []
    for i, match in enumerate(_TOKEN.finditer(sentence)):
        word = match.group(0).strip(".-/")
        if not word:
            continue
        inner_cap = any(c.isupper() for c in word[1:])
        digit = any(c.isdigit() for c in word)
        starts = match.start() == 0 or sentence[: match.start()].rstrip().endswith(
            (".", ":", '"', "(")
        )
        if inner_cap or digit or (word[0].isupper() and i > 0 and not starts):
            out.append(word)
    return out


def _values(literal: str, unit: str | None) -> list[tuple[float, float]]:
    """(value, tolerance) readings of a number with its unit."""
    value = float(literal.replace(",", ""))
    tol = _precision(literal.replace(",", ""))
    unit_key = (unit or "").lower()
    if unit_key in _SCALE:
        return [(value * _SCALE[unit_key], tol * _SCALE[unit_key])]
    factors = _UNIT_FACTORS.get(unit_key, ())
    return [(value, tol), *((value * f, tol * f) for f in factors)]


def claims_of(sentence: str) -> tuple[list[list[tuple[float, float]]], set[str]]:
    """The numbers (each as its possible readings) and the names of a sentence."""
    names = _names(sentence)
    stripped = sentence
    for name in names:
        stripped = stripped.replace(name, " ")
    numbers = [_values(m.group("num"), m.group("unit")) for m in NUMBER.finditer(stripped)]
    numbers += [[(float(_WORDS[m.group(1).lower()]), 0.0)] for m in _WORD_NUMBER.finditer(stripped)]
    return numbers, {n.lower() for n in names}


def value_words(facts: Any) -> set[str]:
    """One-word string values of the facts ("llama", "rmsnorm", "embed"): claims too."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if value and " " not in value and len(value) <= 40:
                found.add(value.lower())
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(facts)
    return found


def keeps_claims(template: str, rewrite: str, values: set[str] | None = None) -> list[str]:
    """Claims of the template sentence that its rewrite lost (a rewrite must keep every number,
    name, quoted text and one-word fact value of the sentence it rewrites, so it cannot drift
    to another statement)."""
    t_numbers, t_names = claims_of(template)
    r_numbers, r_names = claims_of(rewrite)
    lost = [f"name {n!r} dropped" for n in sorted(t_names - r_names)]
    lost += [f"quote {q!r} dropped" for q in re.findall(r'"([^"]+)"', template) if q not in rewrite]
    t_words = {w.lower().strip(".,;:()") for w in template.split()}
    r_words = {w.lower().strip(".,;:()") for w in rewrite.split()}
    lost += [f"value {w!r} dropped" for w in sorted((t_words & (values or set())) - r_words)]
    for readings in t_numbers:
        found = any(
            abs(v - w) <= max(tv, tw) * 1.0001 + 1e-12
            for v, tv in readings
            for other in r_numbers
            for w, tw in other
        )
        if not found:
            lost.append(f"number {readings[0][0]:g} dropped")
    return lost


def verify_sentence(sentence: str, index: FactIndex) -> Verdict:
    """Every number, name and comparative of `sentence` checked against `index`."""
    problems: list[str] = []
    claims = 0
    stripped = sentence
    for name in _names(sentence):
        claims += 1
        if not _name_known(name, index):
            problems.append(f"name {name!r}")
        stripped = stripped.replace(name, " ")  # digits inside names are part of the name
    for match in NUMBER.finditer(stripped):
        claims += 1
        if not number_supported(match.group("num"), match.group("unit"), index):
            problems.append(f"number {match.group(0).strip()!r}")
    for match in _WORD_NUMBER.finditer(stripped):
        claims += 1
        if not _matches(float(_WORDS[match.group(1).lower()]), 0.0, index):
            problems.append(f"number word {match.group(1)!r}")
    between = list(_BETWEEN.finditer(stripped))
    for match in COMPARATIVES.finditer(stripped):
        claims += 1
        inside = any(m.start() <= match.start() < m.end() for m in between)
        if not inside and match.group(0).lower() not in index.text:
            problems.append(f"comparative {match.group(0)!r}")
    for m in between:
        a, b = (float(m.group(k).rstrip(".,").replace(",", "") or 0) for k in ("a", "b"))
        bigger = m.group("cmp").lower() in ("more", "larger", "greater", "higher", "bigger")
        if (a <= b) if bigger else (a >= b):
            problems.append(f"comparison {m.group(0)!r} is false")
    return Verdict(not problems, problems, claims)
