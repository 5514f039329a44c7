"""The four models of the PPO stage, loaded from the SFT and reward-model exports, and the optimizer of the two trained.

The policy (trained) and the reference (frozen) start from the SFT export; the reward model (frozen, with its
normalisation) and the critic (trained, a value head with a bias) start from the reward-model export. All four
share one tokenizer: PPO scores the policy's tokens directly.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lit_instruct.models.causal_lm import (
    DtypeName,
    bnb_config,
    load_causal_lm,
    load_tokenizer,
)
from lit_instruct.models.causal_lm import disable_dropout as turn_off_dropout
from lit_instruct.models.lora import (
    AdaptersOff,
    LoraSettings,
    add_adapters,
    as_lora,
    quantization_config,
)
from lit_instruct.models.reward_model import RewardModel


def load_ppo_models(
    policy_name_or_path: str,
    reward_model_path: str,
    reference_name_or_path: Optional[str] = None,
    critic_name_or_path: Optional[str] = None,
    *,
    load_dtype: DtypeName = "float32",
    frozen_dtype: Optional[DtypeName] = None,
    frozen_quantization: Optional[Literal["8bit", "4bit"]] = None,
    require_reward_normalization: bool = True,
    gradient_checkpointing: bool = False,
    disable_dropout: bool = True,
    lora: "LoraSettings | dict | None" = None,
) -> tuple:
    """``(tokenizer, policy, reference, reward_model, critic)``, the frozen two in eval mode without gradients, the
    critic in train mode. See :class:`lit_instruct.stages.ppo.PPOModule` for the arguments.

    With ``lora`` the policy and the critic train LoRA adapters (their heads in full), and the reference is the
    policy's own network with the adapters off (:class:`AdaptersOff`: no second copy, nothing of its own to freeze)."""
    lora = as_lora(lora)
    tokenizer = load_tokenizer(policy_name_or_path)
    policy = load_causal_lm(policy_name_or_path, tokenizer, gradient_checkpointing=gradient_checkpointing, dtype=load_dtype,
                            quantization_config=quantization_config(lora, policy_name_or_path))
    quantization = bnb_config(frozen_quantization)
    frozen = frozen_dtype or load_dtype
    if lora is not None:
        if reference_name_or_path not in (None, policy_name_or_path):
            raise ValueError(
                f"model.reference_name_or_path={reference_name_or_path!r} with model.lora: a LoRA policy's reference is "
                f"its own base ({policy_name_or_path}) with the adapters off, not another checkpoint; leave "
                "reference_name_or_path unset, or train without lora to use a different reference")
        policy = add_adapters(policy, lora)
        reference = AdaptersOff(policy)
    else:
        reference = load_causal_lm(reference_name_or_path or policy_name_or_path, tokenizer, dtype=frozen,
                                   trainable=False, quantization_config=quantization)
    # Refuses an export without its normalisation (unless told).
    reward_model = RewardModel.from_pretrained(reward_model_path, quantization_config=quantization, dtype=frozen,
                                               require_normalization=require_reward_normalization)
    # The critic starts from the reward model and learns a value level too (a head with a bias).
    critic_path = critic_name_or_path or reward_model_path
    critic = RewardModel.from_pretrained(critic_path, require_normalization=False, dtype=load_dtype, head_bias=True,
                                         quantization_config=quantization_config(lora, critic_path)).train()
    if gradient_checkpointing:
        critic.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        critic.backbone = add_adapters(critic.backbone, lora, causal_lm=False)
    if reward_model.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"the reward model at {reward_model_path} and the policy at {policy_name_or_path} have "
            "mismatched tokenizers; PPO scores the policy's tokens directly, so they must share one"
        )
    for model in (reference, reward_model):
        if isinstance(model, torch.nn.Module):
            model.eval()
            model.requires_grad_(False)
    if disable_dropout:
        for model in (policy, reference, reward_model.backbone, critic.backbone):
            if isinstance(model, torch.nn.Module):
                turn_off_dropout(model)
    return tokenizer, policy, reference, reward_model, critic


def ppo_optimizer(params, lr: float = 1e-5) -> torch.optim.Optimizer:
    """Adam with eps 1e-5 (the PPO-for-LMs default)."""
    return torch.optim.Adam(params, lr=lr, eps=1e-5)


def policy_and_critic_optimizer(policy: torch.nn.Module, critic: torch.nn.Module, factory: Callable, critic_lr: Optional[float],
                                warmup_steps: int, warmup_start_ratio: float) -> dict:
    """Lightning's ``configure_optimizers`` answer: one optimizer (DeepSpeed takes only one) with the policy and the
    critic as two parameter groups (the critic at ``critic_lr`` unless ``None``), and a linear warm-up from
    ``warmup_start_ratio`` of the peak over ``warmup_steps`` iterations."""
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "name": "policy"}]
    critic_group = {"params": [p for p in critic.parameters() if p.requires_grad], "name": "critic"}
    if critic_lr is not None:
        critic_group["lr"] = critic_lr
    groups.append(critic_group)
    optimizer = factory(groups)
    warmup, start = warmup_steps, warmup_start_ratio
    schedule = lambda step: 1.0 if step >= warmup else start + (1.0 - start) * step / max(warmup, 1)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}


def policy_ema(policy: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``policy``'s weights (and buffers), frozen and in eval mode."""
    if any(not p.is_floating_point() for p in policy.parameters()):
        raise ValueError("ema_decay with model.lora.quantize: the average cannot be taken over 8/4-bit weights; "
                         "set ema_decay: null, or train LoRA without quantize")
    ema = AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    ema.eval()
    return ema
