"""PPO rollouts: sample responses with the policy, then score them with the frozen and trainable models.

Nothing here updates weights. ``generate`` samples and keeps the policy's logits; ``score_rollout`` turns those
into the policy's log-probs and runs one batched forward pass for each frozen or value model (reference log-probs,
critic values, reward-model score) over the same token sequences, so the reward model and the critic share the
policy's tokenisation (their tokenizers must match; the PPO module checks).

``make_rollout`` does both for a batch of prompts, the first step of each PPO iteration and of PPO's validation.

Shapes: ``b`` rollouts, ``q`` query (prompt) tokens, left-padded; ``r`` response tokens, right-padded.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, fields

import torch

from lit_instruct.data.batching import pad_with_mask, position_ids
from lit_instruct.objectives import (
    entropy_from_logprobs,
    explained_variance,
    masked_mean,
)


@dataclass
class Rollout:
    """One batch of episodes. Response tensors are (b, r); ``response_mask`` is 1 up to and including EOS."""

    query: torch.Tensor  # (b, q) left-padded prompt ids
    query_mask: torch.Tensor  # (b, q)
    response: torch.Tensor  # (b, r)
    response_mask: torch.Tensor  # (b, r)
    ended: torch.Tensor  # (b,) bool: the response emitted EOS
    logprobs: torch.Tensor | None = None  # (b, r) policy, at the sampling temperature
    ref_logprobs: torch.Tensor | None = None  # (b, r) reference
    values: torch.Tensor | None = None  # (b, r) critic
    scores: torch.Tensor | None = None  # (b,) reward model, normalised; the penalty where the response never ended
    reward_model_scores: torch.Tensor | None = None  # (b,) reward model, before any penalty
    entropy: torch.Tensor | None = None  # (b, r) policy entropy at each response position
    generation_logits: torch.Tensor | None = None  # (b, r, v) the policy's raw logits while sampling; freed once scored

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def select(self, index: torch.Tensor) -> "Rollout":
        """The episodes at ``index`` (a minibatch)."""
        return Rollout(**{f.name: (getattr(self, f.name)[index] if getattr(self, f.name) is not None else None) for f in fields(self)})

    def padding(self) -> torch.Tensor:
        """(2, b) on the CPU: each row's left query padding and its response length (one device sync)."""
        q = self.query_mask.shape[1]
        return torch.stack([q - self.query_mask.sum(1), self.response_mask.sum(1)]).cpu()

    def trimmed(self, padding: torch.Tensor | None = None) -> tuple["Rollout", int]:
        """The same episodes without the query columns that are padding in every row (left) and the response
        columns past the longest response (right): a minibatch drawn from a batch carries the batch's padding.
        ``padding``: these rows' :meth:`padding`, if already on the host. Returns the rollout and the number of
        response columns kept (slice other (b, r) tensors to match)."""
        padding = self.padding() if padding is None else padding
        keep_from, keep_to = int(padding[0].min()), int(padding[1].max())
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value.dim() < 2:
                out[f.name] = value
            elif f.name in ("query", "query_mask"):
                out[f.name] = value[:, keep_from:]
            else:
                out[f.name] = value[:, :keep_to]
        return Rollout(**out), keep_to


