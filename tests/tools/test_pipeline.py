"""`lit-instruct pipeline`: end to end in a smoke setting, reuse of unchanged stages, --force, bad pipeline configs."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from helpers import CONFIGS, ROOT, run_cli

from lit_instruct.tools.pipeline import STAGES, Pipeline, PipelineConfig


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    done = run_cli("pipeline", "--smoke", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    return out


def test_pipeline_smoke_end_to_end_then_reuse(smoke_run, monkeypatch, capsys):
    out = smoke_run
    report = json.loads((out / "report.json").read_text())
    for name in ("sft", "ppo", "ppo_ptx"):
        assert set(report[name]) >= {"score", "kl", "pretrain_loss"}
        assert (out / name / "export" / "model.safetensors").is_file()
    # the SFT policy against itself: 0 up to float error (its log-probs come from the sampling pass with the KV
    # cache, the reference's from one full forward pass)
    assert abs(report["sft"]["kl"]) < 1e-4 and 0.0 <= report["reward"]["accuracy"] <= 1.0
    assert (out / "score_vs_kl.png").stat().st_size > 0 and (out / "pretrain_loss.png").stat().st_size > 0
    markdown = (out / "report.md").read_text()
    assert "| PPO-ptx" in markdown and "The paper's directions, measured" in markdown
    # the held-apart judge: trained by the pipeline, scoring every policy beside the optimised reward model
    assert (out / "judge" / "export" / "config.json").is_file() and 0.0 <= report["judge"]["accuracy"] <= 1.0
    for name in ("sft", "ppo", "ppo_ptx"):
        assert {"judge_score", "reward_model_score", "eos_fraction", "length_limited"} <= set(report[name])
    assert report["reward"]["normalization"]["gain"] > 0 and report["judge"]["normalization"]["gain"] > 0
    assert len(report["directions"]) == 5
    # every stage's peak memory (process RSS on CPU), from its export's metrics, in report.json and report.md
    assert set(report["memory"]["stages_peak_gib"]) == set(STAGES) and min(report["memory"]["stages_peak_gib"].values()) > 0
    assert "## Stage time and peak memory" in markdown
    # the alignment tax on the bundled NLP benchmarks, per policy, in the report and beside each export
    for name in ("sft", "ppo", "ppo_ptx"):
        assert {"tax/instructgpt_squadv2/f1", "tax/instructgpt_drop/f1", "tax/instructgpt_fr_to_en/bleu",
                "tax/instructgpt_references/bits_per_byte"} <= set(report[name])
        assert json.loads((out / name / "tax.json").read_text())["settings"]["limit"] == 2
    assert "## The alignment tax on public NLP benchmarks" in markdown and "| PPO-ptx | " in markdown
    # a second `lit-instruct pipeline --smoke` (main's Pipeline, from the repository root like run_cli) in this
    # process, not the one that trained: every stage's fingerprint matches what that run stamped, so none reruns
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("lit_instruct.tools.pipeline.subprocess.run", no_stage_runs)
    again = Pipeline(PipelineConfig.load(None), out, smoke=True)
    for stage in STAGES:
        again.run_stage(stage)
    printed = capsys.readouterr().out
    assert all(f"{stage}: reusing" in printed for stage in STAGES), printed


def no_stage_runs(command, **kwargs):
    raise AssertionError(f"a stage ran again: {command}")


def test_sweep_runs_a_grid_offline_resumes_and_the_study_plots_it(tiny_exports, tmp_path):
    """A 2-run ptx.ptx_coef grid on the session's tiny exports through `lit-instruct sweep` (W&B offline), a rerun
    that finds the grid done, then `lit-instruct study`. Each run is one iteration of 4 prompts."""
    sweep_file = tmp_path / "grid.yaml"
    command = ["${env}", "lit-instruct", "fit", "--config", "configs/ppo/tiny.yaml",
               f"--model.policy_name_or_path={tiny_exports / 'sft'}", f"--model.reward_model_path={tiny_exports / 'rm'}",
               "--model.total_episodes=4", "--data.rollout_batch_size=4", "--model.ppo.minibatch_size=4",
               "--model.sampling.max_new_tokens=8", "--model.ptx.examples_per_episode=1", "--model.warmup_steps=0",
               "--data.max_prompt_tokens=48", "--data.ptx_block_size=32", "--trainer.val_check_interval=1",
               "--data.max_val_prompts=4", "--data.val_batch_size=4", "--data.max_val_pretrain_blocks=4", "${args}"]
    sweep_file.write_text(yaml.safe_dump({"name": "smoke-grid", "method": "grid",
                                          "metric": {"name": "val/score", "goal": "maximize"},
                                          "parameters": {"model.ptx.ptx_coef": {"values": [0.0, 2.0]}}, "command": command}))
    out = tmp_path / "sweep"
    done = run_cli("sweep", str(sweep_file), "--out", str(out), timeout=900, env={"WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    record = json.loads((out / "sweep.json").read_text())
    assert [r["params"] for r in record["runs"]] == [{"model.ptx.ptx_coef": 0.0}, {"model.ptx.ptx_coef": 2.0}]
    for run in record["runs"]:
        folder = Path(run["folder"])
        assert run["state"] == "finished" and "val/score" in run["summary"]
        meta = json.loads((folder / "export" / "lit_instruct.json").read_text())
        assert meta["hparams"]["ptx"]["ptx_coef"] == run["params"]["model.ptx.ptx_coef"]  # the swept value reached the run
        assert list((folder / "wandb").glob("offline-run-*")), "each run logs to W&B offline"
    again = run_cli("sweep", str(sweep_file), "--out", str(out), "--no-check", timeout=300)
    assert again.returncode == 0 and "run 3" not in again.stdout and "2 runs recorded" in again.stdout

    study = run_cli("study", str(out), timeout=600)
    assert study.returncode == 0, study.stderr[-3000:]
    table = (out / "study.md").read_text()
    assert "| (SFT) |" in table and "| 0.02 | 0 |" in table and "| 0.02 | 2 |" in table
    assert (out / "study.png").stat().st_size > 10_000
    result = json.loads((out / "study.json").read_text())
    assert abs(result["sft"]["kl"]) < 1e-4  # the SFT policy measured against itself
    assert {r["ptx_coef"] for r in result["runs"]} == {0.0, 2.0}


@pytest.fixture
def fake_runs(monkeypatch):
    """Stage processes replaced by one that only creates the export folder; records which stages ran."""
    ran = []

    def fake_run(command, **kwargs):
        overlay = command[-1]
        export = yaml.safe_load(Path(overlay).read_text())["model"]["init_args"]["export_dir"]
        ran.append(Path(export).parent.name)
        Path(export).mkdir(parents=True, exist_ok=True)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr("lit_instruct.tools.pipeline.subprocess.run", fake_run)
    return ran


def run_stages(out, config=None, force=False):
    pipeline = Pipeline(config or PipelineConfig(), out, force=force, smoke=True)
    for stage in STAGES:
        pipeline.run_stage(stage)


def test_unchanged_stages_are_reused_and_force_redoes_them(tmp_path, fake_runs):
    run_stages(tmp_path)
    assert fake_runs == list(STAGES)
    fake_runs.clear()
    run_stages(tmp_path)
    assert fake_runs == []
    run_stages(tmp_path, force=True)
    assert fake_runs == list(STAGES)


def test_a_changed_stage_reruns_with_everything_downstream(tmp_path, fake_runs):
    run_stages(tmp_path)
    fake_runs.clear()
    changed = PipelineConfig(overrides={"reward": {"model": {"init_args": {"warmup_steps": 3}}}})
    run_stages(tmp_path, changed)
    assert fake_runs == ["reward", "ppo", "ppo_ptx"]


def test_unknown_pipeline_keys_are_refused(tmp_path):
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("sft: configs/sft/tiny.yaml\nppo_coef: 3\n")
    with pytest.raises(ValueError, match=r"pipeline.yaml: unknown pipeline keys \['ppo_coef'\]"):
        PipelineConfig.load(str(bad))


def test_pipeline_configs_in_the_repo_load():
    files = sorted((CONFIGS / "pipeline").glob("*.yaml"))
    assert files
    for file in files:
        config = PipelineConfig.load(str(file))
        assert config.files("ppo_ptx") and config.files("reward")


def test_sft_selection_uses_an_earlier_reward_model(tmp_path, fake_runs):
    run_stages(tmp_path)
    (tmp_path / "reward" / "export" / "lit_instruct.json").write_text("{}")  # an earlier run's reward export
    pipeline = Pipeline(PipelineConfig(sft_selection_reward_model="auto"), tmp_path, smoke=True)
    callbacks = pipeline.overlay("sft")["trainer"]["callbacks"]
    assert callbacks[-1]["class_path"] == "lit_instruct.callbacks.RewardModelSelection"
    assert callbacks[-1]["init_args"]["reward_model_path"] == str(tmp_path / "reward" / "export")
    assert "RewardModelSelection" not in str(Pipeline(PipelineConfig(), tmp_path).overlay("sft"))


def test_interpolating_the_pipelines_ppo_run(smoke_run, tmp_path):
    """``lit-instruct interpolate`` on the smoke run's plain-PPO run: ratio 0 is the SFT policy (KL 0), ratio 1 the
    PPO export's weights; PPO-ptx is measured beside them; the report, table and plot are written."""
    from safetensors.torch import load_file

    from lit_instruct.tools.interpolate import interpolate

    out = tmp_path / "interp"
    report = interpolate(smoke_run / "ppo", out, [0.0, 1.0], compare=[smoke_run / "ppo_ptx"],
                         tasks=["instructgpt_references"], limit=2, max_val_prompts=4)
    rows = {row["policy"]: row for row in report["rows"]}
    assert set(rows) == {"interpolated 0", "interpolated 1", str(smoke_run / "ppo_ptx")}
    assert abs(rows["interpolated 0"]["kl"]) < 1e-4 and "judge_score" in rows["interpolated 1"]
    assert all("tax/instructgpt_references/bits_per_byte" in row for row in rows.values())
    ppo = load_file(smoke_run / "ppo" / "export" / "model.safetensors")
    at_one = load_file(out / "ratio=1" / "export" / "model.safetensors")
    assert all(torch.equal(at_one[k], ppo[k]) for k in ppo)
    assert "| interpolated 0 |" in (out / "interpolation.md").read_text() and (out / "interpolation.png").stat().st_size > 0
