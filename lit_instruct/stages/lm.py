"""The causal language-model LightningModule shared by the base (pretraining) and SFT stages.

The two stages differ only in their data: the pretrain stage puts a label on every token, SFT on response tokens
only. The loss is :func:`lit_instruct.objectives.lm_loss` over whatever tokens carry a label.
"""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lit_instruct.data.batching import pad_with_mask
from lit_instruct.loggers import log_table
from lit_instruct.models.causal_lm import (
    EMBEDDED,
    DtypeName,
    TinyConfig,
    context_length,
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
from lit_instruct.objectives import IGNORE_INDEX, lm_loss
from lit_instruct.stages.stage import Stage, default_optimizer
from lit_instruct.strategies import synced_generation


class CausalLMModule(Stage):
    """Train a causal LM with the next-token loss on labelled tokens; export a Hugging Face directory at the end.

    Args:
        model_name_or_path: ``"embedded"`` (a tiny GPT-2 built from ``tiny``), a Hugging Face hub name, or a
            local directory such as another stage's export.
        tokenizer_name_or_path: Tokenizer to use; ``None`` takes the model's.
        tiny: Size of the embedded model (ignored for other models).
        residual_dropout: Residual/hidden dropout during training (the paper's SFT used 0.2); ``None`` keeps the
            model config's value.
        optimizer: Optimizer factory, e.g. ``class_path: torch.optim.AdamW`` or
            ``bitsandbytes.optim.AdamW8bit``; receives two parameter groups (decayed, not decayed).
        warmup_steps: Linear warm-up steps from 0 to the peak learning rate.
        min_lr_ratio: Cosine decay ends at this fraction of the peak learning rate (paper: 0.1).
        export_dir: Where the Hugging Face export is written at the end of fit; ``None``:
            ``<trainer.default_root_dir>/export``.
        num_sample_prompts: Validation prompts whose generations are logged as a table after each validation.
        sample_max_new_tokens: Tokens generated per sample.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        attn_implementation: Attention kernel for Hugging Face models (``"sdpa"``, ``"eager"``,
            ``"flash_attention_2"``); ``None`` keeps the library's default.
        load_dtype: dtype the weights are loaded in, whatever the checkpoint stores (hub checkpoints are often fp16
            or bf16): float32, the default, keeps fp32 master weights under ``bf16-mixed`` (an fp16 weight stepped
            by an update smaller than its rounding step would not move).
        export_dtype: dtype of the exported weights (``config.json`` says which).
        lora: Train LoRA adapters (``peft``) on the frozen model instead of every weight (:class:`LoraSettings`;
            ``quantize`` for QLoRA); the export merges them. ``None``: full fine-tuning.
    """

    stage = "lm"

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
        num_sample_prompts: int = 4,
        sample_max_new_tokens: int = 48,
        gradient_checkpointing: bool = False,
        attn_implementation: Optional[str] = None,
        load_dtype: DtypeName = "float32",
        export_dtype: DtypeName = "float32",
        lora: Optional[LoraSettings] = None,
    ) -> None:
        super().__init__()
        self.lora = as_lora(lora)
        lora = settings_dict(self.lora)  # saved as a plain dict, as a config gives it
        self.save_hyperparameters()
        self.optimizer_factory = optimizer
        tiny = TinyConfig(**tiny) if isinstance(tiny, dict) else tiny
        self.tokenizer = load_tokenizer(tokenizer_name_or_path or model_name_or_path, tiny)
        self.model = load_causal_lm(
            model_name_or_path,
            self.tokenizer,
            tiny=tiny,
            residual_dropout=residual_dropout,
            attn_implementation=attn_implementation,
            gradient_checkpointing=gradient_checkpointing,
            dtype=load_dtype,
            quantization_config=quantization_config(self.lora, model_name_or_path),
        )
        if self.lora is not None:
            self.model = add_adapters(self.model, self.lora)
        self.val_loss = MeanMetric()
        self.val_perplexity = Perplexity(ignore_index=IGNORE_INDEX)

    # ----------------------------------------------------------------- properties
    @property
    def context_length(self) -> int:
        """Longest sequence the model takes."""
        return context_length(self.model.config)

    # ----------------------------------------------------------------- steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (b, t, v)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = lm_loss(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        tokens = (labels[:, 1:] != IGNORE_INDEX).sum()
        self.val_loss.update(lm_loss(logits, labels), weight=tokens)
        self.val_perplexity.update(logits[:, :-1].float(), labels[:, 1:])

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log("val/perplexity", self.val_perplexity.compute(), sync_dist=True)
        self.val_loss.reset()
        self.val_perplexity.reset()
        if not self.trainer.sanity_checking:
            self.log_samples()

    # ----------------------------------------------------------------- samples
    def sample_prompts(self) -> list[str]:
        """Formatted validation prompts from the data module (``sample_prompts(n)``), if it offers any."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.hparams.num_sample_prompts <= 0 or not hasattr(datamodule, "sample_prompts"):
            return []
        return datamodule.sample_prompts(self.hparams.num_sample_prompts)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, do_sample: bool = False) -> list[str]:
        """Continue each prompt (left-padded batch, KV cache); returns the generated text only."""
        limit = max(1, self.context_length - max_new_tokens)
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"][-limit:] for p in prompts]
        input_ids, attention_mask = (t.to(self.device) for t in pad_with_mask(ids, self.tokenizer.pad_token_id, left=True))
        synced = synced_generation(self.trainer.strategy if self._trainer is not None else None)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            synced_gpus=synced,
        )
        self.model.train(was_training)
        return self.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)

    def log_samples(self) -> None:
        prompts = self.sample_prompts()
        if not prompts:
            return
        responses = self.generate(prompts, self.hparams.sample_max_new_tokens)
        rows = [[self.global_step, p, r] for p, r in zip(prompts, responses)]
        log_table(self.trainer, "val/samples", ["step", "prompt", "response"], rows)

    # ----------------------------------------------------------------- export
    def export_target(self):
        return self.model, self.tokenizer

    def trained_module(self) -> torch.nn.Module:
        return self.model
