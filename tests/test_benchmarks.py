"""Each benchmark script runs in a tiny setting (a smoke test: nothing here is timed or compared)."""

import json
import subprocess
import sys

from conftest import ROOT


def run_script(name, *args):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reward_grouped_vs_pairs_smoke():
    out = run_script("reward_grouped_vs_pairs.py", "--settings", "k4,k9,asis,k4strict,k9strict", "--steps", "1",
                     "--warmup", "0", "--prompts-per-step", "2", "--max-length", "32")
    by = {r["setting"]: r for r in out["results"]}
    assert by["k4strict"]["row_ratio"] == 3.0  # 2*C(4,2) = 12 rows vs 4
    assert by["k9strict"]["row_ratio"] == 8.0  # 2*C(9,2) = 72 rows vs 9
    assert by["k9"]["rows_grouped"] == 18 and by["k9"]["rows_expanded"] <= 2 * 36 * 2
    assert all(r["grouped_comparisons_per_s"] > 0 and r["expanded_comparisons_per_s"] > 0 for r in out["results"])
