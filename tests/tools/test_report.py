"""The pipeline report's judgements: which policies are length-limited, and the paper's directions as measured."""

import json

from lit_instruct.tools.report import directions, length_limited, pipeline_report


def policy(judge, rm, pretrain_loss, eos, score=None):
    return {"judge_score": judge, "reward_model_score": rm, "score": rm if score is None else score, "kl": 1.0,
            "pretrain_loss": pretrain_loss, "response_length": 20.0, "eos_fraction": eos, "samples": []}


def test_length_limited_means_most_responses_did_not_end():
    assert length_limited({"eos_fraction": 0.49}) and not length_limited({"eos_fraction": 0.5})
    assert not length_limited({})  # not measured: not flagged


def test_directions_are_measured_with_the_judge_and_the_eos_fraction():
    sft, ppo = policy(0.0, 0.0, 6.5, 0.6), policy(0.5, 2.0, 6.9, 0.1)
    good = dict(directions({"sft": sft, "ppo": ppo, "ppo_ptx": policy(0.2, 1.0, 6.4, 0.4)}))
    assert all(good.values()) and len(good) == 5
    # the optimised RM rises but the judge does not, and the responses stopped ending: two directions fail
    hacked = dict(directions({"sft": sft, "ppo": ppo, "ppo_ptx": policy(-0.1, 3.0, 6.4, 0.2)}))
    failed = [claim for claim, holds in hacked.items() if not holds]
    assert len(failed) == 2 and any("judge" in c for c in failed) and any("EOS" in c for c in failed)
    # without a judge the judge's direction is not measured, rather than passing
    no_judge = {k: {m: v for m, v in r.items() if m != "judge_score"} for k, r in
                {"sft": sft, "ppo": ppo, "ppo_ptx": policy(0.2, 1.0, 6.4, 0.4)}.items()}
    assert dict(directions(no_judge))["PPO-ptx scores above SFT by the held-apart judge"] is None


def test_the_report_flags_length_limited_policies(tmp_path):
    results = {"sft": policy(0.0, 0.0, 6.5, 0.6), "ppo": policy(0.5, 2.0, 6.9, 0.1), "ppo_ptx": policy(0.2, 1.0, 6.4, 0.7),
               "reward": {"accuracy": 0.8, "length_baseline_accuracy": 0.7}, "max_new_tokens": 32}
    pipeline_report(tmp_path, results, {"sft": 1.0}, 2.0)
    rows = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| PPO")]
    assert "length-limited" in rows[0] and "length-limited" not in rows[1]  # PPO ends 10% of its responses, PPO-ptx 70%
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ppo"]["length_limited"] and not report["ppo_ptx"]["length_limited"] and not report["sft"]["length_limited"]
    assert report["directions"]["PPO-ptx's EOS fraction is at least half of SFT's (responses still end)"] is True


def test_the_report_shows_each_stages_peak_memory(tmp_path):
    results = {"sft": policy(0.0, 0.0, 6.5, 0.6), "ppo": policy(0.5, 2.0, 6.9, 0.6), "ppo_ptx": policy(0.2, 1.0, 6.4, 0.7)}
    pipeline_report(tmp_path, results, {"sft": 12.0, "ppo": 30.0}, 50.0, {"sft": 0.25, "ppo": 1.5})
    assert json.loads((tmp_path / "report.json").read_text())["memory"] == {"stages_peak_gib": {"sft": 0.25, "ppo": 1.5}}
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert "## Stage time and peak memory" in lines and "| sft | 12 | 0.25 |" in lines and "| ppo | 30 | 1.50 |" in lines
    pipeline_report(tmp_path, results, {"sft": 12.0}, 50.0)  # exports from before memory was logged: no table
    assert "peak memory" not in (tmp_path / "report.md").read_text()
