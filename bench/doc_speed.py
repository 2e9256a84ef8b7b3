"""How fast `lmscope doc` is, and how much of the embedded writer's prose the verifier keeps.

    python bench/doc_speed.py                # facts, template card, full card (embedded writer)
    python bench/doc_speed.py --no-writer    # skip the (slow) writer figure

Prints seconds for: facts of smollm2-135m (probe included), the template-only card from those
facts, and the full card with the embedded smollm2-135m writer; then, per section, how many
generated sentences the verifier kept. Times are same-run figures on this machine, not
pass/fail thresholds (targets: facts < 5 s, template card < 5 s, full card < 60 s).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--no-writer", action="store_true", help="skip the full-card figure")
    args = parser.parse_args()

    from lmscope.document.card import build_card
    from lmscope.document.facts import loaded_facts
    from lmscope.zoo.registry import load

    loaded = load(args.model)  # not timed: the model is loaded once by whichever command
    start = time.perf_counter()
    facts = loaded_facts(loaded)
    t_facts = time.perf_counter() - start
    start = time.perf_counter()
    build_card(facts)
    t_card = time.perf_counter() - start
    print(f"facts ({args.model}, probe included): {t_facts:6.2f} s")
    print(f"template-only card:                 {t_card:6.2f} s")
    if args.no_writer:
        return
    from lmscope.document.writer import EmbeddedWriter

    start = time.perf_counter()
    writer = EmbeddedWriter(args.model)
    t_load = time.perf_counter() - start
    start = time.perf_counter()
    card = build_card(facts, writer)
    t_full = time.perf_counter() - start
    print(f"full card, embedded writer:         {t_full:6.2f} s (+ {t_load:.2f} s writer load)")
    assert card.prose is not None
    print(f"{'section':28} generated  kept  share")
    total_g = total_k = 0
    for section, stats in card.prose["sections"].items():
        g, k = stats["generated"], stats["kept"]
        total_g, total_k = total_g + g, total_k + k
        share = f"{k / g:5.0%}" if g else "    -"
        print(f"{section:28} {g:9d} {k:5d}  {share}")
    print(f"{'all':28} {total_g:9d} {total_k:5d}  {total_k / max(total_g, 1):5.0%}")


if __name__ == "__main__":
    main()
