"""Ranking data: bad rows named by file and line, ranked and pairwise rows in one grid, the shuffled-pairs ablation."""

import pytest
from helpers import write_jsonl

from lit_instruct.data.rankings import RankedCollator, RewardDataModule, expand_to_pairs
from lit_instruct.data.records import DataError


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
