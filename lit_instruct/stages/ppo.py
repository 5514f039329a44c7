"""PPO-ptx stage (InstructGPT section 3.5): maximise ``E[r(x,y) - kl_coef * log(pi/pi_SFT)] + ptx_coef * E_pretrain[log pi]``.

``PPOModule`` holds four models: the policy (from SFT, trained), a frozen reference (SFT), the frozen reward
model with its normalisation, and a critic initialised from the reward model (trained). Each training step is one
PPO iteration: a rollout (``lit_instruct.rollout``), then PPO epochs over minibatches, each minibatch also taking
pretraining sequences whose LM loss, times ``ptx_coef``, joins the same update. ``ptx_coef: 0`` is plain PPO.
"""

from __future__ import annotations

import time
import warnings
from typing import Literal, Optional

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_instruct.loggers import log_table
from lit_instruct.models.causal_lm import DtypeName
from lit_instruct.models.lora import LoraSettings, as_lora, settings_dict
from lit_instruct.objectives import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalized_rewards,
    lm_loss,
    masked_whiten,
)
from lit_instruct.rollout import (
    Rollout,
    critic_values,
    logprobs_from_logits,
    make_rollout,
    needs_logprob_pass,
    response_logits,
)
from lit_instruct.stages.ppo_models import (
    load_ppo_models,
    policy_and_critic_optimizer,
    policy_ema,
    ppo_optimizer,
)
from lit_instruct.stages.ppo_rollout import RolloutPlacement, log_iteration
from lit_instruct.stages.ppo_settings import (
    KLPenalty,
    PPOUpdate,
    PtxMix,
    RolloutSettings,
    Sampling,
    as_group,
    group_flat_hparams,
)
from lit_instruct.stages.ppo_validation import (
    HeldOutMeasures,
    held_apart_scores,
    load_judge,
    sample_rows,
    validation_stream,
)
from lit_instruct.stages.stage import Stage
from lit_instruct.strategies import is_zero3


