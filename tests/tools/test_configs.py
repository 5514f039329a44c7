"""Every YAML under configs/ parses with --print_config, alone (stage configs) or composed (trainer configs); the
fragments stage configs compose (configs/shared/) read the same way in the CLI and in the tools."""

import contextlib
import io

import pytest
import yaml
from helpers import CONFIGS

from lit_instruct.tools.cli import main, wandb_name_and_tags
from lit_instruct.tools.configs import load_config

STAGE_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("trainer", "pipeline", "shared"))
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


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_tools_loader_reads_a_stage_config_as_the_cli_does(config):
    """load_config (the pipeline's and the study's reader) gives the settings --print_config shows."""
    loaded, printed = load_config(config), print_config(config)
    assert "compose" not in loaded and "compose" not in printed
    for group in ("model", "data"):
        assert loaded[group]["class_path"] == printed[group]["class_path"]
        for key, value in loaded[group]["init_args"].items():
            if not isinstance(value, dict):
                assert printed[group]["init_args"][key] == value, (group, key)
    for key, value in loaded["trainer"].items():
        if key not in ("logger", "callbacks"):
            assert printed["trainer"][key] == value, key
    assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == [c["class_path"] for c in loaded["trainer"]["callbacks"]]


def test_stage_configs_name_their_run_folder_once():
    """The W&B run's name and tags come from trainer.default_root_dir; no stage config restates them."""
    for config in STAGE_CONFIGS:
        trainer = load_config(config)["trainer"]
        assert trainer["default_root_dir"].startswith(f"runs/{config.parent.name}-"), config
        assert not {"name", "tags"} & set(trainer["logger"]["init_args"]), config
    assert wandb_name_and_tags("runs/sft-tiny", "sft") == ("sft-tiny", ["sft", "tiny"])
    assert wandb_name_and_tags("/tmp/out/sft", "sft") == ("sft", ["sft"])
    assert wandb_name_and_tags("runs/other", None) == ("other", ["other"])


def test_compose_merges_fragments_under_the_file_and_names_bad_files(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(
        "trainer:\n  max_epochs: 3\n  logger:\n    class_path: a.Logger\n    init_args: {project: p, name: x}\n"
        "  callbacks: [{class_path: a.One}, {class_path: a.Two}]\n")
    (tmp_path / "stage.yaml").write_text(
        "compose: [shared/base.yaml]\ntrainer:\n  val_check_interval: 2\n  logger:\n    class_path: a.Logger\n"
        "    init_args: {name: y}\n  callbacks: [{class_path: a.Three}]\nmodel: {init_args: {lr: 1e-3}}\n")
    trainer = load_config(tmp_path / "stage.yaml")["trainer"]
    assert trainer["max_epochs"] == 3 and trainer["val_check_interval"] == 2  # mappings merge
    assert trainer["logger"]["init_args"] == {"project": "p", "name": "y"}  # the same class_path: init_args merge
    assert trainer["callbacks"] == [{"class_path": "a.Three"}]  # a list replaces
    assert load_config(tmp_path / "stage.yaml")["model"]["init_args"]["lr"] == 1e-3  # read as jsonargparse reads it
    (tmp_path / "loop.yaml").write_text("compose: loop.yaml\n")
    with pytest.raises(ValueError, match="loop.yaml: composes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("compose: [nope.yaml]\n")
    with pytest.raises(ValueError, match=r"missing.yaml: compose: nope.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")
