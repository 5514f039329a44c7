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
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MeanMetric

from lit_instruct.data.batching import pad_with_mask
from lit_instruct.loggers import log_table
from lit_instruct.models.causal_lm import (
    DtypeName,
    bnb_config,
    load_causal_lm,
    load_tokenizer,
)
from lit_instruct.models.causal_lm import disable_dropout as turn_off_dropout
from lit_instruct.models.reward_model import RewardModel
from lit_instruct.objectives import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalized_rewards,
    lm_loss,
    masked_mean,
    masked_whiten,
)
from lit_instruct.rollout import (
    Rollout,
    critic_values,
    generate,
    logprobs_from_logits,
    response_logits,
    score_rollout,
)
from lit_instruct.stages.stage import Stage
from lit_instruct.strategies import is_zero3, synced_generation


def ppo_optimizer(params, lr: float = 1e-5) -> torch.optim.Optimizer:
    """Adam with eps 1e-5 (the PPO-for-LMs default)."""
    return torch.optim.Adam(params, lr=lr, eps=1e-5)



# ====================================================================== module


class PPOModule(Stage):
    """PPO with a KL penalty to the SFT model and a pretraining-gradient mix (ptx), as in InstructGPT.

    Args:
        policy_name_or_path: The SFT export the policy starts from.
        reward_model_path: The reward-model export (normalised), frozen during RL.
        reference_name_or_path: The frozen reference; ``None``: the policy's starting point.
        critic_name_or_path: The reward-model export the critic (value function) starts from; ``None``:
            ``reward_model_path``.
        total_episodes: Stop after this many episodes (rollouts of one prompt), counted across processes and
            across resumes (the paper: 256k). ``None``: the trainer's own limits decide.
        kl_coef: beta, the per-token KL penalty coefficient (paper: 0.02); the starting value when adaptive.
        adaptive_kl: Use Ziegler et al.'s adaptive controller towards ``kl_target``.
        kl_target: Target KL per response (nats) of the adaptive controller.
        kl_horizon: Horizon (episodes) of the adaptive controller.
        ptx_coef: gamma, the weight of the pretraining LM loss (paper: 27.8); 0 is plain PPO.
        ptx_examples_per_episode: Pretraining sequences per RL episode in each minibatch (paper: 8).
        ppo_epochs: Passes over each rollout batch (paper: 1).
        minibatch_size: Episodes per PPO minibatch, per process (paper: 64 of a 512 batch).
        clip_range: Policy ratio clipping (0.2).
        value_clip_range: Value clipping (0.2).
        vf_coef: Value-loss coefficient (0.1).
        discount: GAE discount (1: no discount).
        gae_lambda: GAE lambda (0.95).
        whiten_advantages: Normalise advantages per batch.
        temperature: Sampling temperature; log-probs are computed at the same temperature.
        top_k: Sample from the k most likely tokens (0: all).
        top_p: Nucleus sampling threshold (1: off).
        max_new_tokens: Longest response.
        missing_eos_penalty: Score given to responses that never emit EOS (``None``: keep the reward model's).
        optimizer: Optimizer factory for the two parameter groups (policy at its ``lr``, critic at ``critic_lr``).
        critic_lr: Critic learning rate; ``None``: the optimizer's.
        warmup_steps: Iterations of linear warm-up from ``warmup_start_ratio`` of the peak learning rate.
        warmup_start_ratio: Start of the warm-up as a fraction of the peak (paper: 0.1, over 10 iterations).
        max_grad_norm: Gradient clipping (under DeepSpeed it is handed to DeepSpeed's ``gradient_clipping``).
        ema_decay: Keep an exponential moving average of the policy's weights (paper: 0.992) and export it;
            ``None``: off.
        frozen_quantization: Load the reference and the reward model in ``"8bit"`` or ``"4bit"`` (nf4) through
            bitsandbytes (needs ``accelerate``); ``None``: full precision.
        load_dtype: dtype of the trained weights (policy, critic) whatever the checkpoints store: float32 (the
            default) keeps fp32 master weights under ``bf16-mixed``.
        frozen_dtype: dtype of the frozen reference and reward model (``"bfloat16"`` halves their memory; the
            reward head still computes in float32); ``None``: ``load_dtype``.
        export_dtype: dtype of the exported policy weights.
        rollout_logprobs: Where the old log-probs come from: ``"sampling"`` reuses the logits kept while sampling
            (exact in float32, saves a forward pass), ``"recompute"`` runs the policy once more over the rollout in
            the first epoch's minibatches (exact under bf16 too: the first minibatch's ratio is 1), ``"auto"``
            samples-logits in ``32-true`` / ``64-true`` and recomputes under any other precision.
        require_reward_normalization: Refuse a reward model without the SFT normalisation (e.g. a TRL or OpenRLHF
            directory); ``False`` scores with it as it is.
        gradient_checkpointing: Recompute activations of the policy and critic in the backward pass.
        disable_dropout: Turn dropout off in all four models (the usual RL setting).
        export_dir: Where the policy export is written; ``None``: ``<default_root_dir>/export``.
        num_sample_prompts: Validation responses logged as a table (next to the SFT reference's).
        val_max_new_tokens: Longest response at validation (``None``: ``max_new_tokens``).
        val_seed: Seed of validation's sampling (its own stream: validations are comparable and do not disturb
            training's).
    """

    stage = "ppo"

    def __init__(
        self,
        policy_name_or_path: str = "runs/sft-tiny/export",
        reward_model_path: str = "runs/reward-tiny/export",
        reference_name_or_path: Optional[str] = None,
        critic_name_or_path: Optional[str] = None,
        total_episodes: Optional[int] = None,
        kl_coef: float = 0.02,
        adaptive_kl: bool = False,
        kl_target: float = 6.0,
        kl_horizon: int = 10000,
        ptx_coef: float = 27.8,
        ptx_examples_per_episode: int = 8,
        ppo_epochs: int = 1,
        minibatch_size: int = 8,
        clip_range: float = 0.2,
        value_clip_range: float = 0.2,
        vf_coef: float = 0.1,
        discount: float = 1.0,
        gae_lambda: float = 0.95,
        whiten_advantages: bool = True,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_new_tokens: int = 48,
        missing_eos_penalty: Optional[float] = -1.0,
        optimizer: OptimizerCallable = ppo_optimizer,
        critic_lr: Optional[float] = None,
        warmup_steps: int = 10,
        warmup_start_ratio: float = 0.1,
        max_grad_norm: Optional[float] = 1.0,
        ema_decay: Optional[float] = None,
        frozen_quantization: Optional[Literal["8bit", "4bit"]] = None,
        load_dtype: DtypeName = "float32",
        frozen_dtype: Optional[DtypeName] = None,
        export_dtype: DtypeName = "float32",
        rollout_logprobs: Literal["auto", "sampling", "recompute"] = "auto",
        require_reward_normalization: bool = True,
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
        export_dir: Optional[str] = None,
        num_sample_prompts: int = 4,
        val_max_new_tokens: Optional[int] = None,
        val_seed: int = 1234,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.tokenizer = load_tokenizer(policy_name_or_path)
        self.policy = load_causal_lm(policy_name_or_path, self.tokenizer, gradient_checkpointing=gradient_checkpointing,
                                     dtype=load_dtype)
        quantization = bnb_config(frozen_quantization)
        frozen = frozen_dtype or load_dtype
        self.reference = load_causal_lm(reference_name_or_path or policy_name_or_path, self.tokenizer, dtype=frozen,
                                  trainable=False, quantization_config=quantization)
        # Refuses an export without its normalisation (unless told).
        self.reward_model = RewardModel.from_pretrained(reward_model_path, quantization_config=quantization, dtype=frozen,
                                              require_normalization=require_reward_normalization)
        # The critic starts from the reward model and learns a value level too (a head with a bias).
        self.critic = RewardModel.from_pretrained(critic_name_or_path or reward_model_path, require_normalization=False,
                                                  dtype=load_dtype, head_bias=True).train()
        if gradient_checkpointing:
            self.critic.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._check_tokenizers(reward_model_path)
        for model in (self.reference, self.reward_model):
            model.eval()
            model.requires_grad_(False)
        if disable_dropout:
            for model in (self.policy, self.reference, self.reward_model.backbone, self.critic.backbone):
                turn_off_dropout(model)
        self.ema = None
        if ema_decay is not None:
            self.ema = AveragedModel(self.policy, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)
            self.ema.eval()
        self.kl_controller = (
            AdaptiveKLController(kl_coef, kl_target, kl_horizon) if adaptive_kl else FixedKLController(kl_coef)
        )
        self.episodes = 0
        self.val_score = MeanMetric()
        self.val_kl = MeanMetric()
        self.val_length = MeanMetric()
        self.val_pretrain_loss = MeanMetric()
        self._val_samples: list[list] = []

    # ------------------------------------------------------------------ construction helpers
    def _check_tokenizers(self, reward_model_path: str) -> None:
        if self.reward_model.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(
                f"the reward model at {reward_model_path} and the policy at {self.hparams.policy_name_or_path} have "
                "mismatched tokenizers; PPO scores the policy's tokens directly, so they must share one"
            )

    @property
    def context_length(self) -> int:
        return self.reward_model.context_length

    @property
    def max_new_tokens(self) -> int:
        """Longest response of a rollout (the data module checks that prompts leave room for it)."""
        return self.hparams.max_new_tokens

    @property
    def uses_ptx(self) -> bool:
        """Whether updates mix in pretraining text (the data module then needs training text for it)."""
        return self.hparams.ptx_coef > 0 and self.hparams.ptx_examples_per_episode > 0

    def trained_module(self) -> torch.nn.Module:
        return self.policy

    def trained_modules(self) -> list[torch.nn.Module]:
        return [self.policy, self.critic]

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.reference, self.reward_model] + ([self.ema] if self.ema is not None else [])

    def evaluated_policy(self) -> torch.nn.Module:
        """The policy that validation measures and the export writes: the EMA of the weights when ``ema_decay`` is set."""
        return self.ema.module if self.ema is not None else self.policy

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # The frozen reference and reward model are in eval mode on purpose; Lightning warns about any such module.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

    def configure_callbacks(self) -> list:
        return []  # batches are prompts, not token tensors: throughput is logged per iteration (episodes/s)

    # ------------------------------------------------------------------ optimisation set-up
    @property
    def _deepspeed(self) -> bool:
        return isinstance(self.trainer.strategy, DeepSpeedStrategy)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        strategy = self.trainer.strategy
        if self._deepspeed:
            # Lightning refuses gradient_clip_val with manual optimisation; DeepSpeed clips from its own config.
            if self.hparams.max_grad_norm:
                strategy.config.setdefault("gradient_clipping", self.hparams.max_grad_norm)
            # The prompt stream has no batch sampler to read a micro-batch size from: one update is one minibatch.
            strategy.config.setdefault("train_micro_batch_size_per_gpu", self.hparams.minibatch_size)
        if self.ema is not None and is_zero3(strategy):
            raise ValueError("ema_decay is not supported under ZeRO-3 (the policy's weights are sharded)")

    def configure_optimizers(self):
        """One optimizer (DeepSpeed takes only one): the policy and the critic as two parameter groups."""
        groups = [{"params": [p for p in self.policy.parameters() if p.requires_grad], "name": "policy"}]
        critic = {"params": [p for p in self.critic.parameters() if p.requires_grad], "name": "critic"}
        if self.hparams.critic_lr is not None:
            critic["lr"] = self.hparams.critic_lr
        groups.append(critic)
        optimizer = self.optimizer_factory(groups)
        warmup, start = self.hparams.warmup_steps, self.hparams.warmup_start_ratio
        schedule = lambda step: 1.0 if step >= warmup else start + (1.0 - start) * step / max(warmup, 1)  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    # ------------------------------------------------------------------ rollouts
    def _synced(self) -> bool:
        strategy = self.trainer.strategy if self._trainer is not None else None
        return synced_generation(strategy)

    def collate_prompts(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        query, mask = pad_with_mask(prompts, self.tokenizer.pad_token_id, left=True)
        return query.to(self.device), mask.to(self.device)

    def recompute_logprobs(self) -> bool:
        """Whether old log-probs need their own forward pass (see ``rollout_logprobs``)."""
        mode = self.hparams.rollout_logprobs
        if mode == "auto":
            precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
            return precision not in ("32-true", "32", "64-true", "64")
        return mode == "recompute"

    def rollout(self, prompts: list[list[int]], max_new_tokens: int, do_sample: bool = True, values: bool = True,
                policy: Optional[torch.nn.Module] = None, chunks: Optional[list[torch.Tensor]] = None) -> Rollout:
        """Generate responses to ``prompts`` with ``policy`` (default: the trained one) and score them (no gradients);
        ``values``: the critic's too. ``chunks``: the first PPO epoch's minibatches (see :func:`score_rollout`)."""
        h = self.hparams
        policy = policy if policy is not None else self.policy
        query, query_mask = self.collate_prompts(prompts)
        modes = [(m, m.training) for m in (policy, self.critic)]
        policy.eval()
        self.critic.eval()
        start = time.perf_counter()
        rollout = generate(
            policy, query, query_mask, eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=max_new_tokens, temperature=h.temperature, top_k=h.top_k, top_p=h.top_p, do_sample=do_sample,
            synced_gpus=self._synced(),
        )
        generated = time.perf_counter()
        rollout = score_rollout(
            rollout, reference=self.reference, critic=self.critic if values else None, reward_model=self.reward_model,
            temperature=h.temperature, missing_eos_penalty=h.missing_eos_penalty,
            policy=policy if self.recompute_logprobs() else None, chunks=chunks,
        )
        self.rollout_timing = {"generation": generated - start, "scoring": time.perf_counter() - generated}
        for module, mode in modes:
            module.train(mode)
        return rollout

    # ------------------------------------------------------------------ the PPO iteration
    def _done(self) -> bool:
        return self.hparams.total_episodes is not None and self.episodes >= self.hparams.total_episodes

    def on_train_batch_start(self, batch, batch_idx: int) -> Optional[int]:
        super().on_train_batch_start(batch, batch_idx)  # random-number states after a resume
        if self._done():  # e.g. resumed from a run that had already finished
            self.trainer.should_stop = True
            return -1
        return None

    def training_step(self, prompts: list[list[int]], batch_idx: int) -> None:
        h = self.hparams
        start = time.perf_counter()
        first_epoch = torch.randperm(len(prompts)).split(h.minibatch_size)  # scored in these minibatches, updated in them first
        rollout = self.rollout(prompts, h.max_new_tokens, chunks=list(first_epoch))
        mask = rollout.response_mask.float()
        rewards, kl = kl_penalized_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, mask, self.kl_controller.value)
        advantages, returns = gae(rewards, rollout.values, mask, h.discount, h.gae_lambda)
        if h.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        rollout_seconds = time.perf_counter() - start

        start = time.perf_counter()
        stats = self.ppo_update(rollout, advantages, returns, first_epoch)
        update_seconds = time.perf_counter() - start

        episodes = len(prompts) * self.trainer.world_size
        kl_per_response = self.all_gather(kl.sum(1)).mean()
        self.kl_controller.update(float(kl_per_response), episodes)
        self.episodes += episodes
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            datamodule.consumed_rollouts += 1
        self.log_dict(
            {
                "objective/score": rollout.scores.mean(),
                "objective/reward_model_score": rollout.reward_model_scores.mean(),
                "objective/kl": kl_per_response,
                "objective/kl_coef": self.kl_controller.value,
                "objective/entropy": masked_mean(rollout.entropy, mask, dim=1).mean(),
                "objective/non_score_reward": (rewards.sum(1) - rollout.scores).mean(),
                "rollout/response_length": mask.sum(1).mean(),
                "rollout/eos_fraction": rollout.ended.float().mean(),
                "value/explained_variance": explained_variance(rollout.values, returns, mask),
                "timing/rollout": rollout_seconds,
                "timing/generation": self.rollout_timing["generation"],
                "timing/scoring": self.rollout_timing["scoring"],
                "timing/update": update_seconds,
                "throughput/episodes_per_s": episodes / (rollout_seconds + update_seconds),
                "episodes": float(self.episodes),
                **stats,
            },
            prog_bar=False,
        )
        self.log("score", rollout.scores.mean(), prog_bar=True, logger=False)
        self.log("kl", kl_per_response, prog_bar=True, logger=False)
        self.lr_schedulers().step()
        if self._done():
            self.trainer.should_stop = True

    def ppo_update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor,
                   first_epoch: Optional[tuple[torch.Tensor, ...]] = None) -> dict[str, torch.Tensor]:
        """PPO epochs over shuffled minibatches; each minibatch's loss adds ``ptx_coef`` times the pretraining LM loss.

        The first epoch's minibatches are ``first_epoch`` (those the rollout was scored in); later epochs reshuffle.
        Also returns the first minibatch's ``policy/first_minibatch_approxkl`` and ``policy/first_minibatch_ratio_error``
        (max |ratio - 1|): before any update both are 0 up to float error when the old log-probs are right."""
        h = self.hparams
        optimizer = self.optimizers()
        sums: dict[str, torch.Tensor] = {}
        n = rollout.response.shape[0]
        padding = rollout.padding()  # on the host once per iteration, for cutting each minibatch's padding
        count = 0
        first: dict[str, torch.Tensor] = {}
        self.policy.train()
        self.critic.train()
        for epoch in range(h.ppo_epochs):
            order = first_epoch if epoch == 0 and first_epoch is not None else torch.randperm(n).split(h.minibatch_size)
            for rows in order:
                index = rows.to(self.device)
                mb, r = rollout.select(index).trimmed(padding[:, rows])  # no padding columns it does not need
                mb_advantages, mb_returns = advantages[index, :r], returns[index, :r]
                mask = mb.response_mask.float()
                logits = response_logits(self.policy, mb)
                logprobs = logprobs_from_logits(logits, mb.response, h.temperature)
                del logits
                policy = clipped_policy_loss(logprobs, mb.logprobs, mb_advantages, mask, h.clip_range)
                if not first:
                    ratio_error = ((logprobs.detach() - mb.logprobs).exp() - 1).abs() * mask
                    first = {"policy/first_minibatch_approxkl": policy["approxkl"].detach(),
                             "policy/first_minibatch_ratio_error": ratio_error.max()}
                values = critic_values(self.critic, mb)
                value = clipped_value_loss(values, mb.values, mb_returns, mask, h.value_clip_range)
                loss = policy["loss"] + h.vf_coef * value["loss"]
                ptx = torch.zeros((), device=self.device)
                if self.uses_ptx:
                    ptx_batch = self.trainer.datamodule.ptx_batch(h.ptx_examples_per_episode * len(index))
                    ptx_batch = {k: v.to(self.device) for k, v in ptx_batch.items()}
                    ptx_logits = self.policy(input_ids=ptx_batch["input_ids"], attention_mask=ptx_batch["attention_mask"], use_cache=False).logits
                    ptx = lm_loss(ptx_logits, ptx_batch["labels"])
                    loss = loss + h.ptx_coef * ptx
                optimizer.zero_grad()
                self.manual_backward(loss)
                if h.max_grad_norm and not self._deepspeed:  # DeepSpeed clips from its config (see setup)
                    self.clip_gradients(optimizer, gradient_clip_val=h.max_grad_norm, gradient_clip_algorithm="norm")
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
        h = self.hparams
        policy = self.evaluated_policy()
        if dataloader_idx == 0:
            # Validation samples from its own random stream, the same at every validation (seeded by the batch):
            # two validations of one policy give the same responses, and training's stream is left as it was, so a
            # resumed run trains exactly as an uninterrupted one whatever validations ran in between.
            devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(h.val_seed + batch_idx)
                rollout = self.rollout(batch, h.val_max_new_tokens or h.max_new_tokens, values=False, policy=policy)
            mask = rollout.response_mask.float()
            self.val_score.update(rollout.scores)
            self.val_kl.update(((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1))
            self.val_length.update(mask.sum(1))
            if batch_idx == 0 and h.num_sample_prompts > 0:
                k = h.num_sample_prompts
                texts = self.tokenizer.batch_decode(rollout.query[:k], skip_special_tokens=True)
                responses = self.tokenizer.batch_decode(rollout.response[:k], skip_special_tokens=True)
                self._val_samples = [[self.global_step, p, r, float(s)] for p, r, s in zip(texts, responses, rollout.scores[:k])]
        else:
            logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            self.val_pretrain_loss.update(lm_loss(logits, batch["labels"]), weight=batch["input_ids"].numel())

    def on_validation_epoch_end(self) -> None:
        self.log("val/score", self.val_score.compute(), prog_bar=True, sync_dist=True)
        self.log("val/kl", self.val_kl.compute(), sync_dist=True)
        self.log("val/response_length", self.val_length.compute(), sync_dist=True)
        self.log("val/pretrain_loss", self.val_pretrain_loss.compute(), prog_bar=True, sync_dist=True)
        for metric in (self.val_score, self.val_kl, self.val_length, self.val_pretrain_loss):
            metric.reset()
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
                "reward_model": h.reward_model_path, "reference": h.reference_name_or_path or h.policy_name_or_path}
