"""Resume honours the user, and is exact: a PPO run killed with SIGKILL and resumed from its last checkpoint ends with
the weights and metrics of an uninterrupted run; a resume with a larger ``total_episodes`` trains the extra episodes
and exports where the flag says; a second run into a used folder stops instead of writing ``last-v1.ckpt``."""

import json
import shutil
import signal

import pytest
import torch
from helpers import CONFIGS, ppo_flags, run_cli
from safetensors.torch import load_file


def ppo(exports, root, *flags):
    """The tiny PPO-ptx config on the session's ``tiny_exports``, shrunk: 4 prompts an iteration, 2 minibatches, a
    checkpoint every 2 iterations."""
    return run_cli("fit", *ppo_flags(exports, root, *flags), env={"PYTHONPATH": str(CONFIGS.parent / "tests")})


def weights(export):
    return load_file(export / "model.safetensors")


def val_metrics(export):
    metrics = json.loads((export / "lit_instruct.json").read_text())["metrics"]
    return {k: v for k, v in metrics.items() if k.startswith(("val/", "objective/", "policy/", "episodes"))}


@pytest.fixture(scope="module")
def whole(tiny_exports, tmp_path_factory):
    """An uninterrupted 20-episode run (5 iterations; checkpoints at iterations 2 and 4) in its own root folder.
    Its export is never written again. The larger-total test resumes it in place (a copy in another folder would not
    do: Lightning's ModelCheckpoint restores its state only into the folder it saved from, and writes last-v1.ckpt
    elsewhere); the second-run test works on a copy."""
    root = tmp_path_factory.mktemp("resume") / "whole"
    done = ppo(tiny_exports, root, "--model.total_episodes", "20")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_a_run_killed_mid_ppo_resumes_to_the_uninterrupted_result(tiny_exports, whole, tmp_path):
    killed = ppo(tiny_exports, tmp_path / "killed", "--model.total_episodes", "20",
                 "--trainer.callbacks+=probes.KillAt", "--trainer.callbacks.episodes", "12")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "export").exists()
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["ppo_state"]["episodes"] == 8  # iteration 3 was lost with the process

    resumed = ppo(tiny_exports, tmp_path / "killed", "--model.total_episodes", "20", "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(whole / "export"), weights(tmp_path / "killed" / "export")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert val_metrics(whole / "export") == val_metrics(tmp_path / "killed" / "export")


def test_resume_with_a_larger_total_trains_on_and_exports_where_told(tiny_exports, whole, tmp_path):
    assert json.loads((whole / "export" / "lit_instruct.json").read_text())["episodes"] == 20
    more = ppo(tiny_exports, whole, "--model.total_episodes", "28", "--model.export_dir", str(tmp_path / "more"),
               "--ckpt_path", str(whole / "checkpoints" / "last.ckpt"))
    assert more.returncode == 0, more.stderr[-3000:]
    assert "model.total_episodes: 20 (checkpoint) -> 28 (now)" in more.stderr  # the printed summary of what differs
    assert json.loads((tmp_path / "more" / "lit_instruct.json").read_text())["episodes"] == 28
    assert json.loads((whole / "export" / "lit_instruct.json").read_text())["episodes"] == 20  # untouched
    assert not (whole / "checkpoints" / "last-v1.ckpt").exists()


def test_a_second_run_into_a_used_folder_stops_and_overwrite_starts_over(tiny_exports, whole, tmp_path):
    run = shutil.copytree(whole, tmp_path / "run")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in before and len(before) > 1  # last.ckpt and the iteration-4 checkpoint
    second = ppo(tiny_exports, run, "--model.total_episodes", "4")
    assert second.returncode == 2
    assert "already holds checkpoints of an earlier run" in second.stderr and "--ckpt_path" in second.stderr
    assert "Traceback" not in second.stderr  # one clear message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    overlay = tmp_path / "overlay.yaml"  # as the pipeline and a sweep say it for the folders they own
    overlay.write_text("overwrite: true\n")
    again = ppo(tiny_exports, run, "--model.total_episodes", "4", "--config", str(overlay))
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # the earlier ones deleted
    assert json.loads((run / "export" / "lit_instruct.json").read_text())["episodes"] == 4


def test_checkpoints_and_export_follow_default_root_dir(whole):
    """``whole`` gave only ``--trainer.default_root_dir``: its checkpoints and export are under it."""
    assert (whole / "checkpoints" / "last.ckpt").is_file()
    assert (whole / "export" / "lit_instruct.json").is_file()


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("fit", "validate", "export", "pipeline", "sweep", "study", "eval", "interpolate"):
        assert f"  {name} " in result.stdout, name
    assert "  test " not in result.stdout and "  predict " not in result.stdout  # no stage has a test or predict step


@pytest.mark.parametrize("source, message", [
    ("/nonexistent/model", "/nonexistent/model: model directory not found"),
    ("someorg/no-such-model", "someorg/no-such-model: cannot load it: not a local directory, and not loadable from the Hugging Face hub"),
])
def test_a_missing_model_is_one_clear_message(source, message, tmp_path):
    result = run_cli("fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--model.model_name_or_path", source,
                     "--trainer.default_root_dir", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "Namespace(" not in result.stderr
