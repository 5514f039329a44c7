"""Pretrain stage: packing, the held-out split, and a CLI run that exports."""

import yaml
from conftest import CONFIGS, run_cli, tiny_overrides

from lit_instruct.data.pretraining import pack_documents, pretrain_split


def test_pretrain_split_is_disjoint_and_deterministic():
    train, heldout = pretrain_split()
    assert heldout and train and not set(train) & set(heldout)
    assert pretrain_split() == (train, heldout)
    assert 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.2


def test_packing_joins_documents_with_eos_into_full_blocks(tokenizer):
    docs = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    blocks = pack_documents(tokenizer, docs, block_size=4)
    stream = []
    for d in docs:
        stream += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert all(len(b["input_ids"]) == 4 and b["labels"] == b["input_ids"] for b in blocks)
    assert [t for b in blocks for t in b["input_ids"]] == stream[: len(blocks) * 4]
    assert len(blocks) == len(stream) // 4


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
