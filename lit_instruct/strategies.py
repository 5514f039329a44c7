"""Lightning's DeepSpeed strategy, opened up to the CPU for development and tests.

Stock ``DeepSpeedStrategy`` refuses any accelerator but CUDA. DeepSpeed itself runs ZeRO-2 and ZeRO-3 on CPU
processes (gloo backend), so this subclass removes the three CUDA-only assumptions: the accelerator check, the
device-index check, and ``device_rank=None`` passed to ``deepspeed.initialize``. On GPUs use the stock
strategy (``strategy: deepspeed_stage_2`` etc., see ``configs/trainer/``); this class is for CPUs only.
"""

from __future__ import annotations

import argparse

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.strategies.ddp import DDPStrategy


def is_zero3(strategy) -> bool:
    """Whether ``strategy`` shards the parameters (DeepSpeed ZeRO stage 3); ``None`` (no trainer) is not."""
    return bool(getattr(strategy, "zero_stage_3", False))


def synced_generation(strategy) -> bool:
    """Whether ``generate`` must keep every process stepping until all are done (ZeRO-3 on more than one process:
    each forward pass gathers parameters from every rank)."""
    return is_zero3(strategy) and strategy.world_size > 1


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO (stage 1-3) on CPU processes. Takes every argument of Lightning's ``DeepSpeedStrategy``."""

    def setup_environment(self) -> None:
        # DeepSpeedStrategy's own version only adds the CUDA check before calling this.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        # As DeepSpeedStrategy.setup_distributed, without the CUDA device-index validation.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer

    def _initialize_deepspeed_inference(self, model) -> None:
        import deepspeed

        config = {"train_micro_batch_size_per_gpu": 1}
        for key in ("bf16", "fp16"):
            if key in self.config:
                config[key] = self.config[key]
        if self.zero_stage_3:
            config["zero_allow_untested_optimizer"] = self.config["zero_allow_untested_optimizer"]
            config["zero_optimization"] = self.config["zero_optimization"]
        self.model, _, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=config,
            model=model,
            optimizer=None,
            lr_scheduler=None,
            model_parameters=[],
            dist_init_required=False,
        )
