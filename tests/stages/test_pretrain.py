"""Pretrain stage: a CLI run that trains and exports (packing and the held-out split: tests/data/test_pretraining.py)."""

import yaml
from helpers import CONFIGS, run_cli, tiny_overrides


def test_cli_pretrain_stage_trains_and_exports_with_wandb_offline(tmp_path):
    """With no W&B API key the config's WandbLogger runs offline, leaving a run folder for `wandb sync`."""
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path / "home"), "WANDB_DIR": None}
    logger = "lightning.pytorch.loggers.WandbLogger"
    done = run_cli("fit", "--config", str(CONFIGS / "pretrain" / "tiny.yaml"), *tiny_overrides(tmp_path, logger), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert "held-out documents" in done.stderr + done.stdout
    assert "logging offline" in done.stderr + done.stdout
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    # the config names no W&B run: the CLI names it after the run folder and tags it with the stage
    logger = yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]["logger"]["init_args"]
    assert logger["name"] == tmp_path.name and logger["tags"][0] == "pretrain"
