"""lit-instruct: InstructGPT's SFT -> reward model -> PPO-ptx pipeline as PyTorch Lightning modules.

The stages and their data modules are importable from here by the short class paths the configs use
(``class_path: lit_instruct.SFTModule``). The layout: ``models/`` (backbones, tokenizers, the reward model,
exports), ``data/`` (records, prompt formats, batching, one data module per kind of data), ``stages/`` (one
LightningModule per stage), ``objectives.py`` (the pure math), ``rollout.py``, ``evaluation/`` and ``tools/``
(command line, pipeline, sweeps, study, reports, checkpoints).
"""

import os as _os

import torch as _torch

if not _torch.cuda.is_available():
    # DeepSpeed would otherwise warn on stdout at import that it fell back to the CPU.
    _os.environ.setdefault("DS_ACCELERATOR", "cpu")

from lit_instruct.data.demonstrations import SFTDataModule
from lit_instruct.data.pretraining import PretrainDataModule
from lit_instruct.data.prompt_format import PromptFormat
from lit_instruct.data.prompts import PPODataModule
from lit_instruct.data.rankings import RewardDataModule
from lit_instruct.models.causal_lm import TinyConfig
from lit_instruct.models.reward_model import RewardModel
from lit_instruct.stages.ppo import PPOModule
from lit_instruct.stages.pretrain import PretrainModule
from lit_instruct.stages.reward import RewardModule
from lit_instruct.stages.sft import SFTModule
from lit_instruct.strategies import CPUDeepSpeedStrategy

__version__ = "0.1.0"

__all__ = [
    "CPUDeepSpeedStrategy",
    "PPODataModule",
    "PPOModule",
    "PretrainDataModule",
    "PretrainModule",
    "PromptFormat",
    "RewardDataModule",
    "RewardModel",
    "RewardModule",
    "SFTDataModule",
    "SFTModule",
    "TinyConfig",
]
