"""``lit-instruct label``: rankings by a judge's scores with chained ties, label noise at its stated rate, dropped rows
counted, settings recorded, bad input refused before the judge loads; and sample -> label -> the reward stage."""

import itertools
import json
import math
import random

import pytest
from helpers import CONFIGS, quiet_trainer, run_cli, tiny_overrides, write_jsonl

import lit_instruct.tools.label as label_tool
from lit_instruct import PPODataModule, PPOModule, RewardModel
from lit_instruct.data.problems import DataError
from lit_instruct.data.rankings import check_ranked_row
from lit_instruct.tools.cli import main as cli_main
from lit_instruct.tools.label import (
    add_label_noise,
    label_file,
    rank_scores,
    reverse_ranking,
)
from lit_instruct.tools.sample import sample_export

ROWS = [
    {"prompt": "Say hello.", "completions": ["Hello!", "Goodbye, and never come back.", "hi there friend"]},
    {"prompt": "Name a colour.", "completions": ["Blue.", "The colour of the sky at noon is blue.", "7", "Green"]},
    {"prompt": [{"role": "user", "content": "Count to three."}], "completions": ["1 2 3", "one, two, three"], "k": 2},
    {"prompt": "Same twice.", "completions": ["echo", "echo"]},  # identical: they tie, the row is dropped
    {"prompt": "One left.", "completions": ["only this", "  "]},  # one blank: too few left, dropped
]


def by_gaps(scores, margin):
    """Reference: i and j tie exactly when no gap of more than ``margin`` lies between them in the sorted scores;
    a completion's rank is the number of such gaps above it."""
    ordered = sorted(scores, reverse=True)
    gaps = [hi for hi, lo in zip(ordered, ordered[1:]) if hi - lo > margin]  # each gap named by the score above it
    return [sum(hi > s for hi in gaps) for s in scores]


def test_rank_scores_chains_ties_at_the_margin():
    assert rank_scores([3.0, 1.0, 2.0]) == [0, 2, 1]
    assert rank_scores([1.0, 1.0, 0.5]) == [0, 0, 1]  # margin 0: equal scores tie
    assert rank_scores([0.0, 0.4, 0.8], 0.5) == [0, 0, 0]  # chained: 0.8 and 0.0 tie through 0.4
    assert rank_scores([0.0, 0.4, 1.0], 0.5) == [1, 1, 0]
    assert rank_scores([2.0, 1.0], 1.0) == [0, 0]  # a gap of exactly the margin ties
    rng = random.Random(0)
    for _ in range(300):
        scores = [round(rng.uniform(-2, 2), 1) for _ in range(rng.randint(2, 8))]
        margin = rng.choice([0.0, 0.1, 0.25, 0.5, 1.0])
        ranks = rank_scores(scores, margin)
        assert ranks == by_gaps(scores, margin), (scores, margin)
        assert sorted(set(ranks)) == list(range(max(ranks) + 1))  # dense
        assert all(ranks[i] < ranks[j] for i, j in itertools.permutations(range(len(scores)), 2)
                   if scores[i] - scores[j] > margin * (len(scores) - 1))  # further apart than a chain reaches


