"""Which rows each optimizer step trains on: a deterministic, resumable stream.

Epoch e visits every row once, in an order that depends only on (seed, e): a seeded shuffle,
or for the first `curriculum_epochs` epochs the curriculum order (ascending length or score, ties
shuffled). The stream's position is just (epoch, cursor), saved with every checkpoint.

A step takes the next `global_batch` rows; process r of W, micro-batch m of A gets the slice
[(r * A + m) * B, ... + B), so W processes with batch B see exactly the rows that one process
with batch W * B would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StreamPosition:
    epoch: int = 0
    cursor: int = 0


class RowStream:
    def __init__(
        self,
        n_rows: int,
        seed: int,
        curriculum_keys: np.ndarray | None = None,
        curriculum_epochs: int = 1,
    ) -> None:
        if n_rows < 1:
            raise ValueError("no training rows")
        self.n_rows = n_rows
        self.seed = seed
        self.keys = curriculum_keys
        self.curriculum_epochs = curriculum_epochs
        self.position = StreamPosition()
        self._order_epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.n_rows)
            if self.keys is not None and epoch < self.curriculum_epochs:
                order = order[np.argsort(self.keys[order], kind="stable")]
            self._order, self._order_epoch = order, epoch
        return self._order

    def next(self, count: int) -> np.ndarray:
        """The next `count` row indices, running on into the next epoch when one ends."""
        taken: list[np.ndarray] = []
        need = count
        while need > 0:
            order = self.order(self.position.epoch)
            part = order[self.position.cursor : self.position.cursor + need]
            taken.append(part)
            need -= len(part)
            self.position.cursor += len(part)
            if self.position.cursor >= self.n_rows:
                self.position = StreamPosition(self.position.epoch + 1, 0)
        return np.concatenate(taken)


def micro_slices(
    indices: np.ndarray, rank: int, world_size: int, grad_accum: int, batch_size: int
) -> list[np.ndarray]:
    """This process's micro-batches of one global batch."""
    slices = []
    for micro in range(grad_accum):
        start = (rank * grad_accum + micro) * batch_size
        slices.append(indices[start : start + batch_size])
    return slices
