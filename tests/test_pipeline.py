"""`lit-instruct pipeline`: end to end in a smoke setting, reuse of unchanged stages, --force, bad pipeline configs."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from lit_instruct.pipeline import STAGES, Pipeline, PipelineConfig


def test_pipeline_smoke_end_to_end_then_reuse(tmp_path):
    out = tmp_path / "run"
    done = run_cli("pipeline", "--smoke", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    report = json.loads((out / "report.json").read_text())
    for name in ("sft", "ppo", "ppo_ptx"):
        assert set(report[name]) >= {"score", "kl", "pretrain_loss"}
        assert (out / name / "export" / "model.safetensors").is_file()
    assert report["sft"]["kl"] == 0.0 and 0.0 <= report["reward"]["accuracy"] <= 1.0
    assert (out / "score_vs_kl.png").stat().st_size > 0 and (out / "pretrain_loss.png").stat().st_size > 0
    assert "| PPO-ptx |" in (out / "report.md").read_text()
    again = run_cli("pipeline", "--smoke", "--out", str(out), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(f"{stage}: reusing" in again.stdout for stage in STAGES)


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

    monkeypatch.setattr("lit_instruct.pipeline.subprocess.run", fake_run)
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
    from conftest import CONFIGS

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
