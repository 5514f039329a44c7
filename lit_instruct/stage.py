"""What every stage's LightningModule shares: its name in checkpoints, fit timing, and the export at the end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_instruct import export as export_lib
from lit_instruct.utils import class_path


class Stage(L.LightningModule):
    """Base class of the stage modules. Subclasses set :attr:`stage` and implement :meth:`export_target`."""

    stage = "stage"

    def export_target(self) -> tuple[torch.nn.Module, Any]:
        """The module to export (it must have ``save_pretrained(dir, state_dict=...)``) and its tokenizer."""
        raise NotImplementedError

    def export_metadata(self) -> dict:
        """Extra entries for ``lit_instruct.json``."""
        return {}

    def prepare_export_from_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Finish what ``on_fit_end`` would have done before exporting a converted checkpoint (default: nothing)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_instruct"] = {"class_path": class_path(self), "stage": self.stage}

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def fit_metrics(self) -> dict[str, float]:
        """Final logged scalars, plus the fit's wall time."""
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        metrics["timing/fit_seconds"] = time.perf_counter() - getattr(self, "_fit_start", time.perf_counter())
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
        state_dict = export_lib.full_state_dict(model, strategy)
        out = Path(out_dir)
        if strategy is None or strategy.global_rank == 0:
            metadata = {"stage": self.stage, "class_path": class_path(self), "hparams": dict(self.hparams)}
            metadata.update(self.export_metadata())
            metadata.update(extra or {})
            export_lib.save_export(model, tokenizer, out, metadata, state_dict=state_dict)
            rank_zero_info(f"[{self.stage}] exported to {out}")
        if strategy is not None:
            strategy.barrier("export")
        return out