def test_label_noise_flips_the_stated_share_of_comparisons():
    assert reverse_ranking([0, 2, 1, 1]) == [2, 0, 1, 1]
    n, rate = 4000, 0.25
    pairs = [[0, 1]] * n
    noisy, flipped = add_label_noise(pairs, rate, random.Random(7))
    flips = sum(r == [1, 0] for r in noisy)
    assert flips == sum(flipped)
    assert abs(flips - n * rate) < 4.5 * math.sqrt(n * rate * (1 - rate)), flips  # binomial, 4.5 sigma
    # K > 2 with ties: every comparison a ranking implies flips with the same probability; ties stay ties
    rankings = [[0, 1, 1, 2]] * n
    noisy, _ = add_label_noise(rankings, rate, random.Random(8))
    compared = [(i, j) for i, j in itertools.combinations(range(4), 2) if rankings[0][i] != rankings[0][j]]
    for i, j in compared:
        pair_flips = sum(r[i] > r[j] for r in noisy)
        assert abs(pair_flips - n * rate) < 4.5 * math.sqrt(n * rate * (1 - rate)), (i, j, pair_flips)
    assert all(r[1] == r[2] for r in noisy)
    assert add_label_noise(rankings, 0.0, random.Random(0))[0] == rankings
    assert add_label_noise(rankings, 1.0, random.Random(0))[0] == [[2, 1, 1, 0]] * n
    assert add_label_noise(pairs, 0.5, random.Random(3)) == add_label_noise(pairs, 0.5, random.Random(3))


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_are_ranked_by_the_judges_scores_and_dropped_rows_counted(tiny_exports, tmp_path, capsys):
    source = write_jsonl(tmp_path / "s.jsonl", ROWS)
    (tmp_path / "s.meta.json").write_text(json.dumps({"tool": "lit-instruct sample", "seed": 3}))
    meta = label_file(source, str(tiny_exports / "rm"), tmp_path / "l.jsonl", progress=False)
    rows = read(tmp_path / "l.jsonl")
    judge = RewardModel.from_pretrained(tiny_exports / "rm")
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ROWS[:3]]
    for row, given in zip(rows, ROWS):
        assert set(row) == {"prompt", "completions", "ranking", "scores"} and row["completions"] == given["completions"]
        expected = judge.score([row["prompt"]] * len(row["completions"]), row["completions"]).tolist()
        assert row["scores"] == pytest.approx(expected, abs=1e-5)
        assert row["ranking"] == rank_scores(row["scores"]) and len(set(row["ranking"])) == len(row["ranking"])
        assert check_ranked_row(row) is None  # what the reward stage accepts
    assert {k: meta[k] for k in ("rows_in", "rows_written", "rows_all_tied", "rows_too_few_completions", "completions_blank")} == \
        {"rows_in": 5, "rows_written": 3, "rows_all_tied": 1, "rows_too_few_completions": 1, "completions_blank": 1}
    assert meta["judge"] == str(tiny_exports / "rm") and meta["tie_margin"] == 0.0 and meta["noise"] == 0.0
    assert meta["sampled"] == {"tool": "lit-instruct sample", "seed": 3}
    assert json.loads((tmp_path / "l.meta.json").read_text()) == meta
    printed = capsys.readouterr().out
    assert "dropped 1 row(s) whose completions all tie" in printed and "judge " + str(tiny_exports / "rm") in printed


