"""PPO's two endless training streams, prompts and ptx pretraining blocks: global, resumable, split across processes.

Each stream is one global sequence that does not depend on the number of processes:

* prompts: pass 0, pass 1, ... over the training prompts, pass ``p`` in the order ``random.Random(seed + p).shuffle``
  gives (a rollout may take the end of one pass and the start of the next);
* ptx blocks: the training blocks in one seeded shuffled order, repeated.

A stream's position is the number of its items that all processes together have consumed. A step on ``W`` processes
that each take ``n`` items consumes the ``n * W`` items from the position on, split rank-major: rank ``r`` takes
global indices ``[position + r * n, position + (r + 1) * n)``, and the position moves on by ``n * W``. Checkpoints store
the positions only, so a run resumed on another number of processes ``W'`` continues at the next unconsumed global
index, re-split among its ``W'`` ranks: no prompt or block is repeated or skipped. (``data.rollout_batch_size`` is per
process, so the global rollout changes from ``rollout_batch_size * W`` to ``rollout_batch_size * W'`` prompts; set it
to ``rollout_batch_size * W / W'`` on resume to keep the global batch.)
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from torch.utils.data import IterableDataset

T = TypeVar("T")


def rank_slice(position: int, n: int, rank: int, world_size: int) -> range:
    """The global indices rank ``rank`` of ``world_size`` takes when each process takes ``n`` items at ``position``."""
    return range(position + rank * n, position + (rank + 1) * n)


def pass_order(size: int, seed: int, epoch: int) -> list[int]:
    """Pass ``epoch``'s order of ``size`` items (the prompt stream's reshuffle)."""
    order = list(range(size))
    random.Random(seed + epoch).shuffle(order)
    return order


class PromptStream(IterableDataset):
    """Endless batches of ``batch_size`` prompts for one process, from the global prompt stream (module docstring).

    ``start`` is the global position (prompts consumed by all processes) to begin at; each batch moves it on by
    ``batch_size * world_size``.
    """

    def __init__(self, prompts: Sequence[T], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if not prompts:
            raise ValueError("the prompt stream has no training prompts")
        self.prompts, self.batch_size, self.seed, self.rank, self.world_size = prompts, batch_size, seed, rank, world_size
        self.start = start
        self._orders: dict[int, list[int]] = {}  # the passes in use (at most two: a batch may straddle passes)

    def indices(self, position: int) -> list[int]:
        """The prompt indices (into ``prompts``) this rank takes at global ``position``."""
        size, out = len(self.prompts), []
        for g in rank_slice(position, self.batch_size, self.rank, self.world_size):
            epoch = g // size
            if epoch not in self._orders:
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = pass_order(size, self.seed, epoch)
            out.append(self._orders[epoch][g % size])
        return out

    def __iter__(self):
        position = self.start
        while True:
            yield [self.prompts[i] for i in self.indices(position)]
            position += self.batch_size * self.world_size


def ptx_indices(position: int, n: int, rank: int, world_size: int, size: int) -> list[int]:
    """The ptx block indices rank ``rank`` takes at global ``position`` when each process takes ``n`` of ``size``."""
    return [g % size for g in rank_slice(position, n, rank, world_size)]
