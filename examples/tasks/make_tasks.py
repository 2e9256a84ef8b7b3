"""Build the example task data from the shared corpora (deterministic; re-run to regenerate).

    python examples/tasks/make_tasks.py [--data ../shared/data]

Writes, beside this file:
- kjv_completion.jsonl: 200 verses, prompt = the first half of the verse's words, reference =
  the rest (for BLEU/chrF);
- kjv_testament.jsonl: 400 verses labelled Old or New Testament, in the corpus's own proportion
  (the Old Testament is verses 1-23145 of 31103: about 3 to 1, deliberately imbalanced);
- shakespeare_speaker.jsonl: 300 speeches of the four most frequent speakers, labelled with the
  speaker (imbalanced in the play's own proportions).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
OLD_TESTAMENT_VERSES = 23145  # Malachi 4:6 is line 23145; Matthew 1:1 is line 23146


def write_jsonl(path: Path, items: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    tmp.replace(path)
    print(f"wrote {path.name}: {len(items)} items")


def every_nth(items: list, count: int) -> list:  # type: ignore[type-arg]
    step = max(1, len(items) // count)
    return items[::step][:count]


def shuffled(items: list) -> list:
    """A fixed shuffle, so that `--limit N` takes a mix of classes rather than the first book."""
    items = list(items)
    random.Random(0).shuffle(items)
    return items


def kjv_tasks(kjv: Path) -> None:
    verses = kjv.read_text(encoding="utf-8").splitlines()
    completion = []
    for verse in every_nth([v for v in verses if len(v.split()) >= 8], 200):
        words = verse.split()
        half = len(words) // 2
        completion.append({"prompt": " ".join(words[:half]), "reference": " ".join(words[half:])})
    write_jsonl(HERE / "kjv_completion.jsonl", completion)
    labelled = [
        {"verse": v, "label": "Old" if i < OLD_TESTAMENT_VERSES else "New"}
        for i, v in enumerate(verses)
    ]
    write_jsonl(HERE / "kjv_testament.jsonl", shuffled(every_nth(labelled, 400)))


def shakespeare_task(text: Path) -> None:
    speeches = []
    for block in re.split(r"\n\s*\n", text.read_text(encoding="utf-8")):
        lines = block.strip().splitlines()
        if len(lines) >= 2 and lines[0].endswith(":"):
            speech = " ".join(lines[1:])
            if len(speech.split()) >= 6:
                speeches.append({"speech": speech[:400], "label": lines[0][:-1].title()})
    top = [name for name, _ in Counter(s["label"] for s in speeches).most_common(4)]
    chosen = [s for s in speeches if s["label"] in top]
    write_jsonl(HERE / "shakespeare_speaker.jsonl", shuffled(every_nth(chosen, 300)))
    print(f"speakers: {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=HERE.parents[2] / "shared" / "data")
    args = parser.parse_args()
    kjv_tasks(args.data / "kjv.txt")
    shakespeare_task(args.data / "tinyshakespeare.txt")


if __name__ == "__main__":
    main()
