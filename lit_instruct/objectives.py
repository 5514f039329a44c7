"""The math of InstructGPT, as pure functions: tensors in, tensors out; no module state, no Trainer. At the end, the
measures of reward over-optimisation (Gao et al. 2022): best-of-n's expected score and KL, and the gold-reward fits.

Shapes are in the comments: ``b`` batch, ``t`` sequence length, ``v`` vocabulary.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token under ``logits``; 0 where the label is :data:`IGNORE_INDEX`.

    logits: (b, t, v), predicting position t+1 from position t; labels: (b, t) aligned with the input ids.
    Returns (b, t-1): entry ``[i, j]`` is ``log p(labels[i, j+1] | prefix)``.
    """
    b, t, v = logits.shape
    # Shift the labels rather than the logits: a (b*t, v) view of contiguous logits goes into the fused kernel
    # without a copy (slicing and transposing the logits instead made the loss 6x slower at 8 x 256 x 4096).
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)  # (b*t,), the last position ignored
    logp = -F.cross_entropy(logits.reshape(b * t, v).float(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return logp.view(b, t)[:, :-1]  # 0 where ignored


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


def ranking_loss(
    rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor, pair_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """InstructGPT's K-way ranking loss, all C(K,2) comparisons of a prompt as one batch element.

    For each prompt, ``-mean over its non-tied pairs of log sigmoid(r_better - r_worse)`` (the paper's
    ``1/C(K,2)`` weighting, with tied pairs dropped), then the mean over prompts, so every prompt weighs the
    same whatever its K. Each completion's reward is computed once; K varies across the batch through ``mask``.

    rewards: (b, k) float; ranks: (b, k) long; mask: (b, k) bool; pair_mask: (b, k, k) bool or ``None``, False
    where the comparison of completions i and j is left out (both cut to fit the context, say): the prompt's mean
    is then over its remaining pairs. A prompt with no (remaining) non-tied pair is an error.
    Returns ``loss`` (scalar) and, for metrics, one entry per compared pair (flattened over the batch):
    ``pair_margin`` (r_better - r_worse) and ``pair_k`` (the K of the pair's prompt).
    """
    pairs = better_pairs(ranks, mask)  # (b, k, k)
    if pair_mask is not None:
        pairs = pairs & pair_mask
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


# ---------------------------------------------------------------------------------------------- learning rate
def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The learning-rate multiplier at ``step`` of the SFT and reward stages' schedule: linear warm-up from 0 over
    ``warmup_steps``, then half a cosine from 1 down to ``min_lr_ratio`` at ``total_steps`` (the same numbers as
    transformers' ``get_cosine_with_min_lr_schedule_with_warmup``, without importing its trainer, which imports peft
    and bitsandbytes when they are installed)."""
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
    return max(0.0, factor * (1 - min_lr_ratio) + min_lr_ratio)


# ---------------------------------------------------------------------------------------------- PPO
# Shapes: b rollouts, t response tokens; ``mask`` (b, t) is 1 on response tokens up to and including the last
# (EOS or the length limit) and 0 on padding after it.


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (over everything, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``x`` where ``mask`` is 1."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    return masked_mean((x - mean) ** 2, mask) * n / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean, unless ``shift_mean`` is False) over the masked entries;
    masked-out entries become 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a (b, t) mask (0 for an empty row): the last real token of a left- or
    right-padded batch, the last response token of a rollout."""
    t = mask.shape[1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    return (positions * mask.long()).amax(dim=1)


def kl_penalized_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of InstructGPT's objective: ``-kl_coef * (logp - logp_ref)`` at every response token, plus
    the reward model's score at the last response token.

    logprobs, ref_logprobs, mask: (b, t); scores: (b,). Returns (rewards, kl), both (b, t) and 0 on padding.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index(mask)] += scores.to(rewards.dtype)
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, discount: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (the episode ends at the last masked token).

    rewards, values, mask: (b, t). ``delta_t = r_t + discount * V_{t+1} - V_t`` with ``V`` = 0 past the end;
    ``A_t = delta_t + discount * lam * A_{t+1}``. Returns (advantages, returns = advantages + values), 0 on padding.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + discount * next_value - values[:, t]
        next_advantage = (delta + discount * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> dict[str, torch.Tensor]:
    """PPO's clipped surrogate, ``-min(ratio * A, clip(ratio, 1-clip, 1+clip) * A)``, averaged over response tokens.

    Also returns ``clipfrac`` (share of tokens where the clipped term was chosen) and ``approxkl``
    (``0.5 * mean((logp - logp_old)^2)``). All inputs (b, t).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return {
        "loss": masked_mean(torch.maximum(unclipped, clipped), mask),
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
    }


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> dict[str, torch.Tensor]:
    """The clipped value loss ``0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2)`` over response tokens, and
    ``clipfrac``. All inputs (b, t)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    return {
        "loss": 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask),
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
    }


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, from its log-probabilities: (..., v) -> (...)."""
    return -(logp.exp() * logp).sum(-1)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[target - predicted] / Var[target]`` over masked entries."""
    return 1.0 - masked_var(target - predicted, mask) / masked_var(target, mask).clamp(min=1e-8)


class FixedKLController:
    """A constant KL coefficient (the paper: beta = 0.02)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al.'s controller: ``err = clip(KL/target - 1, -0.2, 0.2); beta *= 1 + err * n_steps / horizon``.

    ``kl`` is the mean KL per response (nats), ``n_steps`` the episodes since the last update.
    """

    def __init__(self, kl_coef: float, target: float, horizon: float) -> None:
        super().__init__(kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------------- over-optimisation
# Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization": the gold reward of a policy optimised against a
# proxy reward model, as a function of d = sqrt(KL(policy || initial policy)), for best-of-n sampling and for RL.


def best_of_n_expected(scores: torch.Tensor, n: int, key: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unbiased estimate of ``E[max of n draws]`` from ``k >= n`` samples of each prompt (Nakano et al. 2021,
    Gao et al. 2022): the mean of the max over all ``C(k, n)`` n-subsets of the k samples, in closed form.

    Sorted ascending, ``s_(1) <= ... <= s_(k)``, the i-th smallest is the max of ``C(i-1, n-1)`` of the subsets, so
    the estimate is ``sum_i C(i-1, n-1) / C(k, n) * s_(i)``. n = 1 gives the mean, n = k the max.
    scores: (..., k) float, one row of k scores per prompt (numpy arrays and lists are accepted). Returns (...).

    ``key`` (same shape): the score that picks the best of each subset, when it is not ``scores`` itself. Best-of-n
    against a proxy reward model scored by the gold one is ``best_of_n_expected(gold, n, key=proxy)``: the mean
    gold score of the proxy's pick over all n-subsets (samples are sorted by ``key``; ties in ``key`` are broken by
    sample order, as a sampler picking the first of equals would).
    """
    scores = torch.as_tensor(scores)
    scores = scores if scores.is_floating_point() else scores.double()
    k = scores.shape[-1]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= k:
        raise ValueError(f"best_of_n_expected: n must be an integer in [1, k={k}], got {n!r}")
    total = math.comb(k, n)  # exact integers: the ratio is rounded once, whatever the size of C(k, n)
    weights = torch.tensor([math.comb(i, n - 1) / total for i in range(k)], dtype=torch.float64)  # (k,), i = rank - 1
    if key is None:
        return (scores.double().sort(dim=-1).values * weights).sum(-1).to(scores.dtype)
    key = torch.as_tensor(key)
    if key.shape != scores.shape:
        raise ValueError(f"best_of_n_expected: key has shape {tuple(key.shape)}, scores {tuple(scores.shape)}")
    # a stable descending sort, reversed: ascending, and of equal keys the first sample last (it wins the subsets)
    order = key.double().flip(-1).argsort(dim=-1, stable=True)
    picked = scores.double().flip(-1).gather(-1, order)
    return (picked * weights).sum(-1).to(scores.dtype)


def kl_best_of_n(n: int | torch.Tensor) -> float | torch.Tensor:
    """KL(best-of-n policy || initial policy) = ``log n - (n - 1) / n`` nats (analytic, for continuous rewards)."""
    if isinstance(n, torch.Tensor):
        n = n.double()
        return torch.log(n) - (n - 1) / n
    if n < 1:
        raise ValueError(f"kl_best_of_n: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


class OveroptimizationFit(NamedTuple):
    """A fitted gold-reward curve R(d), d = sqrt(KL): its coefficients, where it peaks, and the KL there
    (``d_peak`` and ``kl_peak`` are ``inf`` when ``b <= 0``: the curve then never turns down)."""

    a: float
    b: float
    d_peak: float
    kl_peak: float


def _least_squares(columns: list[torch.Tensor], gold: torch.Tensor) -> tuple[float, float]:
    x = torch.stack(columns, dim=1)  # (m, 2)
    solution = torch.linalg.lstsq(x, gold[:, None]).solution  # (2, 1)
    return float(solution[0, 0]), float(solution[1, 0])


def _points(d, gold) -> tuple[torch.Tensor, torch.Tensor]:
    d, gold = torch.as_tensor(d, dtype=torch.float64).flatten(), torch.as_tensor(gold, dtype=torch.float64).flatten()
    if d.shape != gold.shape or d.numel() < 2:
        raise ValueError(f"a fit needs at least 2 (d, gold) points of equal number, got {d.numel()} d and {gold.numel()} gold")
    return d, gold


def fit_best_of_n(d, gold) -> OveroptimizationFit:
    """Least-squares fit of Gao et al.'s best-of-n form ``R(d) = d (a - b d)``, with ``d = sqrt(KL)`` and ``R`` the gold
    reward minus the initial policy's (the form has R(0) = 0). Linear in (a, b). It peaks at ``d* = a / (2 b)``.

    d, gold: (m,) points (tensors, arrays or lists)."""
    d, gold = _points(d, gold)
    a, b = _least_squares([d, -d * d], gold)
    d_peak = a / (2 * b) if b > 0 else math.inf
    return OveroptimizationFit(a, b, d_peak, d_peak**2)


def fit_rl(d, gold) -> OveroptimizationFit:
    """Least-squares fit of Gao et al.'s RL form ``R(d) = d (a - b log d)``, with ``d = sqrt(KL) > 0`` and ``R`` the gold
    reward minus the initial policy's. Linear in (a, b). It peaks where ``a - b (log d + 1) = 0``: ``d* = exp(a/b - 1)``.

    d, gold: (m,) points (tensors, arrays or lists); every d must be > 0 (log d)."""
    d, gold = _points(d, gold)
    if bool((d <= 0).any()):
        raise ValueError("fit_rl: every d = sqrt(KL) must be > 0 (the form has log d); leave out the initial policy's point")
    a, b = _least_squares([d, -d * torch.log(d)], gold)
    d_peak = math.exp(min(a / b - 1, 700.0)) if b > 0 else math.inf  # exp(700) ~ 1e304: no overflow
    return OveroptimizationFit(a, b, d_peak, d_peak**2)