class PPOModule(Stage):
    """PPO with a KL penalty to the SFT model and a pretraining-gradient mix (ptx), as in InstructGPT.

    Four groups of settings (:mod:`lit_instruct.stages.ppo_settings`; each also takes a plain dict, as YAML gives it)
    hold sampling, the PPO update, the KL penalty (``kl.kl_coef``, beta) and the pretraining mix (``ptx.ptx_coef``, gamma).

    Args:
        policy_name_or_path: The SFT export the policy starts from.
        reward_model_path: The reward-model export (normalised), frozen during RL.
        reference_name_or_path: The frozen reference; ``None``: the policy's starting point.
        critic_name_or_path: The reward-model export the critic (value function) starts from (``None``: the reward model's).
        total_episodes: Stop after this many episodes (rollouts of one prompt), counted across processes and
            across resumes (the paper: 256k). ``None``: the trainer's own limits decide.
        sampling: How responses are sampled (:class:`Sampling`).
        ppo: The PPO update (:class:`PPOUpdate`).
        kl: The KL penalty to the SFT model (:class:`KLPenalty`).
        ptx: The pretraining mix (:class:`PtxMix`); ``ptx_coef`` 0 is plain PPO.
        rollout: Generation batch size, ZeRO-3 gathering for generation, frozen models off the accelerator (:class:`RolloutSettings`).
        missing_eos_penalty: Score given to responses that never emit EOS (``None``: keep the reward model's). It is on
            the reward model's scale: a reward export normalised with a gain (``gain.policy`` in the reward stage)
            has unit standard deviation on the starting policy's samples, so -1 is one standard deviation below the
            SFT demonstrations' mean.
        judge_path: A held-apart reward model that PPO never optimises; validation also logs its score of the same
            responses (``val/judge_score``). ``None``: none.
        gold_path: Gao et al.'s gold reward model (whose labels trained the optimised proxy): ``val/gold_score``.
        optimizer: Optimizer factory for the two parameter groups (policy at its ``lr``, critic at ``critic_lr``).
        critic_lr: Critic learning rate; ``None``: the optimizer's.
        warmup_steps: Iterations of linear warm-up from ``warmup_start_ratio`` of the peak learning rate.
        warmup_start_ratio: Start of the warm-up as a fraction of the peak (paper: 0.1, over 10 iterations).
        ema_decay: Export an exponential moving average of the policy's weights (paper: 0.992); ``None``: off.
        frozen_quantization: Load the reference and the reward model in ``"8bit"`` or ``"4bit"`` (nf4) through
            bitsandbytes (needs ``accelerate``); ``None``: full precision.
        load_dtype: dtype of the trained weights (policy, critic) whatever the checkpoints store: float32 (the
            default) keeps fp32 master weights under ``bf16-mixed``.
        frozen_dtype: dtype of the frozen reference and reward model (``"bfloat16"`` halves their memory; the
            reward head still computes in float32); ``None``: ``load_dtype``.
        export_dtype: dtype of the exported policy weights.
        require_reward_normalization: Refuse a reward model without the SFT normalisation (e.g. a TRL or OpenRLHF
            directory); ``False`` scores with it as it is.
        gradient_checkpointing: Recompute activations of the policy and critic in the backward pass.
        disable_dropout: Turn dropout off in all four models (the usual RL setting).
        export_dir: Where the policy export is written; ``None``: ``<default_root_dir>/export``.
        num_sample_prompts: Validation responses logged as a table (next to the SFT reference's).
        val_seed: Seed of validation's sampling (its own stream: validations are comparable, training's is untouched).
        lora: LoRA adapters on the policy and critic (:class:`LoraSettings`); the reference is the policy, adapters off.
    """

    stage = "ppo"
    upgrade_hparams = classmethod(lambda cls, hparams: group_flat_hparams(hparams))  # flat kl_coef etc. grouped

    def __init__(
        self,
        policy_name_or_path: str = "runs/sft-tiny/export",
        reward_model_path: str = "runs/reward-tiny/export",
        reference_name_or_path: Optional[str] = None,
        critic_name_or_path: Optional[str] = None,
        total_episodes: Optional[int] = None,
        sampling: Sampling = Sampling(),
        ppo: PPOUpdate = PPOUpdate(),
        kl: KLPenalty = KLPenalty(),
        ptx: PtxMix = PtxMix(),
        rollout: RolloutSettings = RolloutSettings(),
        missing_eos_penalty: Optional[float] = -1.0,
        judge_path: Optional[str] = None,
        gold_path: Optional[str] = None,
        optimizer: OptimizerCallable = ppo_optimizer,
        critic_lr: Optional[float] = None,
        warmup_steps: int = 10,
        warmup_start_ratio: float = 0.1,
        ema_decay: Optional[float] = None,
        frozen_quantization: Optional[Literal["8bit", "4bit"]] = None,
        load_dtype: DtypeName = "float32",
        frozen_dtype: Optional[DtypeName] = None,
        export_dtype: DtypeName = "float32",
        require_reward_normalization: bool = True,
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
        export_dir: Optional[str] = None,
        num_sample_prompts: int = 4,
        val_seed: int = 1234,
        lora: Optional[LoraSettings] = None,
    ) -> None:
        super().__init__()
        groups = (as_group(sampling, Sampling), as_group(ppo, PPOUpdate), as_group(kl, KLPenalty), as_group(ptx, PtxMix),
                  as_group(rollout, RolloutSettings))
        self.sampling, self.ppo, self.kl, self.ptx, self.rollout_settings = groups
        sampling, ppo, kl, ptx, rollout = (dict(vars(g)) for g in groups)  # saved as plain dicts, as a config gives them
        lora = settings_dict(as_lora(lora))
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.tokenizer, self.policy, self.reference, self.reward_model, self.critic = load_ppo_models(
            policy_name_or_path, reward_model_path, reference_name_or_path, critic_name_or_path, load_dtype=load_dtype,
            frozen_dtype=frozen_dtype, frozen_quantization=frozen_quantization, disable_dropout=disable_dropout,
            require_reward_normalization=require_reward_normalization, gradient_checkpointing=gradient_checkpointing, lora=lora)
        self.judge, self.gold = (load_judge(p, reward_model_path, frozen_dtype or load_dtype, r) for p, r in ((judge_path, "judge"), (gold_path, "gold")))
        if missing_eos_penalty is not None and "gain" not in (self.reward_model.normalization or {}):
            rank_zero_warn(f"missing_eos_penalty={missing_eos_penalty} on a reward model normalised without a gain "
                           f"({reward_model_path}): its scale is arbitrary, so the penalty may be negligible or dominant")
        self.ema = policy_ema(self.policy, ema_decay) if ema_decay is not None else None
        kl = self.kl
        self.kl_controller = AdaptiveKLController(kl.kl_coef, kl.target, kl.horizon) if kl.adaptive else FixedKLController(kl.kl_coef)
        self.episodes = 0
        self.held_out = HeldOutMeasures()
        scoring = lambda: [m for m in (self.reference, self.reward_model, self.judge, self.gold) if isinstance(m, torch.nn.Module)]  # noqa: E731
        self.placement = RolloutPlacement(self.rollout_settings, scoring)  # ZeRO-3 gathering, rollout.offload_frozen
        self._val_samples: list[list] = []

    @property
    def context_length(self) -> int:
        return self.reward_model.context_length

    @property
    def max_new_tokens(self) -> int:
        """Longest response of a rollout (the data module checks that prompts leave room for it)."""
        return self.sampling.max_new_tokens

    @property
    def uses_ptx(self) -> bool:
        """Whether updates mix in pretraining text (the data module then needs training text for it)."""
        return self.ptx.ptx_coef > 0 and self.ptx.examples_per_episode > 0

    def trained_module(self) -> torch.nn.Module:
        return self.policy

    def trained_modules(self) -> list[torch.nn.Module]:
        return [self.policy, self.critic]

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.reference, self.reward_model, self.judge, self.gold, self.ema) if isinstance(m, torch.nn.Module)]

    def evaluated_policy(self) -> torch.nn.Module:
        """The policy that validation measures and the export writes: the EMA of the weights when ``ema_decay`` is set."""
        return self.ema.module if self.ema is not None else self.policy

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # The frozen reference and reward model are in eval mode on purpose; Lightning warns about any such module.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        self.placement.offload()  # with rollout.offload_frozen: on the CPU until a rollout

    def configure_callbacks(self) -> list:
        return [self.peak_memory]  # batches are prompts, not token tensors: throughput is logged per iteration (episodes/s)

    # ------------------------------------------------------------------ optimisation set-up
    @property
    def _deepspeed(self) -> bool:
        return isinstance(self.trainer.strategy, DeepSpeedStrategy)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        strategy = self.trainer.strategy
        if self._deepspeed:
            # Lightning refuses gradient_clip_val with manual optimisation; DeepSpeed clips from its own config.
            if self.ppo.max_grad_norm:
                strategy.config.setdefault("gradient_clipping", self.ppo.max_grad_norm)
            # The prompt stream has no batch sampler to read a micro-batch size from: one update is one minibatch.
            strategy.config.setdefault("train_micro_batch_size_per_gpu", self.ppo.minibatch_size)
        RolloutPlacement.check(self.rollout_settings, strategy, self.hparams.frozen_quantization)
        if self.ema is not None and is_zero3(strategy):
            raise ValueError("ema_decay is not supported under ZeRO-3 (the policy's weights are sharded)")

    def configure_optimizers(self):
        h = self.hparams
        return policy_and_critic_optimizer(self.policy, self.critic, self.optimizer_factory, h.critic_lr, h.warmup_steps,
                                           h.warmup_start_ratio)

    # ------------------------------------------------------------------ rollouts and the PPO iteration
    def rollout(self, prompts: list[list[int]], max_new_tokens: int, do_sample: bool = True, values: bool = True,
                policy: Optional[torch.nn.Module] = None, chunks: Optional[list[torch.Tensor]] = None) -> Rollout:
        """Generate responses to ``prompts`` with ``policy`` (default: the trained one) and score them (no gradients);
        ``values``: the critic's too. ``chunks``: the first PPO epoch's minibatches (see :func:`score_rollout`)."""
        s, trainer, policy = self.sampling, self._trainer, policy if policy is not None else self.policy
        gathered, synced = self.placement.generation(policy, trainer.strategy if trainer is not None else None)  # ZeRO-3
        with self.placement.frozen_on_device(self.device):  # rollout.offload_frozen: on the accelerator for the while
            rollout, self.rollout_timing = make_rollout(
                prompts, policy=policy, reference=self.reference, reward_model=self.reward_model,
                critic=self.critic if values else None, tokenizer=self.tokenizer, max_new_tokens=max_new_tokens,
                temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, missing_eos_penalty=self.hparams.missing_eos_penalty,
                do_sample=do_sample, synced_gpus=synced, generation_context=gathered, chunks=chunks, device=self.device,
                recompute_logprobs=needs_logprob_pass(self.ppo.rollout_logprobs, str(trainer.precision) if trainer else "32-true"),
                generation_batch_size=self.rollout_settings.generation_batch_size)
        return rollout

    def _done(self) -> bool:
        return self.hparams.total_episodes is not None and self.episodes >= self.hparams.total_episodes

    def on_train_batch_start(self, batch, batch_idx: int) -> Optional[int]:
        super().on_train_batch_start(batch, batch_idx)  # random-number states after a resume
        if self._done():  # e.g. resumed from a run that had already finished
            self.trainer.should_stop = True
            return -1
        return None

    def training_step(self, prompts: list[list[int]], batch_idx: int) -> None:
        """One PPO-ptx iteration:

        1. roll out: sample a response to each prompt with the policy; score it with the reward model, and get the
           policy's and the reference's log-probs and the critic's values (``lit_instruct.rollout``);
        2. rewards: the score at the last token, minus ``kl.kl_coef`` times log(pi / pi_SFT) at every token;
        3. advantages and returns by GAE;
        4. update: PPO epochs over minibatches, each loss adding ``ptx.ptx_coef`` times a pretraining LM loss;
        5. adapt ``kl_coef`` (when adaptive), count the episodes, log."""
        start = time.perf_counter()
        first_epoch = torch.randperm(len(prompts)).split(self.ppo.minibatch_size)  # scored in these, updated in them first
        rollout = self.rollout(prompts, self.sampling.max_new_tokens, chunks=list(first_epoch))  # 1
        mask, u = rollout.response_mask.float(), self.ppo
        rewards, kl = kl_penalized_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, mask, self.kl_controller.value)  # 2
        advantages, returns = gae(rewards, rollout.values, mask, u.discount, u.gae_lambda)  # 3
        if u.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        rollout_seconds = time.perf_counter() - start
        start = time.perf_counter()
        stats = self.ppo_update(rollout, advantages, returns, first_epoch)  # 4
        update_seconds = time.perf_counter() - start
        episodes = len(prompts) * self.trainer.world_size  # 5
        kl_per_response = self.all_gather(kl.sum(1)).mean()
        self.kl_controller.update(float(kl_per_response), episodes)
        self.episodes += episodes
        if self.trainer.datamodule is not None:
            self.trainer.datamodule.consumed_prompts += episodes  # the global prompt stream's position
        log_iteration(self, rollout, rewards, returns, kl_per_response, stats, episodes, rollout_seconds, update_seconds)
        self.lr_schedulers().step()
        if self._done():
            self.trainer.should_stop = True

    def ppo_update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor,
                   first_epoch: Optional[tuple[torch.Tensor, ...]] = None) -> dict[str, torch.Tensor]:
        """PPO epochs over shuffled minibatches; each minibatch's loss adds ``ptx_coef`` times the pretraining LM loss.

        The first epoch's minibatches are ``first_epoch`` (those the rollout was scored in); later epochs reshuffle.
        Also returns the first minibatch's ``policy/first_minibatch_approxkl`` and ``policy/first_minibatch_ratio_error``
        (max |ratio - 1|): before any update both are 0 up to float error when the old log-probs are right."""
        u = self.ppo
        optimizer = self.optimizers()
        sums: dict[str, torch.Tensor] = {}
        n = rollout.response.shape[0]
        padding = rollout.padding()  # on the host once per iteration, for cutting each minibatch's padding
        count = 0
        first: dict[str, torch.Tensor] = {}
        self.policy.train()
        self.critic.train()
        for epoch in range(u.ppo_epochs):
            order = first_epoch if epoch == 0 and first_epoch is not None else torch.randperm(n).split(u.minibatch_size)
            for rows in order:
                index = rows.to(self.device)
                mb, r = rollout.select(index).trimmed(padding[:, rows])  # no padding columns it does not need
                mb_advantages, mb_returns = advantages[index, :r], returns[index, :r]
                mask = mb.response_mask.float()
                logits = response_logits(self.policy, mb)
                logprobs = logprobs_from_logits(logits, mb.response, self.sampling.temperature)
                del logits
                policy = clipped_policy_loss(logprobs, mb.logprobs, mb_advantages, mask, u.clip_range)
                if not first:
                    ratio_error = ((logprobs.detach() - mb.logprobs).exp() - 1).abs() * mask
                    first = {"policy/first_minibatch_approxkl": policy["approxkl"].detach(),
                             "policy/first_minibatch_ratio_error": ratio_error.max()}
                values = critic_values(self.critic, mb)
                value = clipped_value_loss(values, mb.values, mb_returns, mask, u.value_clip_range)
                loss = policy["loss"] + u.vf_coef * value["loss"]
                ptx = torch.zeros((), device=self.device)
                if self.uses_ptx:
                    ptx_batch = self.trainer.datamodule.ptx_batch(self.ptx.examples_per_episode * len(index))
                    ptx_batch = {k: v.to(self.device) for k, v in ptx_batch.items()}
                    ptx_logits = self.policy(input_ids=ptx_batch["input_ids"], attention_mask=ptx_batch["attention_mask"], use_cache=False).logits
                    ptx = lm_loss(ptx_logits, ptx_batch["labels"])
                    loss = loss + self.ptx.ptx_coef * ptx
                optimizer.zero_grad()
                self.manual_backward(loss)
                if u.max_grad_norm and not self._deepspeed:  # DeepSpeed clips from its config (see setup)
                    self.clip_gradients(optimizer, gradient_clip_val=u.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.policy)
                for key, value_ in (("policy/loss", policy["loss"]), ("policy/approxkl", policy["approxkl"]),
                                    ("policy/clipfrac", policy["clipfrac"]), ("value/loss", value["loss"]),
                                    ("value/clipfrac", value["clipfrac"]), ("ptx/loss", ptx), ("train/loss", loss)):
                    sums[key] = sums.get(key, 0.0) + value_.detach()  # stays on the device: no sync per minibatch
                count += 1
        return {**{k: v / count for k, v in sums.items()}, **first}

    # ------------------------------------------------------------------ validation: reward, KL, alignment tax
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Held-out prompts (loader 0): RM score, KL to the reference and length of the evaluated policy's responses.
        Held-out pretraining blocks (loader 1): its LM loss (the alignment tax)."""
        policy = self.evaluated_policy()
        if dataloader_idx == 0:
            with validation_stream(self.hparams.val_seed + batch_idx, self.device), self.placement.frozen_on_device(self.device):
                rollout = self.rollout(batch, self.sampling.val_max_new_tokens or self.sampling.max_new_tokens, values=False,
                                       policy=policy)
                self.held_out.update_rollout(rollout, held_apart_scores({"judge": self.judge, "gold": self.gold}, rollout, self.tokenizer))
            if batch_idx == 0 and self.hparams.num_sample_prompts > 0:
                self._val_samples = sample_rows(rollout, self.tokenizer, self.hparams.num_sample_prompts, self.global_step)
        else:
            logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            self.held_out.update_pretrain(lm_loss(logits, batch["labels"]), batch["input_ids"].numel())

    def on_validation_epoch_end(self) -> None:
        for name, value in self.held_out.compute_and_reset().items():  # synced by torchmetrics
            self.log(name, value, prog_bar=name in ("val/score", "val/judge_score", "val/gold_score", "val/pretrain_loss"), sync_dist=True)
        if self._val_samples and not self.trainer.sanity_checking:
            log_table(self.trainer, "val/samples", ["step", "prompt", "response", "score"], self._val_samples)

    # ------------------------------------------------------------------ checkpoints and export
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ppo_state"] = {"kl_controller": self.kl_controller.state_dict(), "episodes": self.episodes}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ppo_state")
        if state:
            self.kl_controller.load_state_dict(state["kl_controller"])
            self.episodes = state["episodes"]

    def fit_metrics(self) -> dict[str, float]:
        metrics = super().fit_metrics()
        metrics["episodes"] = self.episodes
        metrics["throughput/episodes_per_s_overall"] = self.episodes / max(metrics["timing/fit_seconds"], 1e-9)
        rank_zero_info(f"[ppo] {self.episodes} episodes, {metrics['throughput/episodes_per_s_overall']:.2f} episodes/s over the whole fit (validation included)")
        return metrics

    def export_target(self):
        return self.evaluated_policy(), self.tokenizer

    def export_metadata(self) -> dict:
        h = self.hparams
        return {**super().export_metadata(), "kl_coef_final": self.kl_controller.value, "episodes": self.episodes, "ema": h.ema_decay is not None,
                "reward_model": h.reward_model_path, "judge": h.judge_path, "gold": h.gold_path, "reference": h.reference_name_or_path or h.policy_name_or_path}
