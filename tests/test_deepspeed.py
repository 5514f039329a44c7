"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes: SFT and the reward model train, export, and convert."""

import pytest
import torch
from helpers import CONFIGS, run_cli, tiny_overrides
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    runs = {}
    for stage in (2, 3):
        tmp = tmp_path_factory.mktemp(f"zero{stage}")
        done = run_cli(
            "fit", "--config", str(CONFIGS / "sft" / "tiny.yaml"), "--config", str(CONFIGS / "trainer" / f"cpu_zero{stage}.yaml"),
            *tiny_overrides(tmp), timeout=900,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        runs[stage] = tmp
    return runs


def convert(ckpt, out, cli=False):
    """``lit-instruct export CKPT --out OUT``: in a fresh process when ``cli``, else the function it calls
    (``export_checkpoint``) in this one, sparing a process start. The ZeRO-3 SFT checkpoint goes through the CLI."""
    if cli:
        done = run_cli("export", str(ckpt), "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        from lit_instruct.tools.checkpoints import export_checkpoint

        export_checkpoint(ckpt, out)


def weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_checkpoint_converts_to_the_same_export(zero_runs, stage):
    tmp = zero_runs[stage]
    ckpt = tmp / "checkpoints" / "last.ckpt"
    assert (ckpt / "checkpoint").is_dir()  # a sharded DeepSpeed folder, not a single file
    convert(ckpt, tmp / "converted", cli=stage == 3)
    exported, converted = weights(tmp / "export"), weights(tmp / "converted")
    assert exported.keys() == converted.keys()
    assert all(torch.equal(exported[k], converted[k]) for k in exported)


def test_zero2_and_zero3_train_the_same_weights(zero_runs):
    """Same seed, data order and fp32 reductions: ZeRO-3's gathered export equals ZeRO-2's."""
    a, b = weights(zero_runs[2] / "export"), weights(zero_runs[3] / "export")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    from lit_instruct.models.causal_lm import load_causal_lm, load_tokenizer

    torch.manual_seed(1234)
    init = load_causal_lm("embedded", load_tokenizer("embedded")).state_dict()
    assert not torch.equal(init["transformer.h.0.attn.c_attn.weight"], a["transformer.h.0.attn.c_attn.weight"])


@pytest.fixture(scope="module")
def zero_reward_runs(zero_runs, tmp_path_factory):
    """The reward stage under ZeRO-2/3, from the SFT export of the same ZeRO stage."""
    runs = {}
    for stage in (2, 3):
        tmp = tmp_path_factory.mktemp(f"reward_zero{stage}")
        done = run_cli(
            "fit", "--config", str(CONFIGS / "reward" / "tiny.yaml"), "--config", str(CONFIGS / "trainer" / f"cpu_zero{stage}.yaml"),
            *tiny_overrides(tmp, samples=False), "--model.model_name_or_path", str(zero_runs[stage] / "export"),
            "--data.normalization_rows", "16", "--data.batch_size", "2", "--model.gain.policy", str(zero_runs[stage] / "export"),
            "--model.gain.max_new_tokens", "4", timeout=900,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        runs[stage] = tmp
    return runs


@pytest.mark.parametrize("stage", [2, 3])
def test_reward_model_trains_under_zero_and_its_checkpoint_converts(zero_reward_runs, stage):
    from lit_instruct import RewardModel

    tmp = zero_reward_runs[stage]
    rm = RewardModel.from_pretrained(tmp / "export")
    assert rm.normalization["rows"] == 16 and rm.normalization["policy_samples"] == 16 and rm.normalization["gain"] > 0
    convert(tmp / "checkpoints" / "last.ckpt", tmp / "converted")
    again = RewardModel.from_pretrained(tmp / "converted")  # re-normalised from the checkpoint's data settings
    a, b = rm.state_dict(), again.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("stage", [2, 3])
def test_ppo_ptx_trains_and_resumes_under_zero(zero_runs, zero_reward_runs, tmp_path, stage):
    """PPO-ptx with its four models under ZeRO-2/3, stopped and resumed. Under ZeRO-3 the policy is gathered once per
    rollout for generation (``rollout.gather_for_generation``, the default), and a probe in the first run checks that this
    samples the same tokens from the same seed as per-layer gathering (the processes stepping together)."""
    import json

    args = [
        "fit", "--config", str(CONFIGS / "ppo" / "tiny.yaml"), "--config", str(CONFIGS / "trainer" / f"cpu_zero{stage}.yaml"),
        "--model.policy_name_or_path", str(zero_runs[stage] / "export"),
        "--model.reward_model_path", str(zero_reward_runs[stage] / "export"),
        "--model.kl.adaptive", "true", "--model.kl.target", "0.01", "--model.kl.horizon", "100",
        "--data.rollout_batch_size", "4", "--model.ppo.minibatch_size", "4", "--model.sampling.max_new_tokens", "8",
        "--data.max_val_prompts", "4", "--data.val_batch_size", "4", "--model.ptx.examples_per_episode", "2",
        "--trainer.val_check_interval", "2", "--trainer.logger", "false",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath", str(tmp_path / "ck"),
        "--trainer.callbacks.save_last", "true", "--model.export_dir", str(tmp_path / "export"),
        "--trainer.default_root_dir", str(tmp_path),
    ]
    probe = ["--trainer.callbacks+=probes.GatheredGeneration", "--trainer.callbacks.out", str(tmp_path / "probe.json")]
    done = run_cli(*args, "--model.total_episodes", "16", *(probe if stage == 3 else []), timeout=900,
                   env={"PYTHONPATH": str(CONFIGS.parent / "tests")})
    assert done.returncode == 0, done.stderr[-4000:]
    if stage == 3:
        gathered = json.loads((tmp_path / "probe.json").read_text())
        assert gathered.pop("response_tokens") > 0
        assert gathered == {"whole_when_gathered": True, "whole_per_layer": False, "same_tokens": True}
        assert "gathering the policy's" in done.stdout + done.stderr  # the log line saying what generation does
    first = json.loads((tmp_path / "export" / "lit_instruct.json").read_text())
    assert first["episodes"] == 16  # 2 iterations x 4 prompts x 2 processes
    resumed = run_cli(*args, "--model.total_episodes", "24", "--ckpt_path", str(tmp_path / "ck" / "last.ckpt"), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    second = json.loads((tmp_path / "export" / "lit_instruct.json").read_text())
    assert second["episodes"] == 24  # the episode count, and with it the KL controller's state, carried on
    assert second["kl_coef_final"] != first["kl_coef_final"]


def test_validate_subcommand_under_zero3(zero_runs):
    """`lit-instruct validate` builds DeepSpeed's inference engine on CPU processes (CPUDeepSpeedStrategy's override);
    the AlignmentTax callback measures the sharded model (gathered once) and gives what `lit-instruct eval` gives on
    the export of the same weights."""
    import re

    from lit_instruct.tools.tax import evaluate_export

    done = run_cli("validate", "--config", str(CONFIGS / "sft" / "tiny.yaml"), "--config", str(CONFIGS / "trainer" / "cpu_zero3.yaml"),
                   "--model.model_name_or_path", str(zero_runs[3] / "export"), "--trainer.logger", "false",
                   "--trainer.limit_val_batches", "2", "--model.num_sample_prompts", "0",
                   "--trainer.callbacks+=lit_instruct.callbacks.AlignmentTax", "--trainer.callbacks.tasks=[instructgpt_references]",
                   "--trainer.callbacks.limit=3", timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "val/loss" in done.stdout
    logged = float(re.search(r"│\s*tax/instructgpt_references/bits_per\S*\s*│\s*([0-9.]+)", done.stdout).group(1))  # the validate table
    from_disk = evaluate_export(zero_runs[3] / "export", ["instructgpt_references"], limit=3, bootstrap_iters=0)["results"]
    assert logged == pytest.approx(from_disk["instructgpt_references"]["bits_per_byte"], rel=1e-4)
