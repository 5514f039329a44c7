"""What the test files share: paths, the CLI in a fresh process, a quiet trainer, data files, the tiny exports.

``tests/`` is on pytest's ``pythonpath`` (pyproject.toml), so every test folder imports this as ``helpers`` (as it
does :mod:`hf_models` and :mod:`probes`). Fixtures live in ``conftest.py``; this module holds plain functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


# ---------------------------------------------------------------------------------------------- the CLI
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


# ---------------------------------------------------------------------------------------------- in-process training
def quiet_trainer(**kwargs):
    """An ``L.Trainer`` on CPU that prints and logs nothing (no logger, progress bar or model summary); ``kwargs``
    add to or override those settings (``logger=CSVLogger(...)`` where a test reads the logs)."""
    import lightning as L

    settings = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(**{**settings, **kwargs})


# ---------------------------------------------------------------------------------------------- data files
def write_jsonl(path: Path, rows) -> str:
    """One line per row: a ``str`` or ``bytes`` row as it is (a broken line, invalid UTF-8, plain text), anything
    else as JSON. Returns the path as a string (as a config gives it)."""
    data = b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n" for r in rows)
    Path(path).write_bytes(data)
    return str(path)


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    return path


ROWS = [
    {"prompt": f"Question {i}, with a comma and \"quotes\"?", "response": f"Answer {i}.\nSecond line.", "source": "test"}
    for i in range(1, 7)
]
"""Demonstration rows every format can hold (tests/data: read_rows on each format, column mapping)."""


def validate(row: dict) -> str | None:
    """The ``read_rows`` check of :data:`ROWS`: prompt and response are non-empty strings."""
    from lit_instruct.data.records import check_text_fields

    return check_text_fields(row, ("prompt", "response"))


def only_rows(result) -> list:
    """The rows of ``read_rows``' numbered result."""
    return [row for _, row in result]


# ---------------------------------------------------------------------------------------------- exports
def build_tiny_exports(root: Path, tokenizer) -> Path:
    """Under ``root``: ``sft``, a tiny SFT export (30 steps, so its distribution is peaked like a trained model's),
    and ``rm``, a normalised reward-model export built from it (shift 0.1). What the PPO tests start from."""
    import torch

    from lit_instruct import RewardModel, SFTDataModule, SFTModule, TinyConfig
    from lit_instruct.models.export import save_export

    torch.manual_seed(0)
    sft = SFTModule(tiny=TinyConfig(n_layer=1, n_embd=64, n_head=2, n_positions=128), num_sample_prompts=0,
                    optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3), export_dir=str(root / "sft"))
    quiet_trainer(max_steps=30, limit_val_batches=0, enable_checkpointing=False,
                  default_root_dir=root).fit(sft, SFTDataModule(batch_size=8, max_length=64))
    rm = RewardModel.from_causal_lm(str(root / "sft"), tokenizer)
    rm.reward_shift = 0.1
    rm.normalization = {"shift": 0.1, "rows": 0}
    save_export(rm, tokenizer, root / "rm", {"stage": "reward", "normalization": rm.normalization})
    return root


def tree(root: Path) -> dict:
    """Every path under ``root`` with its bytes (``None`` for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(Path(root).rglob("*"))}


def user_folder(path: Path) -> Path:
    """A folder of a user's own files (what an export must never replace)."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my own notes\n")
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01" * 100)
    return path


def gained_reward_model(sft: Path, out: Path, rows: int = 24, max_new_tokens: int = 8) -> Path:
    """A reward-model export at ``out`` from the SFT export ``sft`` (untrained head), normalised with the gain from
    ``sft``'s samples (unit std) and the shift from demonstrations: a reward model on the scale PPO expects."""
    from lit_instruct import RewardDataModule, RewardModule
    from lit_instruct.stages.reward import RewardGain

    module = RewardModule(str(sft), gain=RewardGain(policy=str(sft), max_new_tokens=max_new_tokens, batch_size=8))
    data = RewardDataModule(max_length=128, normalization_rows=rows)
    data.connect(module.tokenizer, 128)
    module.normalize(data.demonstrations(), data.policy_prompts())
    return module.export(out)


def ppo_flags(exports: Path, root: Path, *flags: str) -> tuple[str, ...]:
    """``lit-instruct fit`` flags of the tiny PPO-ptx config on ``exports`` (the session's ``tiny_exports``), shrunk:
    4 prompts an iteration, 2 minibatches, a checkpoint every 2 iterations, run folder ``root``; ``flags`` last."""
    return ("--config", str(CONFIGS / "ppo/tiny.yaml"),
            "--model.policy_name_or_path", str(exports / "sft"), "--model.reward_model_path", str(exports / "rm"),
            "--model.sampling.max_new_tokens", "6", "--model.ppo.minibatch_size", "2",
            "--model.ptx.examples_per_episode", "1",
            "--model.num_sample_prompts", "0", "--model.warmup_steps", "0",
            "--data.rollout_batch_size", "4", "--data.max_prompt_tokens", "48", "--data.ptx_block_size", "32",
            "--data.max_val_prompts", "4", "--data.val_batch_size", "4", "--data.max_val_pretrain_blocks", "2",
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.every_n_train_steps", "4", "--trainer.callbacks.save_last", "true",
            "--trainer.default_root_dir", str(root), *flags)
