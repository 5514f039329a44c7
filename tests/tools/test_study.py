"""The study's runs and cells (`lit-instruct study`) on fabricated run folders; its end-to-end run on a real sweep is
in test_pipeline.py."""

import json

import pytest

from lit_instruct.evaluation import HELD_OUT_METRICS
from lit_instruct.tools.study import gather, study


def test_the_study_reads_grouped_and_flat_coefficients(tmp_path):
    """Exports of grouped-settings runs (``hparams.kl.kl_coef``) and of runs from before (flat ``kl_coef``) both count."""
    metrics = {key: 0.5 for key in HELD_OUT_METRICS.values()}
    for name, hparams in (("grouped", {"kl": {"kl_coef": 0.2, "adaptive": True}, "ptx": {"ptx_coef": 1.0}}),
                          ("flat", {"kl_coef": 0.02, "ptx_coef": 0.0}),
                          ("defaults", {})):
        (tmp_path / name / "export").mkdir(parents=True)
        meta = {"stage": "ppo", "hparams": hparams, "metrics": metrics}
        (tmp_path / name / "export" / "lit_instruct.json").write_text(json.dumps(meta))
    rows = {r["run"]: r for r in gather(tmp_path)}
    assert (rows["grouped"]["kl_coef"], rows["grouped"]["ptx_coef"], rows["grouped"]["adaptive_kl"]) == (0.2, 1.0, True)
    assert (rows["flat"]["kl_coef"], rows["flat"]["ptx_coef"], rows["flat"]["adaptive_kl"]) == (0.02, 0.0, False)
    assert (rows["defaults"]["kl_coef"], rows["defaults"]["ptx_coef"]) == (0.02, 27.8)  # the module's defaults


def fake_run(folder, kl_coef, ptx_coef, seed, metrics, seed_in=("config",)):
    """A finished PPO run folder as the study reads it: ``export/lit_instruct.json`` and the ``config.yaml`` that
    LightningCLI saves (with the seed it used); ``seed_in``: where the seed is recorded."""
    (folder / "export").mkdir(parents=True)
    meta = {"stage": "ppo_ptx", "hparams": {"kl": {"kl_coef": kl_coef}, "ptx": {"ptx_coef": ptx_coef}}, "metrics": metrics}
    if "export" in seed_in:
        meta["seed"] = seed
    (folder / "export" / "lit_instruct.json").write_text(json.dumps(meta))
    if "config" in seed_in:
        (folder / "config.yaml").write_text(f"seed_everything: {seed}\ntrainer:\n  max_steps: 1\n")


def test_the_study_reads_each_runs_seed(tmp_path):
    metrics = {key: 0.5 for key in HELD_OUT_METRICS.values()}
    fake_run(tmp_path / "a", 0.02, 1.0, 3, metrics)                            # config.yaml, as LightningCLI saves it
    fake_run(tmp_path / "b", 0.02, 1.0, 4, metrics, seed_in=("export",))       # an export that records it
    fake_run(tmp_path / "c", 0.02, 1.0, 5, metrics, seed_in=())                # neither: unknown
    assert {r["run"]: r["seed"] for r in gather(tmp_path)} == {"a": 3, "b": 4, "c": None}


def test_the_study_reports_each_cell_over_its_seeds(tmp_path, monkeypatch):
    """Two cells at 3 seeds and one at 1: study.json keeps the runs and per cell n, mean and 95% interval of every
    metric (one added to HELD_OUT_METRICS, as a judge score would be, included); study.md shows mean ± half-width
    and n, the one-seed cell without an interval; study.png is drawn."""
    monkeypatch.setitem(HELD_OUT_METRICS, "judge_score", "val/judge_score")
    runs = tmp_path / "sweep"
    values = {(0.02, 0.0): [0.1, 0.2, 0.6], (0.02, 1.0): [-1.0, -1.2, -1.1], (0.2, 0.0): [0.3]}
    for (kl_coef, ptx_coef), scores in values.items():
        for seed, score in enumerate(scores, start=1):
            metrics = {"val/score": score, "val/kl": 2.0 * seed, "val/pretrain_loss": 6.0 + score,
                       "val/response_length": 30.0, "val/judge_score": 0.5 + score / 10}
            if (kl_coef, ptx_coef, seed) == (0.02, 1.0, 3):
                del metrics["val/judge_score"]  # exported before the judge existed: still studied
            fake_run(runs / f"kl={kl_coef},ptx={ptx_coef},seed={seed}", kl_coef, ptx_coef, seed, metrics)
    out = tmp_path / "study"
    out.mkdir()
    baseline = {"policy": "sft/export", "score": -1.5, "kl": 0.0, "pretrain_loss": 6.2, "response_length": 28.0}
    (out / "sft_baseline.json").write_text(json.dumps(baseline))  # the cached SFT measurement: nothing is measured

    result = study(runs, out)
    assert len(result["runs"]) == 7 and {r["seed"] for r in result["runs"]} == {1, 2, 3}
    cells = {(c["kl_coef"], c["ptx_coef"]): c for c in json.loads((out / "study.json").read_text())["cells"]}
    assert [cells[k]["n"] for k in values] == [3, 3, 1] and cells[(0.02, 0.0)]["seeds"] == [1, 2, 3]
    score = cells[(0.02, 0.0)]["metrics"]["score"]
    # by hand: mean 0.3, s = sqrt(0.07), half-width t(0.975, 2) * s / sqrt(3)
    assert score["mean"] == pytest.approx(0.3) and score["half_width"] == pytest.approx(4.302653 * 0.07 ** 0.5 / 3 ** 0.5)
    assert cells[(0.02, 1.0)]["metrics"]["judge_score"]["n"] == 2 and cells[(0.02, 1.0)]["metrics"]["score"]["n"] == 3
    assert cells[(0.2, 0.0)]["metrics"]["score"] | {} == {"n": 1, "mean": 0.3, "sd": None, "half_width": None,
                                                           "low": None, "high": None}

    table = (out / "study.md").read_text()
    assert "| kl_coef | ptx_coef | n | reward (RM, EOS penalty) | KL | pretraining loss | response length | judge score | seeds |" in table
    assert f"| 0.02 | 0 | 3 | 0.300 ± {score['half_width']:.3f} |" in table
    assert "| 0.2 | 0 | 1 | 0.300 | 2.00 | 6.300 | 30.0 | 0.530 | 1 |" in table  # one seed: the value, no interval
    assert "| (SFT) | | | -1.500 | 0 | 6.200 | 28.0 |" in table
    assert "| 0.02 | 1 | 3 | -1.100 ± 0.248 |" in table and "## Runs (7)" in table
    assert (out / "study.png").stat().st_size > 10_000


def test_the_study_warns_about_repeated_seeds(tmp_path, capsys):
    metrics = {key: 0.5 for key in HELD_OUT_METRICS.values()}
    for name in ("first", "again"):
        fake_run(tmp_path / name, 0.02, 1.0, 1234, metrics)
    study(tmp_path, tmp_path / "out", baseline=False)
    assert "same seed [1234, 1234]" in capsys.readouterr().out
