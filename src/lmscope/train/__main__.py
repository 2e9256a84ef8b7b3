"""`python -m lmscope.train CONFIG.yaml [overrides]`, e.g. under torchrun:

torchrun --nproc-per-node 2 -m lmscope.train examples/tinyshakespeare.yaml
"""

from __future__ import annotations

import typer

from lmscope.commands.train import train


def main() -> None:
    typer.run(train)


if __name__ == "__main__":
    main()
