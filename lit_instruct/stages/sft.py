"""SFT stage: fine-tune on demonstrations (prompt -> ideal response), loss on response tokens only."""

from __future__ import annotations

from lit_instruct.stages.lm import CausalLMModule


class SFTModule(CausalLMModule):
    """Supervised fine-tuning (InstructGPT section 3.5): next-token loss on the response tokens.

    All arguments are those of :class:`~lit_instruct.stages.lm.CausalLMModule`; the paper's settings are AdamW with
    betas (0.9, 0.95), cosine decay to 10% of the peak learning rate with no warm-up, residual dropout 0.2.
    The export (``export_dir``) is the starting point of the reward model and of PPO.
    """

    stage = "sft"
