"""Metrics the stages log that torchmetrics does not have."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class PairAccuracyByK(Metric):
    """Pairwise accuracy per K (the number of completions of the pair's prompt); K >= ``max_k`` share a bucket.

    The counts are summed across processes, so every process reports the same Ks (a per-K metric that only
    some processes had updated would deadlock the collective). They are integers, so casting the module to bf16
    (``precision: bf16-true``) leaves them exact.
    """

    full_state_update = False

    def __init__(self, max_k: int) -> None:
        super().__init__()
        self.max_k = max_k
        self.add_state("correct", default=torch.zeros(max_k + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(max_k + 1, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pair_margin: torch.Tensor, pair_k: torch.Tensor) -> None:
        k = pair_k.clamp(max=self.max_k).long()
        self.correct.index_add_(0, k, (pair_margin > 0).long())
        self.total.index_add_(0, k, torch.ones_like(k))

    def compute(self) -> dict[int, torch.Tensor]:
        return {k: self.correct[k].double() / self.total[k] for k in range(2, self.max_k + 1) if self.total[k] > 0}
