"""Where PPO's models are during a rollout (``model.rollout``, :class:`~lit_instruct.stages.ppo_settings.RolloutSettings`).

Under ZeRO-3 each process holds a shard of every parameter, and a forward pass gathers each layer's parameters from
all processes just before the layer runs and frees them after. Generation runs one forward pass per new token, so a
rollout gathers every layer once per token: ``max_new_tokens`` all-gathers of the whole policy. Gathering the policy
once for the rollout's generation (DeepSpeed's ``GatheredParameters``, held for the whole generation: see
:func:`gathered_for_generation`) holds the full policy on each device for that while and needs no communication per
token; the processes then no longer have to step together either.

``offload_frozen`` keeps the frozen models (reference, reward model, judge) on the CPU between rollouts: the PPO
update, which holds the activations and the optimizer's work, then has the accelerator to the two trained models.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_instruct.rollout import Rollout, rollout_stats
from lit_instruct.stages.ppo_settings import RolloutSettings
from lit_instruct.strategies import is_zero3, synced_generation

#: A submodule id no module has (DeepSpeed numbers modules from 0): marks parameters held for generation.
HELD_FOR_GENERATION = -1


@contextlib.contextmanager
def gathered_for_generation(module: torch.nn.Module, engine=None) -> Iterator[None]:
    """ZeRO-3-sharded ``module`` whole on every process for the while, and kept whole through every forward pass.

    DeepSpeed's ``GatheredParameters`` alone is not enough for generation: ZeRO-3's hook after each layer's forward
    pass frees the layer's parameters again (unless a submodule still uses them), so only the first token would run
    on the gathered weights and every later token would gather layer by layer. Each parameter is marked as in use
    by one more submodule (an id no module has) until generation ends, and unmarked before the context frees them;
    and ZeRO-3's per-module forward hooks, which would have nothing to fetch or free, are set aside meanwhile
    (:func:`without_zero3_hooks`). ``engine``: the DeepSpeed engine, whose ``empty_partition_cache`` first waits for
    and frees any parameters its prefetching left in flight (with the hooks aside nothing else would wait for them)."""
    import deepspeed

    if engine is not None and hasattr(engine, "empty_partition_cache"):
        engine.empty_partition_cache()
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        for param in params:
            param.ds_active_sub_modules.add(HELD_FOR_GENERATION)
        try:
            with without_zero3_hooks(module):
                yield
        finally:
            for param in params:
                param.ds_active_sub_modules.discard(HELD_FOR_GENERATION)


def _is_zero3_hook(hook) -> bool:
    """Whether a forward (pre-)hook is DeepSpeed's (ZeRO-3 registers four on every module: fetch and free the
    parameters around the forward pass, and the same around the backward pass)."""
    return getattr(hook, "__module__", "").startswith("deepspeed.")


@contextlib.contextmanager
def without_zero3_hooks(module: torch.nn.Module) -> Iterator[None]:
    """ZeRO-3's forward hooks on ``module`` and its submodules set aside for the while, then put back in their order
    (any other hook stays): with the parameters whole they only cost time, at every module of every token."""
    saved = []
    for sub in module.modules():
        for hooks in (sub._forward_pre_hooks, sub._forward_hooks):
            zero3 = [key for key, hook in hooks.items() if _is_zero3_hook(hook)]
            if zero3:
                saved.append((hooks, dict(hooks)))
                for key in zero3:
                    del hooks[key]
    try:
        yield
    finally:
        for hooks, original in saved:
            added = {key: hook for key, hook in hooks.items() if key not in original}
            hooks.clear()
            hooks.update(original)
            hooks.update(added)


def full_parameter_gib(module: torch.nn.Module) -> float:
    """GiB the module's parameters take when whole: under ZeRO-3 from each parameter's full size (``ds_numel``), not
    the local shard."""
    return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in module.parameters()) / 2**30


class RolloutPlacement:
    """Gathers the policy for generation under ZeRO-3 (within ``gather_budget_gib``) and moves the frozen models
    between the CPU and the accelerator (``offload_frozen``).

    Args:
        settings: The PPO stage's ``rollout`` settings.
        frozen: The frozen models that only rollouts and validation's scoring use (what ``offload_frozen`` moves).
    """

    def __init__(self, settings: RolloutSettings, frozen: Callable[[], list[torch.nn.Module]]) -> None:
        self.settings, self.frozen = settings, frozen
        self.frozen_on_accelerator = True  # where offload_frozen last put the frozen models
        self._depth = 0  # nested frozen_on_device contexts (validation's rollout inside its judge's)
        self._said: Optional[str] = None

    # ------------------------------------------------------------------ ZeRO-3 generation
    def generation(self, policy: torch.nn.Module, strategy) -> tuple[contextlib.AbstractContextManager, bool]:
        """``(context, synced_gpus)`` for generating with ``policy``: DeepSpeed's ``GatheredParameters`` over the
        policy's parameters and no stepping together when the policy is gathered, else no context and the processes
        stepping together under ZeRO-3 (each forward pass gathers from every process)."""
        if not is_zero3(strategy) or not self.settings.gather_for_generation:
            return contextlib.nullcontext(), synced_generation(strategy)
        gib, budget = full_parameter_gib(policy), self.settings.gather_budget_gib
        if budget is not None and gib > budget:
            self._say(f"[ppo] rollout generation: the policy's {gib:.2f} GiB of parameters exceed rollout.gather_budget_gib="
                      f"{budget}; generating with ZeRO-3's per-layer gathering (slower: every layer is gathered per token)")
            return contextlib.nullcontext(), synced_generation(strategy)
        self._say(f"[ppo] rollout generation: gathering the policy's {gib:.2f} GiB of parameters once per rollout (ZeRO-3)")
        return gathered_for_generation(policy, getattr(strategy, "model", None)), False

    def _say(self, line: str) -> None:
        if line != self._said:  # once, and again only when the decision changes
            self._said = line
            rank_zero_info(line)

    # ------------------------------------------------------------------ frozen models off the accelerator
    @staticmethod
    def check(settings: RolloutSettings, strategy, frozen_quantization: Optional[str]) -> None:
        """Refuse ``offload_frozen`` where the frozen models cannot move as a whole."""
        if not settings.offload_frozen:
            return
        if is_zero3(strategy):
            raise ValueError("rollout.offload_frozen is not supported under ZeRO-3 (the frozen models are sharded): use "
                             "DeepSpeed's offload_param (configs/trainer/gpu_zero3_offload.yaml) instead")
        if frozen_quantization is not None:
            raise ValueError(f"rollout.offload_frozen cannot move bitsandbytes-quantized models (frozen_quantization="
                             f"{frozen_quantization!r}); use one or the other")

    def offload(self) -> None:
        """Move the frozen models to the CPU (when ``offload_frozen``)."""
        if self.settings.offload_frozen:
            for module in self.frozen():
                module.to("cpu")
            self.frozen_on_accelerator = False

    @contextlib.contextmanager
    def frozen_on_device(self, device: torch.device) -> Iterator[None]:
        """With ``offload_frozen``: the frozen models on ``device`` for the while, back on the CPU after (the outermost
        of nested contexts moves them). Without: nothing moves."""
        if not self.settings.offload_frozen:
            yield
            return
        if self._depth == 0:
            for module in self.frozen():
                module.to(device)
            self.frozen_on_accelerator = True
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.offload()


def log_iteration(module, rollout: Rollout, rewards: torch.Tensor, returns: torch.Tensor, kl_per_response: torch.Tensor,
                  stats: dict, episodes: int, rollout_seconds: float, update_seconds: float) -> None:
    """Log one PPO iteration of ``module`` (a ``PPOModule``): the rollout's statistics, the KL and its coefficient, the
    timings (``timing/generation`` and ``timing/scoring`` within ``timing/rollout``) and the update's ``stats``."""
    module.log_dict({
        **rollout_stats(rollout, rewards, returns), "objective/kl": kl_per_response,
        "objective/kl_coef": module.kl_controller.value, "timing/rollout": rollout_seconds, "timing/update": update_seconds,
        **{f"timing/{name}": seconds for name, seconds in module.rollout_timing.items()},  # generation, scoring
        "throughput/episodes_per_s": episodes / (rollout_seconds + update_seconds), "episodes": float(module.episodes),
        **stats,
    }, prog_bar=False)
    module.log("score", rollout.scores.mean(), prog_bar=True, logger=False)
    module.log("kl", kl_per_response, prog_bar=True, logger=False)
