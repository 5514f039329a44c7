"""Every YAML under configs/ parses with --print_config, alone (stage configs) or composed (trainer configs)."""

import contextlib
import io

import pytest
import yaml
from conftest import CONFIGS

from lit_instruct.tools.cli import main

STAGE_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("trainer", "pipeline"))
TRAINER_CONFIGS = sorted((CONFIGS / "trainer").glob("*.yaml"))


def print_config(*configs) -> dict:
    args = ["fit"]
    for c in configs:
        args += ["--config", str(c)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_there_are_configs_for_every_stage():
    assert {p.parent.name for p in STAGE_CONFIGS} >= {"pretrain", "sft", "reward", "ppo"}
    assert {p.stem for p in TRAINER_CONFIGS} >= {"cpu", "cpu_zero2", "cpu_zero3", "gpu_ddp", "gpu_zero2", "gpu_zero3"}
    for stage in {p.parent.name for p in STAGE_CONFIGS}:
        assert (CONFIGS / stage / "tiny.yaml").is_file(), f"stage {stage} has no tiny config"


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stage_config_parses(config):
    cfg = print_config(config)
    assert cfg["model"]["class_path"].startswith("lit_instruct.")
    assert cfg["data"]["class_path"].startswith("lit_instruct.")


@pytest.mark.parametrize("config", TRAINER_CONFIGS, ids=lambda p: p.name)
def test_trainer_config_composes_after_a_stage_config(config):
    cfg = print_config(CONFIGS / "sft" / "tiny.yaml", config)
    own = yaml.safe_load(config.read_text())
    assert cfg["trainer"]["devices"] == own["trainer"]["devices"]
    if "model" in own:  # offload configs switch to DeepSpeed's CPU Adam
        assert cfg["model"]["init_args"]["optimizer"]["class_path"] == own["model"]["init_args"]["optimizer"]["class_path"]


def test_optimizer_is_selectable_in_yaml_including_8bit_adamw():
    cfg = print_config(CONFIGS / "sft" / "tiny.yaml")
    assert cfg["model"]["init_args"]["optimizer"]["init_args"]["betas"] == [0.9, 0.95]
    out = io.StringIO()
    args = ["fit", "--config", str(CONFIGS / "sft" / "tiny.yaml"), "--model.optimizer", "bitsandbytes.optim.AdamW8bit",
            "--model.optimizer.lr", "1e-3", "--print_config"]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(args)
    optimizer = yaml.safe_load(out.getvalue())["model"]["init_args"]["optimizer"]
    assert optimizer["class_path"] == "bitsandbytes.optim.AdamW8bit" and optimizer["init_args"]["lr"] == 1e-3
