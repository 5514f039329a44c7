"""Reward stage: data checks, the collated grid, training, normalisation, export and scoring."""

import json

import lightning as L
import pytest
import torch
from conftest import CONFIGS, run_cli, tiny_overrides
from lightning.pytorch.loggers import CSVLogger

from lit_instruct import RewardDataModule, RewardModel, RewardModule
from lit_instruct.data.rankings import RankedCollator, expand_to_pairs
from lit_instruct.data.records import DataError
from lit_instruct.objectives import last_index, ranking_loss


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def make_dm(tokenizer, path, **kwargs):
    dm = RewardDataModule(train_file=path, val_fraction=0.3, demonstrations_file=None, **kwargs)
    dm.connect(tokenizer, 64)
    dm.prepare()
    return dm


GOOD = {"prompt": "Which is better?", "completions": ["yes", "no", "maybe"], "ranking": [0, 2, 1]}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "completions": ["a"], "ranking": [0]}, "K < 2: a ranking needs at least 2 completions, got 1"),
        ({"prompt": "p", "completions": ["a", "b"], "ranking": [0]}, "'ranking' has 1 entries for 2 completions"),
        ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 1.5]}, r"ranking\[1\] must be an integer, got 1.5"),
        ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, True]}, r"ranking\[1\] must be an integer, got True"),
        ({"prompt": "p", "completions": ["a", " "], "ranking": [0, 1]}, r"completions\[1\] is empty"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "'chosen' equals 'rejected'"),
        ({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [1, 1, 1]}, "all 3 completions are tied"),
        ({"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "p"}, "missing field 'completions'"),
    ],
    ids=["k<2", "ranking-length", "non-integer", "bool-rank", "empty-completion", "chosen=rejected", "all-tied", "no-rejected", "no-completions"],
)
def test_bad_rows_name_file_line_and_problem(tokenizer, tmp_path, row, message):
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD] * 3 + [row])
    with pytest.raises(DataError, match=rf"r.jsonl:4: {message}"):
        make_dm(tokenizer, path)


def test_ranked_and_pairwise_rows_collate_into_one_grid(tokenizer, tmp_path):
    rows = [r for i in range(10) for r in ({**GOOD, "prompt": f"p{i}"}, {"prompt": f"q{i}", "chosen": "good answer", "rejected": "bad"})]
    dm = make_dm(tokenizer, write_jsonl(tmp_path / "r.jsonl", rows))
    groups = [dm.train_groups[0], next(g for g in dm.train_groups if len(g["ranks"]) == 2)]
    batch = RankedCollator(tokenizer.pad_token_id)(groups)
    assert batch["input_ids"].shape[0] == 5  # 3 + 2 completions, each once
    assert batch["mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["ranks"][1, :2].tolist() == [0, 1] and int(batch["comparisons"]) == 3 + 1
    assert batch["group"].tolist() == [0, 0, 0, 1, 1] and batch["slot"].tolist() == [0, 1, 2, 0, 1]
    for row, ids in zip(batch["input_ids"], [i for g in groups for i in g["input_ids"]]):
        assert row[len(ids) - 1] == tokenizer.eos_token_id  # the reward is read at the EOS


def test_shuffled_pairs_ablation_expands_every_non_tied_pair():
    pairs = expand_to_pairs([{"input_ids": [[1], [2], [3]], "ranks": [0, 1, 1], "prompt": "p"}])
    assert [p["input_ids"] for p in pairs] == [[[1], [2]], [[1], [3]]]


def test_shuffled_pairs_mode_trains_on_every_comparison_as_its_own_example(tokenizer, tmp_path):
    rows = [{**GOOD, "prompt": f"p{i}"} for i in range(20)]
    dm = make_dm(tokenizer, write_jsonl(tmp_path / "r.jsonl", rows), pair_mode="shuffled_pairs")
    examples = dm.train_examples()
    assert len(examples) == 3 * len(dm.train_groups) and all(len(e["input_ids"]) == 2 for e in examples)
    assert len(dm.val_groups[0]["input_ids"]) == 3  # validation stays grouped


def test_last_index_handles_either_padding_side():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert last_index(right).tolist() == [2, 3]
    assert last_index(left).tolist() == [3, 3]


def test_reward_is_the_same_with_left_or_right_padding(tokenizer):
    rm = RewardModel.from_causal_lm("embedded", tokenizer).eval()
    ids = tokenizer("Human: hi\n\nAssistant: hello")["input_ids"]
    short = ids[:4]
    right = torch.tensor([ids, short + [0] * (len(ids) - 4)])
    right_mask = torch.tensor([[1] * len(ids), [1] * 4 + [0] * (len(ids) - 4)])
    left = torch.tensor([ids, [0] * (len(ids) - 4) + short])
    left_mask = right_mask.flip(-1)
    with torch.no_grad():
        a, b = rm(right, right_mask), rm(left, left_mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_gradients_reach_the_backbone(tokenizer, tmp_path):
    dm = make_dm(tokenizer, write_jsonl(tmp_path / "r.jsonl", [{**GOOD, "prompt": f"p{i}"} for i in range(10)]))
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
    trainer = L.Trainer(accelerator="cpu", max_steps=40, limit_val_batches=4, val_check_interval=40, num_sanity_val_steps=0,
                        enable_checkpointing=False, enable_progress_bar=False, logger=CSVLogger(tmp), default_root_dir=tmp)
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


def test_unnormalised_export_is_refused(tmp_path, tokenizer):
    rm = RewardModel.from_causal_lm("embedded", tokenizer)
    from lit_instruct.models.export import save_export

    save_export(rm, tokenizer, tmp_path / "rm", {"stage": "reward", "normalization": None})
    with pytest.raises(ValueError, match="has no normalisation"):
        RewardModel.from_pretrained(tmp_path / "rm")
    assert RewardModel.from_pretrained(tmp_path / "rm", require_normalization=False) is not None


def test_cli_reward_stage_from_an_sft_export(tmp_path):
    sft = run_cli("fit", "--config", str(CONFIGS / "sft" / "tiny.yaml"), *tiny_overrides(tmp_path / "sft"))
    assert sft.returncode == 0, sft.stderr[-3000:]
    done = run_cli("fit", "--config", str(CONFIGS / "reward" / "tiny.yaml"), *tiny_overrides(tmp_path / "rm", samples=False),
                   "--model.model_name_or_path", str(tmp_path / "sft" / "export"), "--data.normalization_rows", "16")
    assert done.returncode == 0, done.stderr[-3000:]
    rm = RewardModel.from_pretrained(tmp_path / "rm" / "export")
    assert rm.score(["Say hi"], ["hi"]).shape == (1,)
