"""Callbacks shared by the stages."""

from __future__ import annotations

import time

import lightning as L


class TokenThroughput(L.Callback):
    """Logs ``throughput/tokens_per_s``: non-padding tokens trained on per second, over all processes.

    Time is measured from the start to the end of each training batch (forward, backward, optimizer step),
    so validation and checkpointing are not counted. ``total_tokens`` and ``total_seconds`` sum over the fit.
    A batch with a ``comparisons`` entry (the reward stage) also gives ``throughput/comparisons_per_s``.
    """

    def __init__(self) -> None:
        self.total_comparisons = 0
        self.total_tokens = 0
        self.total_seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._start
        tokens = int(batch["attention_mask"].sum()) * trainer.world_size
        self.total_tokens += tokens
        self.total_seconds += seconds
        pl_module.log("throughput/tokens_per_s", tokens / max(seconds, 1e-9), on_step=True, on_epoch=False)
        if "comparisons" in batch:
            comparisons = int(batch["comparisons"]) * trainer.world_size
            self.total_comparisons += comparisons
            pl_module.log("throughput/comparisons_per_s", comparisons / max(seconds, 1e-9), on_step=True, on_epoch=False)

    @property
    def tokens_per_s(self) -> float:
        return self.total_tokens / self.total_seconds if self.total_seconds else 0.0

    @property
    def comparisons_per_s(self) -> float:
        return self.total_comparisons / self.total_seconds if self.total_seconds else 0.0
