"""The SFT stage trains, schedules its learning rate, exports, reloads, and resumes."""

import json

import lightning as L
import pytest
import torch
from helpers import CONFIGS, quiet_trainer, run_cli, tiny_overrides
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_instruct import SFTDataModule, SFTModule
from lit_instruct.models.export import read_metadata


class ValLosses(L.Callback):
    def __init__(self):
        self.values = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val/loss"]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    module = SFTModule(
        optimizer=lambda p: torch.optim.AdamW(p, lr=2e-3, betas=(0.9, 0.95)),
        export_dir=str(tmp / "export"),
        num_sample_prompts=2,
        sample_max_new_tokens=4,
    )
    data = SFTDataModule(batch_size=8, max_length=128)
    losses = ValLosses()
    trainer = quiet_trainer(
        max_steps=60,
        val_check_interval=15,
        limit_val_batches=4,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        logger=CSVLogger(tmp),
        callbacks=[losses],
        default_root_dir=tmp,
    )
    trainer.fit(module, data)
    return module, data, losses, tmp, trainer


def test_tiny_sft_lowers_validation_loss(trained):
    _, _, losses, _, _ = trained
    assert len(losses.values) == 4
    assert losses.values == sorted(losses.values, reverse=True), losses.values
    assert losses.values[-1] < losses.values[0] - 0.1, losses.values


def test_learning_rate_decays_to_ten_percent_of_peak(trained):
    module, _, _, _, trainer = trained
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs == pytest.approx([2e-4, 2e-4], rel=1e-3)


def test_export_reloads_with_identical_logits(trained):
    module, data, _, tmp, _ = trained
    export = tmp / "export"
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    batch = data.val_dataloader().__iter__().__next__()
    module.model.eval()
    with torch.no_grad():
        expected = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert tokenizer("Hello world")["input_ids"] == module.tokenizer("Hello world")["input_ids"]
    meta = read_metadata(export)
    assert meta["stage"] == "sft" and meta["metrics"]["throughput/tokens_per_s"] > 0 and meta["metrics"]["memory/peak_gib"] > 0
    assert "val/loss" in meta["metrics"]


def test_sample_generations_are_logged(trained):
    _, _, _, tmp, trainer = trained
    lines = (tmp / "lightning_logs" / "version_0" / "val_samples.jsonl").read_text().splitlines()
    assert len(lines) == 4
    rows = json.loads(lines[-1])["rows"]
    assert len(rows) == 2 and rows[0]["prompt"].endswith("Assistant:")


def test_residual_dropout_is_set_on_the_model():
    module = SFTModule(residual_dropout=0.2)
    assert module.model.config.resid_pdrop == 0.2
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in module.model.modules())


def test_cli_fit_exports_resumes_and_converts(tmp_path):
    """`lit-instruct fit --config configs/sft/tiny.yaml` end to end, then resume from last.ckpt and export it."""
    args = ["fit", "--config", str(CONFIGS / "sft" / "tiny.yaml"), *tiny_overrides(tmp_path)]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    export = tmp_path / "export"
    assert AutoModelForCausalLM.from_pretrained(export) is not None
    assert AutoTokenizer.from_pretrained(export).eos_token == "<|endoftext|>"
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 6

    resumed = run_cli(*args, "--trainer.max_steps", "9", "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 9 and ckpt["lit_instruct"]["stage"] == "sft"

    converted = run_cli("export", str(last), "--out", str(tmp_path / "converted"))
    assert converted.returncode == 0, converted.stderr[-3000:]
    a = AutoModelForCausalLM.from_pretrained(export).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "converted").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_bad_input_stops_before_training(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": 7}\n')
    done = run_cli("fit", "--config", str(CONFIGS / "sft" / "tiny.yaml"), *tiny_overrides(tmp_path), "--data.train_file", str(bad))
    assert done.returncode != 0
    assert f"{bad}:2: field 'response' must be a string, got int" in done.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "export").exists()


def test_sft_model_selection_by_reward_model_score(tmp_path, tokenizer):
    """The callback logs val/reward_model_score at each validation and the export holds the best-scoring weights."""
    from lit_instruct.callbacks import RewardModelSelection
    from lit_instruct.models.export import save_export
    from lit_instruct.models.reward_model import RewardModel

    rm = RewardModel.from_causal_lm("embedded", tokenizer)
    rm.normalization = {"shift": 0.0}
    save_export(rm, tokenizer, tmp_path / "rm", {"stage": "reward", "normalization": rm.normalization})
    select = RewardModelSelection(str(tmp_path / "rm"), num_prompts=4, max_new_tokens=6)
    module = SFTModule(optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3), export_dir=str(tmp_path / "export"), num_sample_prompts=0)
    trainer = quiet_trainer(max_steps=9, val_check_interval=3, limit_val_batches=1, num_sanity_val_steps=0,
                            enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[select])
    trainer.fit(module, SFTDataModule(batch_size=4, max_length=64))
    assert len(select.scores) == 3 and select.best_score == max(select.scores)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").state_dict()
    assert all(torch.equal(exported[k], select.best_state[k]) for k in exported)
