"""Reward stage: train a reward model on K-way rankings with InstructGPT's grouped loss (all C(K,2) pairs of a
prompt in one batch element, ties dropped), normalise it (a gain from the starting policy's samples, a shift from SFT
demonstrations), export it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from lit_instruct.data.prompt_format import PromptFormat
from lit_instruct.data.rankings import RewardDataModule
from lit_instruct.metrics import PairAccuracyByK
from lit_instruct.models.causal_lm import (
    EMBEDDED,
    DtypeName,
    TinyConfig,
    load_causal_lm,
    load_tokenizer,
)
from lit_instruct.models.lora import (
    LoraSettings,
    add_adapters,
    as_lora,
    quantization_config,
    settings_dict,
)
from lit_instruct.models.reward_model import RewardModel
from lit_instruct.objectives import better_pairs, ranking_loss
from lit_instruct.rollout import collate_prompts, generate
from lit_instruct.stages.stage import Stage, default_optimizer
from lit_instruct.utils import as_group


@dataclass
class RewardGain:
    """The normalisation's gain: after training, the policy PPO will start from answers the data's
    ``policy_prompts_file`` and the reward is scaled so that those responses' scores have standard deviation
    ``target_std`` (as lm-human-preferences does); the shift then puts the SFT demonstrations' mean at 0. With a
    unit scale, PPO's ``missing_eos_penalty`` and ``kl_coef`` mean the same thing for every reward model."""

    policy: Optional[str] = None
    """The starting policy (usually the SFT export this reward model started from); ``None``: no gain (shift only)."""
    target_std: float = 1.0
    """Standard deviation of the policy samples' normalised scores."""
    max_new_tokens: int = 48
    """Longest sampled response: set it to PPO's ``sampling.max_new_tokens`` (responses it cuts are scored cut, as
    in PPO)."""
    temperature: float = 1.0
    """Sampling temperature (PPO's)."""
    batch_size: int = 32
    """Prompts per generation batch."""
    seed: int = 0
    """Seed of the sampling (its own random stream; every process draws the same samples)."""