def test_a_margin_wider_than_every_gap_ties_every_row(tiny_exports, tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", ROWS[:3])
    label_file(source, str(tiny_exports / "rm"), tmp_path / "strict.jsonl", progress=False)
    scores = [s for r in read(tmp_path / "strict.jsonl") for s in r["scores"]]
    widest = max(scores) - min(scores)
    with pytest.raises(DataError, match=r"no row left to write .*'rows_all_tied': 3"):
        label_file(source, str(tiny_exports / "rm"), tmp_path / "tied.jsonl", tie_margin=widest + 0.01, progress=False)
    assert not (tmp_path / "tied.jsonl").exists()
    # a margin between the gaps of a row ties some of its completions and keeps the row
    row = read(tmp_path / "strict.jsonl")[1]
    ordered = sorted(row["scores"], reverse=True)
    gaps = sorted(hi - lo for hi, lo in zip(ordered, ordered[1:]))
    label_file(source, str(tiny_exports / "rm"), tmp_path / "some.jsonl", tie_margin=(gaps[0] + gaps[1]) / 2, progress=False)
    assert read(tmp_path / "some.jsonl")[1]["ranking"] == rank_scores(row["scores"], (gaps[0] + gaps[1]) / 2)
    assert len(set(read(tmp_path / "some.jsonl")[1]["ranking"])) == 3


def test_noise_reverses_rankings_at_its_rate_and_is_seeded(tiny_exports, tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", ROWS[:3] * 10)
    judge = str(tiny_exports / "rm")
    label_file(source, judge, tmp_path / "c.jsonl", progress=False)
    clean = read(tmp_path / "c.jsonl")
    flipped_all = label_file(source, judge, tmp_path / "all.jsonl", noise=1.0, progress=False)
    assert flipped_all["rows_flipped"] == 30
    assert [r["ranking"] for r in read(tmp_path / "all.jsonl")] == [reverse_ranking(r["ranking"]) for r in clean]
    assert all(r["flipped"] and r["scores"] == c["scores"] for r, c in zip(read(tmp_path / "all.jsonl"), clean))
    half = label_file(source, judge, tmp_path / "h1.jsonl", noise=0.5, seed=4, progress=False)
    label_file(source, judge, tmp_path / "h2.jsonl", noise=0.5, seed=4, progress=False)
    assert (tmp_path / "h1.jsonl").read_bytes() == (tmp_path / "h2.jsonl").read_bytes()
    noisy = read(tmp_path / "h1.jsonl")
    assert half["rows_flipped"] == sum(r["flipped"] for r in noisy) and 0 < half["rows_flipped"] < 30
    assert all(r["ranking"] == (reverse_ranking(c["ranking"]) if r["flipped"] else c["ranking"]) for r, c in zip(noisy, clean))


def test_bad_input_stops_before_the_judge_loads(tiny_exports, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(label_tool.RewardModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("the judge loaded before the input was checked")))
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], "{not json", {"prompt": "p", "completions": "one string"},
                                               {"prompt": "p", "completions": ["only one"]}, {"completions": ["a", "b"]}])
    rm, sft = str(tiny_exports / "rm"), str(tiny_exports / "sft")
    cases = [
        (bad, rm, [f"{bad}:2:", f"{bad}:3: missing field 'completions'", f"{bad}:4: a ranking needs at least 2",
                   f"{bad}:5: missing field 'prompt'"]),
        (str(tmp_path / "missing.jsonl"), rm, [str(tmp_path / "missing.jsonl")]),
        (bad, sft, [f"--judge {sft}: not a reward model"]),
        (bad, str(tmp_path / "no-judge"), [f"{tmp_path / 'no-judge'}: model directory not found"]),
    ]
    for file, judge, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            cli_main(["label", file, "--judge", judge, "--out", str(tmp_path / "o.jsonl")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and all(text in err for text in expected), err
    for flags, expected in ((["--noise", "1.5"], "--noise must be a probability"), (["--tie-margin", "-1"], "--tie-margin must be >= 0")):
        with pytest.raises(SystemExit):
            cli_main(["label", bad, "--judge", rm, "--out", str(tmp_path / "o.jsonl"), *flags])
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_the_iterated_loop_sample_label_reward_model_ppo(tiny_exports, tmp_path):
    """The paper's loop (section 3.1, "steps 2 and 3 can be iterated"), as docs/overoptimization/README.md runs it:
    the policy's samples, ranked by a judge, train a reward model through the reward stage's CLI, and PPO optimises
    the policy against that new reward model, with the judge scoring its validation as the gold model."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me one fact about the number {i}."} for i in range(6)])
    sample_export(str(tiny_exports / "sft"), prompts, tmp_path / "samples.jsonl", k=3, max_new_tokens=8, seed=0, progress=False)
    meta = label_file(str(tmp_path / "samples.jsonl"), str(tiny_exports / "rm"), tmp_path / "labels.jsonl", progress=False)
    assert meta["rows_written"] >= 4 and meta["sampled"]["k"] == 3
    labels = str(tmp_path / "labels.jsonl")
    done = run_cli("fit", "--config", str(CONFIGS / "reward" / "tiny.yaml"), *tiny_overrides(tmp_path / "rm", samples=False),
                   "--model.model_name_or_path", str(tiny_exports / "sft"), "--model.gain", "{\"policy\": null}",
                   "--data.train_file", labels, "--data.val_file", labels, "--data.batch_size", "2",
                   "--data.normalization_rows", "8", "--trainer.val_check_interval", "1.0")
    assert done.returncode == 0, done.stderr[-3000:]
    rm = RewardModel.from_pretrained(tmp_path / "rm" / "export")
    assert rm.normalization["rows"] == 8 and rm.score(["Say hi"], ["hi"]).shape == (1,)
    ppo = PPOModule(str(tiny_exports / "sft"), str(tmp_path / "rm" / "export"), gold_path=str(tiny_exports / "rm"),
                    sampling={"max_new_tokens": 6}, ppo={"minibatch_size": 4}, ptx={"ptx_coef": 0.0}, missing_eos_penalty=None,
                    warmup_steps=0, num_sample_prompts=0)
    data = PPODataModule(rollout_batch_size=4, max_prompt_tokens=48, max_val_prompts=4, val_batch_size=4,
                         max_val_pretrain_blocks=2)
    quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, val_check_interval=1, num_sanity_val_steps=0,
                  default_root_dir=tmp_path / "ppo", enable_checkpointing=False).fit(ppo, data)
    assert ppo.episodes == 4
    assert {"val/gold_score", "val/sqrt_kl"} <= set(ppo.trainer.callback_metrics)
