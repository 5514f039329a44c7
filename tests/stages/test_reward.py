"""Reward stage: gradients reach the backbone, training, normalisation, export and scoring, the CLI."""

import csv
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
                   "--model.model_name_or_path", str(tiny_exports / "sft"), "--data.normalization_rows", "16",
                   "--model.gain.policy", str(tiny_exports / "sft"), "--model.gain.max_new_tokens", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    rm = RewardModel.from_pretrained(tmp_path / "rm" / "export")
    assert rm.score(["Say hi"], ["hi"]).shape == (1,)
    assert rm.normalization["gain"] > 0 and rm.normalization["policy_samples"] == 16
    assert rm.normalization["policy_prompts_file"] == "bundled:prompts.jsonl"


# ---------------------------------------------------------------------------------------------- the normalisation's gain
@pytest.fixture(scope="module")
def gained(tiny_exports, tmp_path_factory):
    """The tiny reward model (from the tiny SFT export, untrained: the gain does not care) normalised with a gain
    from the SFT policy's samples, and exported."""
    from lit_instruct.stages.reward import RewardGain

    tmp = tmp_path_factory.mktemp("gained")
    sft = str(tiny_exports / "sft")
    module = RewardModule(sft, gain=RewardGain(policy=sft, max_new_tokens=8, batch_size=8, seed=3), export_dir=str(tmp / "export"))
    data = RewardDataModule(max_length=128, normalization_rows=24)
    data.connect(module.tokenizer, 128)
    prompts, demos = data.policy_prompts(), data.demonstrations()
    raw = module.policy_sample_scores(prompts)
    module.normalize(demos, prompts)
    module.export(tmp / "export")
    return module, prompts, demos, raw, tmp / "export"


def test_gain_gives_the_starting_policys_samples_unit_std(gained):
    module, prompts, demos, raw, export = gained
    assert float(raw.std()) != pytest.approx(1.0, abs=0.05)  # not unit-variance before: the test can tell
    norm = module.reward_model.normalization
    assert norm["gain"] == pytest.approx(1.0 / float(raw.double().std()), rel=1e-6)
    assert float(module.policy_sample_scores(prompts).double().std()) == pytest.approx(1.0, rel=1e-4)  # same seed, same samples
    scores = module.reward_model.score([p for p, _ in demos], [r for _, r in demos])
    assert abs(float(scores.double().mean())) < 1e-4  # and the demonstrations still average 0

    # The export keeps both: the gain is folded into the head's weight, and a reloaded model has gain 1.
    loaded = RewardModel.from_pretrained(export)
    assert loaded.reward_gain == 1.0 and loaded.normalization["gain"] == pytest.approx(norm["gain"])
    module.reward_model, own = loaded, module.reward_model
    try:
        assert float(module.policy_sample_scores(prompts).double().std()) == pytest.approx(1.0, rel=1e-4)
    finally:
        module.reward_model = own


def test_gain_scales_to_the_target_std(tiny_exports):
    from lit_instruct.stages.reward import RewardGain

    sft = str(tiny_exports / "sft")
    data = RewardDataModule(max_length=128, normalization_rows=16)
    stds = []
    for target in (1.0, 2.5):
        module = RewardModule(sft, gain=RewardGain(policy=sft, max_new_tokens=8, batch_size=8, target_std=target))
        data.connect(module.tokenizer, 128)
        module.normalize(data.demonstrations(), data.policy_prompts())
        stds.append(float(module.policy_sample_scores(data.policy_prompts()).double().std()))
    assert stds == pytest.approx([1.0, 2.5], rel=1e-4)


def test_hugging_face_loads_the_gained_export_as_reward_minus_shift(gained):
    from transformers import AutoModelForSequenceClassification

    module, _, _, _, export = gained
    hf = AutoModelForSequenceClassification.from_pretrained(export).eval()
    ids = module.tokenizer("Hello there", return_tensors="pt")["input_ids"]
    module.reward_model.eval()
    with torch.no_grad():
        ours = module.reward_model(ids, torch.ones_like(ids))
        theirs = hf(input_ids=ids).logits[:, 0]
    assert torch.allclose(ours - module.reward_model.reward_shift, theirs, atol=1e-5)


