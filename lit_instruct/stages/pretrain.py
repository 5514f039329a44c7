"""Pretrain stage: pretrain the embedded tiny model on ``pretrain.txt`` (causal LM loss on every token).

The embedded default has no pretrained model to start from; this stage makes one. Its text is the
pretraining distribution that PPO-ptx mixes in, and its held-out documents (:func:`pretrain_split`) measure
the alignment tax later.
"""

from __future__ import annotations

from lit_instruct.stages.lm import CausalLMModule


class PretrainModule(CausalLMModule):
    """Pretraining of the base model (the stand-in for GPT-3 in the embedded default).

    All arguments are those of :class:`~lit_instruct.stages.lm.CausalLMModule`.
    """

    stage = "pretrain"
