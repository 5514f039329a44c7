import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # no test touches the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tokenizer():
    from lit_instruct.models.causal_lm import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``lit-instruct ARGS`` in a fresh process (as a user would), returning the completed process."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "lit_instruct", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def tiny_overrides(tmp_path: Path, logger: str = "lightning.pytorch.loggers.CSVLogger", samples: bool = True) -> list[str]:
    """Flags that shrink a tiny config to a few steps, logging under ``tmp_path`` (CSV unless ``logger`` says)."""
    sample_flags = ["--model.num_sample_prompts", "2", "--model.sample_max_new_tokens", "4"] if samples else []
    return sample_flags + [
        "--trainer.max_steps", "6",
        "--trainer.limit_val_batches", "2",
        "--trainer.val_check_interval", "3",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", logger,
        "--trainer.logger.save_dir", str(tmp_path),
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",  # replaces the config's list
        "--trainer.callbacks.dirpath", str(tmp_path / "checkpoints"),
        "--trainer.callbacks.save_last", "true",
        "--model.export_dir", str(tmp_path / "export"),
    ]
