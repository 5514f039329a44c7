"""The math of InstructGPT, as pure functions: tensors in, tensors out; no module state, no Trainer.

Shapes are in the comments: ``b`` batch, ``t`` sequence length, ``v`` vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token under ``logits``; 0 where the label is :data:`IGNORE_INDEX`.

    logits: (b, t, v), predicting position t+1 from position t; labels: (b, t) aligned with the input ids.
    Returns (b, t-1): entry ``[i, j]`` is ``log p(labels[i, j+1] | prefix)``.
    """
    logits = logits[:, :-1].float()  # (b, t-1, v)
    targets = labels[:, 1:]  # (b, t-1)
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    logp = -F.cross_entropy(logits.transpose(1, 2), safe, reduction="none")  # (b, t-1)
    return logp * mask


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Causal LM loss: mean next-token negative log-likelihood over the tokens whose label is not ignored.

    Every counted token weighs the same, whichever sequence it is in (the SFT loss on response tokens; the
    pretraining and ptx loss on every token). logits: (b, t, v); labels: (b, t). Returns a scalar.
    """
    targets = labels[:, 1:]
    count = (targets != IGNORE_INDEX).sum()
    return -token_logprobs(logits, labels).sum() / count.clamp(min=1)