def response_mask(response: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask is 1 up to and including the first EOS (everything when there is none)."""
    is_eos = response == eos_token_id
    ended = is_eos.any(dim=1)
    first_eos = torch.where(ended, is_eos.float().argmax(dim=1), torch.full_like(ended, response.shape[1] - 1, dtype=torch.long))
    mask = (torch.arange(response.shape[1], device=response.device)[None] <= first_eos[:, None]).long()
    return mask, ended


@torch.no_grad()
def generate(
    policy,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    synced_gpus: bool = False,
    keep_logits: bool = True,
) -> Rollout:
    """Sample responses with the KV cache, stopping at EOS; the response is padded to the longest one in the batch.

    The policy's raw logits at each sampled position come back too (``generation_logits``): they are what a
    forward pass over the rollout would compute (same weights, eval mode), so scoring reuses them instead of
    running the policy again. ``keep_logits=False`` keeps none (``generation_logits`` is ``None``): for callers that
    only want the tokens, a (b, r, v) tensor less."""
    out = policy.generate(
        input_ids=query,
        attention_mask=query_mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=top_k if do_sample else None,
        top_p=top_p if do_sample else None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        synced_gpus=synced_gpus,
        return_dict_in_generate=True,
        output_logits=keep_logits,
    )
    response = out.sequences[:, query.shape[1]:]
    mask, ended = response_mask(response, eos_token_id)
    response = response.masked_fill(mask == 0, pad_token_id)
    logits = torch.stack(out.logits, dim=1) if keep_logits else None  # (b, r, v): one step per response position
    return Rollout(query=query, query_mask=query_mask, response=response, response_mask=mask, ended=ended, generation_logits=logits)


def _pad_columns(tensor: torch.Tensor, width: int, value) -> torch.Tensor:
    """``tensor`` (b, r, ...) right-padded with ``value`` to ``width`` columns."""
    extra = width - tensor.shape[1]
    if extra <= 0:
        return tensor
    return torch.cat([tensor, tensor.new_full((tensor.shape[0], extra, *tensor.shape[2:]), value)], dim=1)


def generate_in_batches(policy, query: torch.Tensor, query_mask: torch.Tensor, *, batch_size: int | None, pad_token_id: int,
                        **kwargs) -> Rollout:
    """:func:`generate` for ``batch_size`` prompts at a time (``None``: all at once), the parts joined into one
    rollout whose responses (and kept logits) are right-padded to the longest. Under ZeRO-3 with synced generation
    every process must run the same number of batches: it has as many prompts as the others."""
    if batch_size is None or batch_size >= query.shape[0]:
        return generate(policy, query, query_mask, pad_token_id=pad_token_id, **kwargs)
    if batch_size < 1:
        raise ValueError(f"rollout.generation_batch_size must be >= 1, got {batch_size}")
    parts = [generate(policy, query[i : i + batch_size], query_mask[i : i + batch_size], pad_token_id=pad_token_id, **kwargs)
             for i in range(0, query.shape[0], batch_size)]
    r = max(part.response.shape[1] for part in parts)
    logits = None
    if parts[0].generation_logits is not None:
        logits = torch.cat([_pad_columns(part.generation_logits, r, 0.0) for part in parts])
    return Rollout(query=query, query_mask=query_mask, response=torch.cat([_pad_columns(p.response, r, pad_token_id) for p in parts]),
                   response_mask=torch.cat([_pad_columns(p.response_mask, r, 0) for p in parts]),
                   ended=torch.cat([p.ended for p in parts]), generation_logits=logits)


def response_logits(model, rollout: Rollout) -> torch.Tensor:
    """Logits that predict each response token: (b, r, v). Only the last r + 1 positions go through the LM head
    (``logits_to_keep``): the unembedding of the query positions is never needed, and at small model sizes it is
    most of the forward pass."""
    mask = rollout.attention_mask
    r = rollout.response.shape[1]
    inputs = dict(input_ids=rollout.input_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    try:
        logits = model(**inputs, logits_to_keep=r + 1).logits
    except TypeError:  # a model class without logits_to_keep (custom code): the full sequence, then the slice
        logits = model(**inputs).logits
    return logits[:, -(r + 1) : -1]


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, entropy: bool = False):
    """log p(token) under ``logits / temperature``: (b, r, v), (b, r) -> (b, r); with ``entropy``, also the
    distribution's entropy at each position, from the same log-softmax."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (chosen, entropy_from_logprobs(logp)) if entropy else chosen


def critic_values(critic, rollout: Rollout) -> torch.Tensor:
    """The critic's value before each response token: (b, r)."""
    values = critic.values(rollout.input_ids, rollout.attention_mask)  # (b, q + r)
    q = rollout.query.shape[1]
    return values[:, q - 1 : -1]


def _scatter_rows(out: torch.Tensor | None, rows: torch.Tensor, part: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Write ``part`` (len(rows), r') into rows ``rows`` of a zero (b, r) tensor (created on first use)."""
    if out is None:
        out = part.new_zeros(shape)
    out[rows, : part.shape[1]] = part
    return out


@torch.no_grad()
def score_rollout(rollout: Rollout, *, reference, critic, reward_model, temperature: float, missing_eos_penalty: float | None,
                  policy=None, chunks: list[torch.Tensor] | None = None) -> Rollout:
    """Fill in the policy and reference log-probs, the critic's values (unless ``critic`` is ``None``: validation
    needs none) and the reward model's scores.

    The policy's log-probs come from the logits kept while sampling (no second policy pass) unless ``policy`` is
    given: then they are recomputed with one forward pass. Sampling logits equal a forward pass in float32 (to
    1e-6), not under bf16 autocast or in bf16 weights, where the KV-cache path and a full pass round differently and
    the first PPO minibatch would start with a ratio that is not 1.

    ``chunks``: row index tensors (the first PPO epoch's minibatches). Reference, critic and the recomputed policy
    then run per chunk, with the chunk's padding trimmed exactly as the update trims it, so that the update's first
    forward pass on a minibatch repeats the same computation, in bf16 too (same shapes, same kernels)."""
    b, r = rollout.response.shape
    if policy is None:
        rollout.logprobs, rollout.entropy = logprobs_from_logits(rollout.generation_logits, rollout.response, temperature, entropy=True)
    rollout.generation_logits = None
    chunks = chunks if chunks is not None else [torch.arange(b)]
    padding = rollout.padding()
    logprobs = entropy = ref_logprobs = values = None
    for rows in chunks:
        index = rows.to(rollout.response.device)
        part, _ = rollout.select(index).trimmed(padding[:, rows])
        if policy is not None:
            lp, ent = logprobs_from_logits(response_logits(policy, part), part.response, temperature, entropy=True)
            logprobs = _scatter_rows(logprobs, index, lp, (b, r))
            entropy = _scatter_rows(entropy, index, ent, (b, r))
        ref_lp = logprobs_from_logits(response_logits(reference, part), part.response, temperature)
        ref_logprobs = _scatter_rows(ref_logprobs, index, ref_lp, (b, r))
        if critic is not None:
            values = _scatter_rows(values, index, critic_values(critic, part), (b, r))
    if policy is not None:
        rollout.logprobs, rollout.entropy = logprobs, entropy
    rollout.ref_logprobs, rollout.values = ref_logprobs, values
    rollout.reward_model_scores = reward_model(rollout.input_ids, rollout.attention_mask)
    rollout.scores = rollout.reward_model_scores.clone()
    if missing_eos_penalty is not None:
        rollout.scores[~rollout.ended] = missing_eos_penalty
    return rollout


def collate_prompts(prompts: list[list[int]], pad_token_id: int, device: torch.device | str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt token ids as one left-padded (b, q) batch and its mask, on ``device``."""
    query, mask = pad_with_mask(prompts, pad_token_id, left=True)
    return query.to(device), mask.to(device)


def make_rollout(prompts: list[list[int]], *, policy, reference, reward_model, critic, tokenizer, max_new_tokens: int,
                 temperature: float, top_k: int, top_p: float, missing_eos_penalty: float | None, do_sample: bool = True,
                 recompute_logprobs: bool = False, synced_gpus: bool = False, chunks: list[torch.Tensor] | None = None,
                 device: torch.device | str | None = None, generation_batch_size: int | None = None,
                 generation_context: contextlib.AbstractContextManager | None = None) -> tuple[Rollout, dict[str, float]]:
    """Sample responses to ``prompts`` with ``policy`` (:func:`generate`, ``generation_batch_size`` prompts at a time)
    and score them (:func:`score_rollout`), with no gradients and the policy and critic in eval mode for the while
    (their modes are put back after). ``critic``: ``None`` computes no values. ``recompute_logprobs``: the policy's
    log-probs from a forward pass rather than the sampling logits. ``generation_context``: entered around generation
    only (ZeRO-3's gathering of the policy). Returns the rollout and the seconds spent generating and scoring."""
    query, query_mask = collate_prompts(prompts, tokenizer.pad_token_id, device)
    modes = [(m, m.training) for m in (policy, critic) if m is not None]
    for module, _ in modes:
        module.eval()
    start = time.perf_counter()
    with generation_context or contextlib.nullcontext():
        rollout = generate_in_batches(policy, query, query_mask, batch_size=generation_batch_size,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                      max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                      do_sample=do_sample, synced_gpus=synced_gpus)
    generated = time.perf_counter()
    rollout = score_rollout(rollout, reference=reference, critic=critic, reward_model=reward_model, temperature=temperature,
                            missing_eos_penalty=missing_eos_penalty, policy=policy if recompute_logprobs else None,
                            chunks=chunks)
    timing = {"generation": generated - start, "scoring": time.perf_counter() - generated}
    for module, mode in modes:
        module.train(mode)
    return rollout, timing


def needs_logprob_pass(mode: str, precision: str) -> bool:
    """Whether the policy's log-probs need their own forward pass rather than the sampling logits: ``mode`` is
    ``"recompute"``, ``"sampling"``, or ``"auto"`` (a pass under any precision but ``32-true`` / ``64-true``)."""
    if mode == "auto":
        return precision not in ("32-true", "32", "64-true", "64")
    return mode == "recompute"


def rollout_stats(rollout: Rollout, rewards: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """Means over a scored rollout's episodes: scores, entropy, the KL part of the reward, response length, the share
    that ended, and how much of the returns' variance the critic's values explain."""
    mask = rollout.response_mask.float()
    return {
        "objective/score": rollout.scores.mean(),
        "objective/reward_model_score": rollout.reward_model_scores.mean(),
        "objective/entropy": masked_mean(rollout.entropy, mask, dim=1).mean(),
        "objective/non_score_reward": (rewards.sum(1) - rollout.scores).mean(),
        "rollout/response_length": mask.sum(1).mean(),
        "rollout/eos_fraction": rollout.ended.float().mean(),
        "value/explained_variance": explained_variance(rollout.values, returns, mask),
    }
