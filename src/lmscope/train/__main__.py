"""`python -m lmscope.train CONFIG.yaml [overrides]`, e.g. under torchrun:

torchrun --nproc-per-node 2 -m lmscope.train examples/tinyshakespeare.yaml

The same as `lmscope train`, without the CLI layer: this package never imports `commands/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before torch (imported below) starts the OpenMP runtime: idle OpenMP threads sleep instead of
# spinning, which on a shared machine makes training several times faster (as `lmscope` does in
# cli.py; a user's own OMP_WAIT_POLICY is kept). This module runs under torchrun, without cli.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lmscope.train", description="Train or fine-tune from a YAML config."
    )
    parser.add_argument("config", type=Path, help="YAML training config (see examples/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3")
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="continue from the newest checkpoint in out_dir (default: if there is one)",
    )
    parser.add_argument("--resume-from", type=Path, help="continue from this step checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from lmscope.data.errors import DataError
    from lmscope.model.config import ConfigError
    from lmscope.train.errors import TrainError
    from lmscope.train.launch import run_config
    from lmscope.zoo.errors import ZooError

    try:
        return run_config(
            args.config,
            list(args.overrides),
            resume=args.resume,
            resume_from=args.resume_from,
            print_config=args.print_config,
            command=f"{Path(sys.executable).name} -m lmscope.train",
        )
    except (TrainError, DataError, ConfigError, ZooError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