def test_gain_needs_prompts_and_a_policy_with_the_same_tokenizer(tiny_exports, tmp_path):
    from transformers import AutoTokenizer

    from lit_instruct.stages.reward import RewardGain

    sft = str(tiny_exports / "sft")
    module = RewardModule(sft, gain=RewardGain(policy=sft, max_new_tokens=4))
    with pytest.raises(ValueError, match="policy_prompts_file"):
        module.normalize([("Hi", "Hello")], [])
    other = AutoTokenizer.from_pretrained(sft)
    other.add_tokens(["<extra_token>"])
    other.save_pretrained(tmp_path / "policy")
    module.gain.policy = str(tmp_path / "policy")
    with pytest.raises(ValueError, match="tokenizer differs"):
        module.policy_sample_scores(["Hi"])


# ---------------------------------------------------------------- comparisons whose completions are cut to fit
CUT_ROWS = [  # at 24 tokens the two long completions are cut (their EOS lost); the others fit
    {"prompt": "Mixed?", "completions": ["apple", "banana" + " and" * 40, "cherry" + " and" * 40, "date fig grape"], "ranking": [0, 1, 2, 3]},
    {"prompt": "Short?", "completions": ["no", "a longer answer here"], "ranking": [0, 1]},
]


def cut_data(tokenizer, tmp_path, **kwargs):
    path = write_jsonl(tmp_path / "cut.jsonl", CUT_ROWS)
    data = RewardDataModule(train_file=path, val_file=path, demonstrations_file=None, **kwargs)
    data.connect(tokenizer, 24)
    return data


def shorter_wins(batch):
    """A stand-in reward model: minus the length, so that the shorter completion wins (ties where both are cut)."""
    lengths = batch["attention_mask"].sum(-1).float()
    return -lengths.new_zeros(batch["mask"].shape).index_put((batch["group"], batch["slot"]), lengths)


def test_validation_reports_accuracy_and_the_length_baseline_on_the_uncut_comparisons(tokenizer, tmp_path, monkeypatch):
    data = cut_data(tokenizer, tmp_path, cut_comparisons="drop")
    module = RewardModule()
    monkeypatch.setattr(module, "rewards", shorter_wins)
    metrics = quiet_trainer(logger=CSVLogger(tmp_path)).validate(module, datamodule=data)[0]
    # All 7 comparisons count, whatever the policy; on the two uncut ones (apple > date, no > a longer answer) the
    # shorter completion wins: the stand-in is always right there, and "the longer wins" always wrong.
    assert metrics["val/length_baseline_accuracy"] == pytest.approx(2.5 / 7)  # banana = cherry: a tie, half a point
    assert metrics["val/length_baseline_accuracy_uncut"] == 0.0
    assert metrics["val/accuracy_uncut"] == 1.0
    assert metrics["val/accuracy"] < 1.0
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = next(r for r in rows if r.get("data/val_comparisons_cut_both"))
    assert float(logged["data/val_comparisons_cut_both"]) == 1 and float(logged["data/train_comparisons_dropped"]) == 5


def test_training_leaves_out_the_comparisons_the_policy_drops(tokenizer, tmp_path, monkeypatch):
    data = cut_data(tokenizer, tmp_path, cut_comparisons="drop_both")
    data.prepare()
    module = RewardModule()
    monkeypatch.setattr(module, "rewards", shorter_wins)
    batch = RankedCollator(tokenizer.pad_token_id)(data.train_examples())
    assert not bool(batch["pair_mask"].all())  # banana vs cherry, both cut, is left out
    loss = module.training_step(batch, 0)
    expected = ranking_loss(shorter_wins(batch), batch["ranks"], batch["mask"], batch["pair_mask"])["loss"]
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, ranking_loss(shorter_wins(batch), batch["ranks"], batch["mask"])["loss"])
