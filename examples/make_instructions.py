"""Make a small instruction set (JSONL prompt/completion pairs) from a one-verse-per-line corpus:
the model sees the first half of a verse and learns to complete it.

    python examples/make_instructions.py ../shared/data/kjv.txt data/verses.jsonl --count 2000
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PROMPT = "Complete this verse from the King James Bible:\n{start}"


def make_pairs(lines: list[str], count: int, seed: int = 0) -> list[dict[str, object]]:
    verses = [line.strip() for line in lines if len(line.split()) >= 8]
    rng = random.Random(seed)
    rng.shuffle(verses)
    pairs = []
    for verse in verses[:count]:
        words = verse.split()
        cut = len(words) // 2
        pairs.append(
            {
                "prompt": PROMPT.format(start=" ".join(words[:cut])),
                "completion": " " + " ".join(words[cut:]),
                "length": len(words),  # a curriculum score column
            }
        )
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pairs = make_pairs(args.corpus.read_text().splitlines(), args.count, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    print(f"wrote {len(pairs)} pairs to {args.out}")


if __name__ == "__main__":
    main()
