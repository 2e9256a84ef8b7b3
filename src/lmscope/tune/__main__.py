"""`python -m lmscope.tune SEARCH.yaml [--worker] [--storage URL]`: a tuning worker without the
CLI layer (what `lmscope tune --n-jobs N` starts N of)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cli.py does, before torch starts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmscope.tune")
    parser.add_argument("search", type=Path)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--study-dir", type=Path, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from lmscope.tune.errors import TuneError
    from lmscope.tune.run import fail_line, run_search

    try:
        return run_search(
            args.search,
            storage=args.storage,
            worker=args.worker,
            n_jobs=args.n_jobs,
            threads=args.threads,
            study_dir=args.study_dir,
        )
    except TuneError as err:
        return fail_line(err)


if __name__ == "__main__":
    sys.exit(main())
