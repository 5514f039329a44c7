"""The PPO stage's settings in groups: ``model.sampling``, ``model.ppo``, ``model.kl``, ``model.ptx`` and ``model.rollout``.

Each group is a dataclass whose fields carry their documentation (shown by ``lit-instruct fit --help``) and the
defaults of InstructGPT's PPO-ptx where the paper gives one. The paper's two coefficients keep unambiguous names:
``kl.kl_coef`` (beta) and ``ptx.ptx_coef`` (gamma). Checkpoints and exports written before the grouping hold the
same settings flat (``kl_coef``, ``adaptive_kl``, ``ptx_examples_per_episode``, ...): :func:`group_flat_hparams`
maps them onto the groups.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Optional

from lit_instruct.utils import as_group  # noqa: F401  (where the stages took it from)


@dataclass
class Sampling:
    """How responses are sampled, in rollouts and at validation."""

    temperature: float = 1.0
    """Sampling temperature; log-probs are computed at the same temperature."""
    top_k: int = 0
    """Sample from the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1: off)."""
    max_new_tokens: int = 48
    """Longest response."""
    val_max_new_tokens: Optional[int] = None
    """Longest response at validation (``None``: ``max_new_tokens``)."""


@dataclass
class PPOUpdate:
    """The PPO update of each iteration: epochs over minibatches of the rollout, clipped losses, GAE."""

    ppo_epochs: int = 1
    """Passes over each rollout batch (paper: 1)."""
    minibatch_size: int = 8
    """Episodes per PPO minibatch, per process (paper: 64 of a 512 batch)."""
    clip_range: float = 0.2
    """Policy ratio clipping (0.2)."""
    value_clip_range: float = 0.2
    """Value clipping (0.2)."""
    vf_coef: float = 0.1
    """Value-loss coefficient (0.1)."""
    discount: float = 1.0
    """GAE discount (1: no discount)."""
    gae_lambda: float = 0.95
    """GAE lambda (0.95)."""
    whiten_advantages: bool = True
    """Normalise advantages per batch."""
    max_grad_norm: Optional[float] = 1.0
    """Gradient clipping (under DeepSpeed it is handed to DeepSpeed's ``gradient_clipping``)."""
    rollout_logprobs: Literal["auto", "sampling", "recompute"] = "auto"
    """Where the old log-probs come from: ``"sampling"`` reuses the logits kept while sampling (exact in float32, saves
    a forward pass), ``"recompute"`` runs the policy once more over the rollout in the first epoch's minibatches
    (exact under bf16 too: the first minibatch's ratio is 1), ``"auto"`` samples-logits in ``32-true`` / ``64-true``
    and recomputes under any other precision."""


@dataclass
class KLPenalty:
    """The per-token KL penalty to the SFT model, ``-kl_coef * log(pi / pi_SFT)``, added to the reward."""

    kl_coef: float = 0.02
    """beta, the per-token KL penalty coefficient (paper: 0.02); the starting value when adaptive."""
    adaptive: bool = False
    """Use Ziegler et al.'s adaptive controller towards ``target``."""
    target: float = 6.0
    """Target KL per response (nats) of the adaptive controller."""
    horizon: int = 10000
    """Horizon (episodes) of the adaptive controller."""


@dataclass
class PtxMix:
    """The pretraining mix (ptx): each minibatch's loss adds ``ptx_coef`` times the LM loss on pretraining text."""

    ptx_coef: float = 27.8
    """gamma, the weight of the pretraining LM loss (paper: 27.8); 0 is plain PPO."""
    examples_per_episode: int = 8
    """Pretraining sequences per RL episode in each minibatch (paper: 8)."""


@dataclass
class RolloutSettings:
    """How rollouts use memory and time: the generation batch size, gathering a ZeRO-3-sharded policy for generation,
    and keeping the frozen models off the accelerator between rollouts."""

    generation_batch_size: Optional[int] = None
    """Generate for this many prompts at a time (independent of ``ppo.minibatch_size`` and the rollout batch size);
    ``None``: the whole rollout batch at once."""
    gather_for_generation: bool = True
    """Under ZeRO-3: gather the policy's sharded parameters once per rollout for generation (DeepSpeed's
    ``GatheredParameters``) instead of per layer per generated token. No effect without ZeRO-3."""
    gather_budget_gib: Optional[float] = None
    """Gather only when the policy's full parameters take at most this many GiB on each device; above it generation
    keeps the per-layer path (and says so once in the log). ``None``: no limit."""
    offload_frozen: bool = False
    """Keep the reference, the reward model and the judge on the CPU outside rollouts (and validation's scoring) and
    move them to the accelerator for those only: less accelerator memory during the PPO update, two copies per
    rollout. Not with ZeRO-3 (use DeepSpeed's ``offload_param``) or ``frozen_quantization``."""


#: The groups, by the name of the ``PPOModule`` argument that holds each.
GROUPS: dict[str, type] = {"sampling": Sampling, "ppo": PPOUpdate, "kl": KLPenalty, "ptx": PtxMix,
                         "rollout": RolloutSettings}

#: Flat hyper-parameter names of checkpoints and exports from before the grouping -> (group, field).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{f.name: ("sampling", f.name) for f in fields(Sampling)},
    **{f.name: ("ppo", f.name) for f in fields(PPOUpdate)},
    "kl_coef": ("kl", "kl_coef"),
    "adaptive_kl": ("kl", "adaptive"),
    "kl_target": ("kl", "target"),
    "kl_horizon": ("kl", "horizon"),
    "ptx_coef": ("ptx", "ptx_coef"),
    "ptx_examples_per_episode": ("ptx", "examples_per_episode"),
}


def group_flat_hparams(hparams: dict) -> dict:
    """The same hyper-parameters with any flat PPO names (see :data:`FLAT_NAMES`) moved into their group; groups
    already present (a dict or a dataclass) take the flat values too; other keys are left as they are."""
    flat = {key: value for key, value in hparams.items() if key in FLAT_NAMES}
    if not flat:
        return dict(hparams)
    out = {key: value for key, value in hparams.items() if key not in FLAT_NAMES}
    for key, value in flat.items():
        group, name = FLAT_NAMES[key]
        current = out.get(group)
        if current is not None and not isinstance(current, dict):
            current = {f.name: getattr(current, f.name) for f in fields(current)}
        out[group] = {**(current or {}), name: value}
    return out


def setting(hparams: dict, group: str, name: str):
    """One setting from saved hyper-parameters, grouped (``hparams[group][name]``, a dict or a dataclass) or flat
    (from before the grouping), else its default: ``setting(h, "kl", "kl_coef")``."""
    grouped = group_flat_hparams(hparams).get(group)
    default = getattr(GROUPS[group](), name)
    if isinstance(grouped, dict):
        return grouped.get(name, default)
    return getattr(grouped, name, default)
