"""Ranking data: bad rows named by file and line, ranked and pairwise rows in one grid, the shuffled-pairs ablation,
what training does with comparisons whose completions are cut to fit (``cut_comparisons``) and the counts of them."""

import pytest
from helpers import write_jsonl

from lit_instruct.data.rankings import (
    RankedCollator,
    RewardDataModule,
    apply_cut_policy,
    expand_to_pairs,
)
from lit_instruct.data.records import DataError
from lit_instruct.objectives import better_pairs


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


# ---------------------------------------------------------------- comparisons whose completions are cut to fit
def long(word):
    return word + " and" * 40  # far past the 24-token context below: cut, its EOS lost


CUT_ROWS = [  # completion labels: the first word of each; at 24 tokens the long ones are cut, the rest fit
    {"prompt": "Mixed?", "completions": ["apple", long("banana"), long("cherry"), "date fig grape"], "ranking": [0, 1, 2, 3]},
    {"prompt": "Both long?", "completions": [long("kiwi"), long("lemon")], "ranking": [0, 1]},
    {"prompt": "Tied?", "completions": [long("mango"), long("nectarine"), "olive"], "ranking": [0, 0, 1]},
]
ALL_PAIRS = {("apple", "banana"), ("apple", "cherry"), ("apple", "date"), ("banana", "cherry"), ("banana", "date"),
             ("cherry", "date"), ("kiwi", "lemon"), ("mango", "olive"), ("nectarine", "olive")}
KEPT = {
    "keep": ALL_PAIRS,
    "drop": {("apple", "date")},  # neither side cut
    "drop_both": ALL_PAIRS - {("banana", "cherry"), ("kiwi", "lemon")},  # not both sides cut
}
DROPPED_PROMPTS = {"keep": 0, "drop": 2, "drop_both": 1}


def cut_dm(tokenizer, tmp_path, **kwargs):
    path = write_jsonl(tmp_path / "cut.jsonl", CUT_ROWS)
    dm = RewardDataModule(train_file=path, val_file=path, demonstrations_file=None, **kwargs)
    dm.connect(tokenizer, 24)
    dm.prepare()
    return dm


def label(tokenizer, ids):
    text = tokenizer.decode(ids)
    return next(word for word in ("apple", "banana", "cherry", "date", "kiwi", "lemon", "mango", "nectarine", "olive") if word in text)


def trained_pairs(tokenizer, dm):
    """(better, worse) labels of every comparison a training batch compares (better_pairs and the batch's pair_mask)."""
    batch = RankedCollator(tokenizer.pad_token_id)(dm.train_examples())
    rows = {(int(g), int(s)): ids for g, s, ids in zip(batch["group"], batch["slot"], batch["input_ids"])}
    pairs = (better_pairs(batch["ranks"], batch["mask"]) & batch["pair_mask"]).nonzero().tolist()
    assert int(batch["comparisons"]) == len(pairs)
    return [(label(tokenizer, rows[b, i]), label(tokenizer, rows[b, j])) for b, i, j in pairs]


@pytest.mark.parametrize("pair_mode", ["grouped", "shuffled_pairs"])
@pytest.mark.parametrize("policy", ["keep", "drop", "drop_both"])
def test_cut_comparisons_policy_trains_on_exactly_the_comparisons_it_keeps(tokenizer, tmp_path, policy, pair_mode):
    dm = cut_dm(tokenizer, tmp_path, cut_comparisons=policy, pair_mode=pair_mode)
    pairs = trained_pairs(tokenizer, dm)
    assert sorted(pairs) == sorted(KEPT[policy])  # each once: grouped and shuffled pairs agree
    assert len(dm.train_groups) == 3 - DROPPED_PROMPTS[policy]
    if pair_mode == "grouped":  # a completion in no kept comparison is not sent through the model
        assert sum(len(g["input_ids"]) for g in dm.train_groups) == len({c for pair in KEPT[policy] for c in pair})
    val = RankedCollator(tokenizer.pad_token_id)(dm.val_groups)  # validation keeps every comparison
    assert int(val["comparisons"]) == len(ALL_PAIRS) and bool(val["pair_mask"].all())
    assert val["cut"].sum() == 6 and val["cut"][0].tolist() == [False, True, True, False]


@pytest.mark.parametrize("policy", ["keep", "drop", "drop_both"])
def test_cut_comparisons_are_counted_per_split_and_logged_as_data_metrics(tokenizer, tmp_path, policy):
    dm = cut_dm(tokenizer, tmp_path, cut_comparisons=policy)
    expected = {"prompts": 3, "completions": 9, "completions_cut": 6, "comparisons": 9, "comparisons_cut_one": 6, "comparisons_cut_both": 2}
    metrics = dm.metrics()
    for split in ("train", "val"):
        assert {k: metrics[f"data/{split}_{k}"] for k in expected} == expected
    assert metrics["data/train_comparisons_dropped"] == len(ALL_PAIRS) - len(KEPT[policy])
    assert metrics["data/train_prompts_dropped"] == DROPPED_PROMPTS[policy]


def test_cut_comparisons_counts_reach_the_log_line(tokenizer, tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(RewardDataModule, "log", lambda self, message: lines.append(message))
    cut_dm(tokenizer, tmp_path, cut_comparisons="drop_both")
    assert "comparisons with one side / both sides cut: 6 / 2 train, 6 / 2 val" in lines[0]
    assert "cut_comparisons=drop_both dropped 2 of 9 training comparisons (1 prompts left with none)" in lines[0]


def test_a_policy_that_drops_every_training_comparison_is_an_error_naming_the_file(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [CUT_ROWS[1]])
    dm = RewardDataModule(train_file=path, val_file=write_jsonl(tmp_path / "val.jsonl", CUT_ROWS), demonstrations_file=None, cut_comparisons="drop")
    dm.connect(tokenizer, 24)
    with pytest.raises(DataError, match=r"long.jsonl: cut_comparisons=drop dropped all 1 training comparisons .* raise max_length"):
        dm.prepare()


def test_apply_cut_policy_masks_only_the_dropped_pairs_of_a_group():
    group = {"input_ids": [[1], [2], [3]], "ranks": [0, 1, 2], "cut": [False, True, True], "prompt": "p"}
    kept, dropped = apply_cut_policy(group, "drop_both")
    assert dropped == 1 and kept["input_ids"] == [[1], [2], [3]]
    assert kept["pair_mask"] == [[True, True, True], [True, False, False], [True, False, False]]
    kept, dropped = apply_cut_policy(group, "drop")
    assert dropped == 3 and kept is None
    assert apply_cut_policy(group, "keep") == (group, 0)
