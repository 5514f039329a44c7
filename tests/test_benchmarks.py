"""Each benchmark script runs in a tiny setting (a smoke test: nothing here is timed or compared).

The four scripts start together when the first test asks for one: each is one process at a time, mostly Python
start-up and tiny models, so two run side by side on two cores in about the time of one."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT

SCRIPTS = {
    "reward_grouped_vs_pairs.py": ["--settings", "k4,k9,asis,k4strict,k9strict", "--steps", "1", "--warmup", "0",
                                   "--prompts-per-step", "2", "--max-length", "32"],
    "sft_vs_trl.py": ["--tiny"],
    "reward_vs_trl.py": ["--tiny"],  # k4 and k9strict, 1 round, 2 prompts/step, 1 + 1 steps, 32 tokens
    "ppo_vs_trl.py": ["--tiny"],  # 1 round, 1 + 2 iterations of 8 prompts x 8 new tokens per side
}


@pytest.fixture(scope="module")
def started():
    processes = {name: subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / name), *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for name, args in SCRIPTS.items()}
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()


@pytest.fixture
def run_script(started):
    def finished(name):
        stdout, stderr = started[name].communicate(timeout=900)
        assert started[name].returncode == 0, stderr[-3000:]
        return json.loads(stdout.strip().splitlines()[-1])

    return finished


def test_reward_grouped_vs_pairs_smoke(run_script):
    out = run_script("reward_grouped_vs_pairs.py")
    by = {r["setting"]: r for r in out["results"]}
    assert by["k4strict"]["row_ratio"] == 3.0  # 2*C(4,2) = 12 rows vs 4
    assert by["k9strict"]["row_ratio"] == 8.0  # 2*C(9,2) = 72 rows vs 9
    assert by["k9"]["rows_grouped"] == 18 and by["k9"]["rows_expanded"] <= 2 * 36 * 2
    assert all(r["grouped_comparisons_per_s"] > 0 and r["expanded_comparisons_per_s"] > 0 for r in out["results"])


def test_sft_vs_trl_smoke(run_script):
    out = run_script("sft_vs_trl.py")
    lit, trl = out["lit"], out["trl"]
    assert out["tokens_per_step_match"]  # both sides trained on the same non-padding and label tokens, step by step
    assert lit["tokens_per_step"] == trl["tokens_per_step"] and len(lit["tokens_per_step"]) == out["settings"]["steps"]
    assert lit["label_tokens_per_step"] == trl["label_tokens_per_step"]
    assert abs(lit["mean_loss"] - trl["mean_loss"]) < 1e-3  # same weights, data, optimizer: the same training
    assert lit["tokens_per_s"] > 0 and trl["tokens_per_s"] > 0 and lit["peak_rss_mib"] > 0 and trl["peak_rss_mib"] > 0
    assert out["tokens_per_s_ratio"] > 0


def test_reward_vs_trl_smoke(run_script):
    out = run_script("reward_vs_trl.py")
    by = {r["setting"]: r for r in out["results"]}
    assert set(by) == {"k4", "k9strict"} and out["accuracy"] is None
    strict = by["k9strict"]
    assert strict["comparisons_per_step"] == 72 and strict["lit_rows_per_step"] == 18  # 2 prompts: 2 * C(9,2) pairs, 2 * 9 rows
    # TRL: all 72 pairs per optimizer step, forwarded 36 pairs (72 chosen + rejected rows) at a time with accumulation
    assert strict["trl_batch_size"] == 72 and strict["trl_rows_per_step"] == 72
    for r in out["results"]:
        assert sorted(run["side"] for run in r["runs"]) == ["lit", "trl"]
        assert r["tokens_match"] and r["trl_pairs_dropped"] == 0  # same token ids on both sides, nothing filtered
        assert r["init_max_abs_diff"] < 1e-5  # same initial weights
        assert r["lit_comparisons_per_s"] > 0 and r["trl_comparisons_per_s"] > 0 and r["speedup"] > 0
    assert set(out["target"]) >= {"k9strict_speedup", "speed_met_k9strict", "accuracy_met"}


def test_ppo_vs_trl_smoke(run_script):
    out = run_script("ppo_vs_trl.py")
    lit, trl = out["results"]["lit"], out["results"]["trl"]
    for side in (lit, trl):
        assert side["episodes_per_s"] > 0 and side["peak_rss_mib"] > 0
        assert side["generation_s"] > 0 and side["scoring_s"] > 0  # the split was measured, not left at zero
        assert abs(side["generation_s"] + side["scoring_s"] + side["update_s"] - side["iteration_s"]) < 1e-6
    assert out["episodes_per_s_ratio"] == lit["episodes_per_s"] / trl["episodes_per_s"]