class RewardModule(Stage):
    """Train a reward model on rankings with InstructGPT's grouped loss; normalise it; export it.

    Args:
        model_name_or_path: The causal LM to start from: usually the SFT export; ``"embedded"`` builds a fresh
            tiny model; any Hugging Face causal LM (hub name or directory) works.
        tokenizer_name_or_path: Tokenizer; ``None`` takes the model's.
        tiny: Size of the embedded model (ignored for other models).
        residual_dropout: Residual/hidden dropout; ``None`` keeps the model config's value.
        optimizer: Optimizer factory (paper: Adam, LR 9e-6, cosine to 10%).
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Cosine decay ends at this fraction of the peak learning rate.
        export_dir: Where the reward-model export is written; ``None``: ``<default_root_dir>/export``.
        max_k: Validation accuracy is also reported per K for K = 2..max_k (larger K share the last bucket).
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        load_dtype: dtype the weights are loaded in, whatever the checkpoint stores: float32 (the default) keeps
            fp32 master weights under ``bf16-mixed``.
        export_dtype: dtype of the exported weights (the normalisation shift is stored exactly either way).
        gain: The normalisation's gain from the starting policy's samples (:class:`RewardGain`); its ``policy``
            ``None`` normalises by the shift alone.
        lora: Train LoRA adapters (``peft``) on the frozen transformer, and the head in full, instead of every weight
            (:class:`LoraSettings`; ``quantize`` for QLoRA); the export merges them. ``None``: full fine-tuning.
    """

    stage = "reward"

    def __init__(
        self,
        model_name_or_path: str = EMBEDDED,
        tokenizer_name_or_path: Optional[str] = None,
        tiny: TinyConfig = TinyConfig(),
        residual_dropout: Optional[float] = None,
        optimizer: OptimizerCallable = default_optimizer,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        export_dir: Optional[str] = None,
        max_k: int = 9,
        gradient_checkpointing: bool = False,
        load_dtype: DtypeName = "float32",
        export_dtype: DtypeName = "float32",
        gain: RewardGain = RewardGain(),
        lora: Optional[LoraSettings] = None,
    ) -> None:
        super().__init__()
        self.gain, self.lora = as_group(gain, RewardGain), as_lora(lora)
        gain, lora = dict(vars(self.gain)), settings_dict(self.lora)  # saved as plain dicts, as a config gives them
        self.save_hyperparameters()
        self.optimizer_factory = optimizer
        tiny = TinyConfig(**tiny) if isinstance(tiny, dict) else tiny
        self.tokenizer = load_tokenizer(tokenizer_name_or_path or model_name_or_path, tiny)
        self.reward_model = RewardModel.from_causal_lm(
            model_name_or_path, self.tokenizer, tiny=tiny, residual_dropout=residual_dropout,
            gradient_checkpointing=gradient_checkpointing, dtype=load_dtype,
            quantization_config=quantization_config(self.lora, model_name_or_path),
        )
        if self.lora is not None:
            self.reward_model.backbone = add_adapters(self.reward_model.backbone, self.lora, causal_lm=False)
        self.val_loss = MeanMetric()
        self.val_margin = MeanMetric()
        self.val_accuracy = BinaryAccuracy()
        self.val_accuracy_by_k = PairAccuracyByK(max_k)
        self.val_length_baseline = MeanMetric()
        # The same on the comparisons with neither completion cut to fit the context (RewardDataModule.cut_comparisons)
        self.val_accuracy_uncut = MeanMetric()
        self.val_length_baseline_uncut = MeanMetric()

    @property
    def context_length(self) -> int:
        return self.reward_model.context_length

    def rewards(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (b, k_max) reward grid: every completion of every prompt through the model exactly once."""
        flat = self.reward_model(batch["input_ids"], batch["attention_mask"])  # (n,)
        grid = flat.new_zeros(batch["mask"].shape)
        return grid.index_put((batch["group"], batch["slot"]), flat)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = ranking_loss(self.rewards(batch), batch["ranks"], batch["mask"], batch.get("pair_mask"))
        self.log("train/loss", out["loss"], prog_bar=True)
        self.log("train/accuracy", (out["pair_margin"] > 0).float().mean(), prog_bar=True)
        self.log("train/margin", out["pair_margin"].mean())
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = ranking_loss(self.rewards(batch), batch["ranks"], batch["mask"])
        # The same comparisons judged by length alone ("the longer completion wins", ties count half): a reward
        # model should beat it, and on AI-judged data it is strong.
        lengths = batch["attention_mask"].sum(-1).float()
        by_length = ranking_loss(lengths.new_zeros(batch["mask"].shape).index_put((batch["group"], batch["slot"]), lengths),
                                 batch["ranks"], batch["mask"])["pair_margin"]
        length_wins = (by_length > 0).float() + 0.5 * (by_length == 0).float()
        self.val_length_baseline.update(length_wins)
        if "cut" in batch:  # pair_margin lists the pairs in better_pairs' order
            uncut = ~batch["cut"]
            uncut = (uncut[:, :, None] & uncut[:, None, :])[better_pairs(batch["ranks"], batch["mask"])]
            self.val_accuracy_uncut.update((out["pair_margin"][uncut] > 0).float())
            self.val_length_baseline_uncut.update(length_wins[uncut])
        self.val_loss.update(out["loss"], weight=batch["mask"].shape[0])
        self.val_margin.update(out["pair_margin"])
        probs = torch.sigmoid(out["pair_margin"])
        self.val_accuracy.update(probs, torch.ones_like(probs, dtype=torch.long))
        self.val_accuracy_by_k.update(out["pair_margin"], out["pair_k"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log("val/accuracy", self.val_accuracy.compute(), prog_bar=True, sync_dist=True)
        self.log("val/margin", self.val_margin.compute(), sync_dist=True)
        self.log("val/length_baseline_accuracy", self.val_length_baseline.compute(), sync_dist=True)
        self.log("val/accuracy_uncut", self.val_accuracy_uncut.compute(), sync_dist=True)  # nan without uncut pairs
        self.log("val/length_baseline_accuracy_uncut", self.val_length_baseline_uncut.compute(), sync_dist=True)
        for k, accuracy in self.val_accuracy_by_k.compute().items():  # synced: every rank logs the same Ks
            self.log(f"val/accuracy_k{k}", accuracy)
        for metric in (self.val_loss, self.val_margin, self.val_accuracy, self.val_length_baseline, self.val_accuracy_by_k,
                       self.val_accuracy_uncut, self.val_length_baseline_uncut):
            metric.reset()

    def trained_module(self) -> nn.Module:
        return self.reward_model

    def setup(self, stage: str) -> None:
        """Take the data's prompt format now, so that the normalisation and the export use it."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "prompt_format"):
            self.use_format(datamodule.prompt_format())

    def use_format(self, fmt: PromptFormat) -> None:
        self.reward_model.prompt_template = fmt.template
        self.reward_model.prompt_format = fmt.describe()

    # ------------------------------------------------------------------ normalisation and export
    @torch.no_grad()
    def policy_sample_scores(self, prompts: list) -> torch.Tensor:
        """Raw scores (gain 1, shift 0) of the starting policy's sampled responses to ``prompts``, scored on the
        policy's tokens as PPO scores them: a response cut at ``max_new_tokens`` is scored cut. Seeded by
        ``gain.seed`` on its own random stream."""
        g, device = self.gain, self.device
        tokenizer = load_tokenizer(g.policy)
        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"gain.policy {g.policy}: its tokenizer differs from the reward model's; PPO scores the "
                             "policy's tokens directly, so the policy must share the reward model's tokenizer")
        policy = load_causal_lm(g.policy, tokenizer, trainable=False).to(device).eval()
        fmt, room = self.reward_model.format(), self.context_length - g.max_new_tokens
        ids = [self.tokenizer(fmt.prompt(p), add_special_tokens=False)["input_ids"][-room:] for p in prompts]
        scores = []
        devices = [torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(g.seed)
            for start in range(0, len(ids), g.batch_size):
                query, query_mask = collate_prompts(ids[start:start + g.batch_size], tokenizer.pad_token_id, device)
                rollout = generate(policy, query, query_mask, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id, max_new_tokens=g.max_new_tokens,
                                   temperature=g.temperature)
                rollout.generation_logits = None
                scores.append(self.reward_model(rollout.input_ids, rollout.attention_mask).cpu())
        return torch.cat(scores)

    @torch.no_grad()
    def normalize(self, demonstrations: list[tuple[str, str]], policy_prompts: Optional[list] = None,
                  batch_size: int = 16) -> float:
        """Normalise the reward: with ``gain.policy`` set, a gain so that the starting policy's sampled responses to
        ``policy_prompts`` score with standard deviation ``gain.target_std``; then a shift so that the demonstrations'
        mean reward is 0 (the paper). Returns the shift; the statistics go to ``reward_model.normalization``.

        Every process scores the same demonstrations and samples (a collective under ZeRO-3)."""
        model = self.reward_model
        was_training = model.training
        model.eval()
        model.reward_gain, model.reward_shift = 1.0, 0.0
        raw = model.score([p for p, _ in demonstrations], [r for _, r in demonstrations], batch_size=batch_size).double()
        info = {"raw_mean": float(raw.mean()), "raw_std": float(raw.std()), "rows": len(demonstrations)}
        gain = 1.0
        if self.gain.policy and policy_prompts:
            if len(policy_prompts) < 2:
                raise ValueError("the normalisation's gain needs at least 2 policy prompts (data.normalization_rows)")
            sampled = self.policy_sample_scores(policy_prompts).double()
            gain = self.gain.target_std / max(float(sampled.std()), 1e-8)
            info.update(gain=gain, target_std=self.gain.target_std, policy=self.gain.policy, policy_samples=len(sampled),
                        policy_raw_mean=float(sampled.mean()), policy_raw_std=float(sampled.std()),
                        policy_max_new_tokens=self.gain.max_new_tokens)
        elif self.gain.policy:
            raise ValueError("gain.policy is set but the data gave no policy prompts (data.policy_prompts_file)")
        shift = -gain * info["raw_mean"]
        model.reward_gain, model.reward_shift = gain, shift
        model.normalization = {"shift": shift, **info}
        model.train(was_training)
        return shift

    def prepare_export_from_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints are written before the normalisation: redo it from the data module's saved settings."""
        settings = {k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
        data = RewardDataModule(**settings)
        data.connect(self.tokenizer)
        self.use_format(data.prompt_format())
        if settings.get("demonstrations_file"):
            self.normalize(data.demonstrations(), data.policy_prompts() if self.gain.policy else None)
            self.record_normalization_files(data)

    def record_normalization_files(self, data: RewardDataModule) -> None:
        self.reward_model.normalization["file"] = data.hparams.demonstrations_file
        if self.gain.policy:
            self.reward_model.normalization["policy_prompts_file"] = data.hparams.policy_prompts_file

    def on_fit_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        demos = datamodule.demonstrations() if hasattr(datamodule, "demonstrations") else []
        if demos:
            prompts = datamodule.policy_prompts() if self.gain.policy else None
            shift = self.normalize(demos, prompts)
            info = self.reward_model.normalization
            gain = info.get("gain", 1.0)
            rank_zero_info(f"[reward] normalised on {len(demos)} demonstrations: shift {shift:+.4f} (raw std {info['raw_std']:.4f})"
                           + (f"; gain {gain:.4f} from {info['policy_samples']} samples of {info['policy']} (raw std "
                              f"{info['policy_raw_std']:.4f})" if "gain" in info else "; no gain (gain.policy unset)"))
            for logger in self.trainer.loggers:
                logger.log_metrics({"reward/normalization_shift": shift, "reward/normalization_gain": gain,
                                    "reward/policy_sample_raw_std": info.get("policy_raw_std", float("nan"))},
                                   step=self.trainer.global_step)
            self.record_normalization_files(datamodule)
        else:
            rank_zero_info("[reward] no demonstrations_file: the export is not normalised, and PPO will refuse it")
        super().on_fit_end()

    def export_target(self):
        return self.reward_model, self.tokenizer

    def export_metadata(self) -> dict:
        normalization = {**self.reward_model.normalization, "shift": self.reward_model.reward_shift} if self.reward_model.normalization else None
        return {"normalization": normalization, "prompt_template": self.reward_model.prompt_template, "prompt_format": self.reward_model.prompt_format}
