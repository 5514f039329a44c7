"""Measuring policies.

- :mod:`~lit_instruct.evaluation.held_out`: a policy export through PPO-ptx validation (RM and judge scores, KL,
  held-out pretraining loss, length, EOS), as the pipeline's report and the study use it.
- :mod:`~lit_instruct.evaluation.harness`: the alignment tax on public NLP benchmarks through EleutherAI's
  lm-evaluation-harness (the ``tax`` extra): the InstructGPT paper's SQuADv2 / DROP / French-to-English items,
  bundled, or any harness task.
- :mod:`~lit_instruct.evaluation.answers`: the benchmarks' scoring (SQuAD F1, DROP F1), pure functions.
"""

from lit_instruct.evaluation.held_out import (
    HELD_OUT_METRICS,
    OPTIONAL_METRICS,
    measure_policy,
)

__all__ = ["HELD_OUT_METRICS", "OPTIONAL_METRICS", "measure_policy"]
