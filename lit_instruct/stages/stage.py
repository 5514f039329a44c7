"""What every stage's LightningModule shares: its name in checkpoints, fit timing, and the export at the end."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_instruct.callbacks import PeakMemory, TokenThroughput
from lit_instruct.models import export as export_lib
from lit_instruct.models.lora import export_lora, has_adapters
from lit_instruct.objectives import warmup_cosine_factor
from lit_instruct.utils import class_path

#: State-dict prefixes of checkpoints written before the redesign, and what they are called now.
LEGACY_PREFIXES = (("rm.", "reward_model."), ("ref.", "reference."))


def rng_states() -> dict[str, Any]:
    """This process's random-number states: Python, NumPy, torch (CPU and every CUDA device)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # plain types: loadable with weights_only
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` saved (CUDA states only where the devices are there)."""
    import random

    import numpy as np

    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def all_rng_states() -> list[dict[str, Any]]:
    """Every process's :func:`rng_states`, by global rank (a collective when several processes run: call it on all)."""
    states = rng_states()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return [states]
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, states)
    return gathered


def rank_rng_states(checkpoint: dict[str, Any], rank: int) -> Optional[dict[str, Any]]:
    """The random-number states process ``rank`` resumes with: its own when the checkpoint's run had that rank;
    on more processes than that run, rank ``r`` takes saved rank ``r mod W`` (a fresh run seeds every rank alike).
    Checkpoints from before the per-rank states hold rank 0's only (``rng_states``)."""
    per_rank = checkpoint.get("rng_states_per_rank")
    if per_rank:
        return per_rank[rank % len(per_rank)]
    return checkpoint.get("rng_states")


def default_optimizer(params, lr: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW with the paper's betas (0.9, 0.95). Override with any ``class_path`` under ``model.optimizer``."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)


def parameter_groups(model: torch.nn.Module) -> list[dict]:
    """Trainable parameters in two groups: matrices (weight-decayed by the optimizer's own setting), and
    biases and norms (never decayed)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


class Stage(L.LightningModule):
    """Base class of the stage modules.

    Subclasses set :attr:`stage`, store their optimizer factory as ``self.optimizer_factory``, take
    ``warmup_steps`` and ``min_lr_ratio`` hyperparameters, and implement :meth:`export_target` and
    :meth:`trained_module`.
    """

    stage = "stage"

    def __init__(self) -> None:
        super().__init__()
        self.throughput = TokenThroughput()
        self.peak_memory = PeakMemory()

    def trained_module(self) -> torch.nn.Module:
        """The module whose parameters the optimizer updates."""
        raise NotImplementedError

    def trained_modules(self) -> list[torch.nn.Module]:
        """Modules that train: put in train mode at the start of fit (dropout and gradient checkpointing on)."""
        return [self.trained_module()]

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Modules that never train: kept in eval mode."""
        return []

    def set_train_modes(self) -> None:
        """Trained modules in train mode, frozen ones in eval mode.

        Hugging Face's ``from_pretrained`` returns a model in eval mode and Lightning (2.6) no longer calls
        ``.train()`` when fit starts, so without this a loaded model would train with its dropout and gradient
        checkpointing silently off. (Lightning's validation loop restores these modes after each validation.)"""
        for module in self.trained_modules():
            module.train()
        for module in self.frozen_modules():
            module.eval()

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer over :meth:`trained_module`, with linear warm-up then cosine decay to ``min_lr_ratio``."""
        optimizer = self.optimizer_factory(parameter_groups(self.trained_module()))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
            warmup_cosine_factor, warmup_steps=self.hparams.warmup_steps,
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1), min_lr_ratio=self.hparams.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.throughput, self.peak_memory]

    def export_target(self) -> tuple[torch.nn.Module, Any]:
        """The module to export (it must have ``save_pretrained(dir, state_dict=...)``) and its tokenizer."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Before training: refuse an export directory that an export may not replace (a folder of other files), and
        record how the data formats prompts (stored in the export, checked where two models must agree)."""
        if stage == "fit" and self._trainer is not None:
            export_lib.check_export_target(self.export_path())
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "prompt_format"):
            self.prompt_format_description = datamodule.prompt_format().describe()

    prompt_format_description: Optional[dict] = None

    def export_metadata(self) -> dict:
        """Extra entries for ``lit_instruct.json``."""
        return {"prompt_format": self.prompt_format_description} if self.prompt_format_description else {}

    @classmethod
    def upgrade_hparams(cls, hparams: dict) -> dict:
        """Hyper-parameters a checkpoint saved, as this class's constructor arguments today (default: unchanged)."""
        return dict(hparams)

    def prepare_export_from_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Finish what ``on_fit_end`` would have done before exporting a converted checkpoint (default: nothing)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_instruct"] = {"class_path": class_path(self), "stage": self.stage}
        checkpoint["rng_states_per_rank"] = all_rng_states()  # every process's: a multi-process resume is exact

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the random-number states to put back just before the first training step after a resume (not now:
        building the data loaders draws from them), so that a resumed run samples what the uninterrupted one did
        (each process its own states: :func:`rank_rng_states`).
        Checkpoints from before the reward shift became a float (and the reward head lost its always-zero bias)
        still load."""
        self._rng_to_restore = rank_rng_states(checkpoint, self.global_rank)
        state = checkpoint.get("state_dict", {})
        own = self.state_dict()
        for key in [k for k in state if k not in own and (k.endswith("reward_shift") or k.endswith("head.bias"))]:
            state.pop(key)
        for old, new in LEGACY_PREFIXES:  # attributes renamed since (``rm`` -> ``reward_model``, ``ref`` -> ``reference``)
            for key in [k for k in state if k.startswith(old) and k not in own and new + k[len(old):] in own]:
                state[new + key[len(old):]] = state.pop(key)

    _rng_to_restore: Optional[dict] = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Optional[int]:
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        return None

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        self.set_train_modes()

    def fit_metrics(self) -> dict[str, float]:
        """Final logged scalars, the fit's wall time and its throughput (also printed)."""
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        metrics["timing/fit_seconds"] = time.perf_counter() - getattr(self, "_fit_start", time.perf_counter())
        summary = f"[{self.stage}] fit took {metrics['timing/fit_seconds']:.1f} s"
        if self.throughput.total_tokens:
            metrics["throughput/tokens_per_s"] = self.throughput.tokens_per_s
            summary += f"; {self.throughput.total_tokens} tokens at {self.throughput.tokens_per_s:.0f} tokens/s"
        if self.throughput.total_comparisons:
            metrics["throughput/comparisons_per_s"] = self.throughput.comparisons_per_s
            summary += f", {self.throughput.comparisons_per_s:.0f} comparisons/s"
        peak = self.all_gather(torch.tensor(self.peak_memory.measure(self), device=self.device)).max()  # every process's
        metrics["memory/peak_gib"] = float(peak)
        rank_zero_info(summary + f"; peak memory {metrics['memory/peak_gib']:.2f} GiB")
        return metrics

    def on_fit_end(self) -> None:
        self.export(self.export_path(), extra={"metrics": self.fit_metrics()})

    def export_path(self) -> Path:
        if self.hparams.get("export_dir"):
            return Path(self.hparams.export_dir)
        return Path(self.trainer.default_root_dir) / "export"

    def export(self, out_dir: str | Path, extra: Optional[dict] = None) -> Path:
        """Write the export of the current weights (a collective under ZeRO-3: call it on every rank)."""
        trainer = self._trainer
        strategy = trainer.strategy if trainer is not None else None
        model, tokenizer = self.export_target()
        lora = has_adapters(model)
        state_dict = None if lora else export_lib.full_state_dict(model, strategy)
        dtype = self.hparams.get("export_dtype") or "float32"
        out = Path(out_dir)
        metadata = {"stage": self.stage, "class_path": class_path(self), "hparams": dict(self.hparams), "dtype": dtype}
        if lora:  # merged weights (a plain Hugging Face directory), or the peft adapters alone on request
            adapters = bool((self.hparams.get("lora") or {}).get("export_adapters"))
            metadata.update({**self.export_metadata(), **(extra or {}), "lora": {"merged": not adapters, "base": self.lora_base()}})
            export_lora(model, tokenizer, out, metadata, strategy=strategy, dtype=dtype, adapters=adapters)
        elif strategy is None or strategy.global_rank == 0:
            metadata.update(self.export_metadata())
            metadata.update(extra or {})
            export_lib.save_export(model, tokenizer, out, metadata, state_dict=state_dict, dtype=dtype)
        if strategy is None or strategy.global_rank == 0:
            rank_zero_info(f"[{self.stage}] exported to {out}")
        if strategy is not None:
            strategy.barrier("export")
        return out

    def lora_base(self) -> Optional[str]:
        """The model the adapters sit on (what an adapters export names as its base)."""
        return self.hparams.get("model_name_or_path") or self.hparams.get("policy_name_or_path")
