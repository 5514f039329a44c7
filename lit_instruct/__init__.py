"""lit-instruct: InstructGPT's SFT -> reward model -> PPO-ptx pipeline as PyTorch Lightning modules."""

import os as _os

import torch as _torch

if not _torch.cuda.is_available():
    # DeepSpeed would otherwise warn on stdout at import that it fell back to the CPU.
    _os.environ.setdefault("DS_ACCELERATOR", "cpu")

from lit_instruct.base import BaseDataModule, BaseModule
from lit_instruct.models import TinyConfig
from lit_instruct.ppo_ptx import PPOPtxDataModule, PPOPtxModule
from lit_instruct.prompts import PromptFormat
from lit_instruct.reward import RewardDataModule, RewardModel, RewardModule
from lit_instruct.sft import SFTDataModule, SFTModule
from lit_instruct.strategies import CPUDeepSpeedStrategy

__version__ = "0.1.0"

__all__ = [
    "BaseDataModule",
    "BaseModule",
    "CPUDeepSpeedStrategy",
    "PPOPtxDataModule",
    "PPOPtxModule",
    "PromptFormat",
    "RewardDataModule",
    "RewardModel",
    "RewardModule",
    "SFTDataModule",
    "SFTModule",
    "TinyConfig",
]
