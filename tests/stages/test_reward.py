"""Reward stage: gradients reach the backbone, training, normalisation, export and scoring, the CLI."""

import json

import pytest
import torch
from helpers import CONFIGS, quiet_trainer, run_cli, tiny_overrides, write_jsonl
from lightning.pytorch.loggers import CSVLogger

from lit_instruct import RewardDataModule, RewardModel, RewardModule
from lit_instruct.data.rankings import RankedCollator
from lit_instruct.objectives import ranking_loss


def test_gradients_reach_the_backbone(tokenizer, tmp_path):
    rows = [{"prompt": f"p{i}", "completions": ["yes", "no", "maybe"], "ranking": [0, 2, 1]} for i in range(10)]
    dm = RewardDataModule(train_file=write_jsonl(tmp_path / "r.jsonl", rows), val_fraction=0.3, demonstrations_file=None)
    dm.connect(tokenizer, 64)
    dm.prepare()
    module = RewardModule()
    batch = RankedCollator(tokenizer.pad_token_id)(dm.train_groups[:2])
    loss = ranking_loss(module.rewards(batch), batch["ranks"], batch["mask"])["loss"]
    loss.backward()
    assert module.reward_model.backbone.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    assert module.reward_model.backbone.wte.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reward")
    torch.manual_seed(0)
    module = RewardModule(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.9, 0.95)), export_dir=str(tmp / "export"))
    data = RewardDataModule(batch_size=8, max_length=128, normalization_rows=64)
    trainer = quiet_trainer(max_steps=40, limit_val_batches=4, val_check_interval=40, num_sanity_val_steps=0,
                            enable_checkpointing=False, logger=CSVLogger(tmp), default_root_dir=tmp)
    trainer.fit(module, data)
    return module, data, trainer, tmp


def test_tiny_reward_model_learns_well_above_chance(trained):
    module, data, trainer, _ = trained
    module.reward_model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in list(data.train_dataloader())[:10]:
            out = ranking_loss(module.rewards(batch), batch["ranks"], batch["mask"])
            correct += int((out["pair_margin"] > 0).sum())
            total += out["pair_margin"].numel()
    assert correct / total > 0.6, correct / total
    assert "val/accuracy" in trainer.callback_metrics and "val/accuracy_k9" in trainer.callback_metrics
    assert 0.5 < float(trainer.callback_metrics["val/length_baseline_accuracy"]) < 1.0


def test_export_is_normalised_and_scores_in_batches(trained):
    module, data, _, tmp = trained
    rm = RewardModel.from_pretrained(tmp / "export")
    meta = json.loads((tmp / "export" / "lit_instruct.json").read_text())
    assert meta["normalization"]["rows"] == 64 and meta["stage"] == "reward"
    assert meta["metrics"]["throughput/comparisons_per_s"] > 0
    demos = data.demonstrations()
    scores = rm.score([p for p, _ in demos], [r for _, r in demos], batch_size=7)
    assert abs(float(scores.mean())) < 1e-4  # demonstrations average 0 after normalisation
    assert float(scores.std()) > 0
    module.reward_model.eval()
    assert torch.allclose(module.reward_model.score(["Hi"], ["Hello!"]), rm.score(["Hi"], ["Hello!"]), atol=1e-5)


def test_cli_reward_stage_from_an_sft_export(tiny_exports, tmp_path):
    """The SFT export is the session's (an SFT stage's export like any other; the SFT CLI run is test_sft's)."""
    done = run_cli("fit", "--config", str(CONFIGS / "reward" / "tiny.yaml"), *tiny_overrides(tmp_path / "rm", samples=False),
                   "--model.model_name_or_path", str(tiny_exports / "sft"), "--data.normalization_rows", "16")
    assert done.returncode == 0, done.stderr[-3000:]
    rm = RewardModel.from_pretrained(tmp_path / "rm" / "export")
    assert rm.score(["Say hi"], ["hi"]).shape == (1,)
