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


def better_pairs(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ordered pairs (i, j) of one prompt's completions where i is strictly better than j (lower rank).

    ranks: (b, k) with 0 = best and equal values = tie; mask: (b, k), False on padding slots.
    Returns (b, k, k) bool: ``[p, i, j]`` is True when completion i beats completion j. Ties give no pair.
    """
    valid = mask[:, :, None] & mask[:, None, :]
    return (ranks[:, :, None] < ranks[:, None, :]) & valid


def ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """InstructGPT's K-way ranking loss, all C(K,2) comparisons of a prompt as one batch element.

    For each prompt, ``-mean over its non-tied pairs of log sigmoid(r_better - r_worse)`` (the paper's
    ``1/C(K,2)`` weighting, with tied pairs dropped), then the mean over prompts, so every prompt weighs the
    same whatever its K. Each completion's reward is computed once; K varies across the batch through ``mask``.

    rewards: (b, k) float; ranks: (b, k) long; mask: (b, k) bool. A prompt with no non-tied pair is an error.
    Returns ``loss`` (scalar) and, for metrics, one entry per compared pair (flattened over the batch):
    ``pair_margin`` (r_better - r_worse) and ``pair_k`` (the K of the pair's prompt).
    """
    pairs = better_pairs(ranks, mask)  # (b, k, k)
    n_pairs = pairs.sum(dim=(1, 2))  # (b,)
    if bool((n_pairs == 0).any()):
        raise ValueError("ranking_loss: a prompt has no non-tied pair of completions")
    margin = rewards[:, :, None] - rewards[:, None, :]  # (b, k, k): r_i - r_j
    pair_loss = -F.logsigmoid(margin.float()) * pairs
    per_prompt = pair_loss.sum(dim=(1, 2)) / n_pairs  # (b,)
    k = mask.sum(dim=1)  # (b,)
    return {
        "loss": per_prompt.mean(),
        "pair_margin": margin[pairs],
        "pair_k": k[:, None, None].expand_as(pairs)[pairs],
    }
