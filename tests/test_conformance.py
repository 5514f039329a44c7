"""Conformance: every stage on real Hugging Face architectures, loaded from directories stored as hub checkpoints are.

For GPT-2, GPT-NeoX (Pythia), Llama, Qwen2 and OPT, a tiny random-init model is written in fp16 or bf16 with its
family's tokenizer class (Llama and Qwen2 with their chat templates). SFT, the reward model, PPO-ptx and plain PPO
then run on it through the ``lit-instruct`` CLI (LightningCLI, the stages' tiny configs) for a few steps, in
``32-true`` and in ``bf16-mixed``, each stage starting from the previous one's export. A probe callback
(``tests/probes.py``) watches every training step. Asserted for each:

- trained modules are in train mode in every training forward pass, frozen ones in eval mode;
- configured dropout is live in SFT (two training-mode forwards differ) and off in PPO;
- gradient checkpointing recomputes the transformer layers in backward;
- the first PPO minibatch has ratio 1 and approxkl 0, in bf16 too, and KL 0 while the policy is the reference;
- trainable weights are fp32 masters whatever the checkpoint stores; each export reloads in the dtype asked for,
  and generates or scores; the reward shift survives the export exactly.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from helpers import CONFIGS, run_cli, tiny_overrides
from hf_models import CHAT_FAMILIES, FAMILIES, write_hf_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from lit_instruct import bundled
from lit_instruct.models.causal_lm import dropout_probabilities
from lit_instruct.models.export import read_metadata
from lit_instruct.models.reward_model import RewardModel
from lit_instruct.tools.cli import LitInstructCLI

# (stored dtype, training precision, export dtype): each family runs both rows.
SETTINGS = [(torch.float16, "32-true", "float32"), (torch.bfloat16, "bf16-mixed", "bfloat16")]
RESIDUAL_DROPOUT = {"gpt2": 0.1, "gpt_neox": 0.1, "opt": 0.1, "llama": None, "qwen2": None}  # Llama/Qwen2: attention dropout only


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Small slices of the bundled files, so that every family's tokenizer encodes them in a blink."""
    root = tmp_path_factory.mktemp("conformance_data")

    def head(name: str, n: int) -> str:
        lines = bundled.resolve(f"bundled:{name}").read_text(encoding="utf-8").splitlines()[:n]
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(root / name)

    docs = bundled.resolve("bundled:pretrain.txt").read_text(encoding="utf-8").split("\n\n")[:120]
    (root / "pretrain.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return {"sft": head("sft.jsonl", 64), "rank": head("rank.jsonl", 40), "prompts": head("prompts.jsonl", 64),
            "pretrain": str(root / "pretrain.txt")}


def cli(config: str, *flags: str, root) -> LitInstructCLI:
    """``lit-instruct fit --config CONFIG FLAGS`` in this process, quiet, with the probe as the only callback."""
    args = ["fit", "--config", str(CONFIGS / config), *flags,
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.callbacks=probes.StageProbe",
            "--trainer.default_root_dir", str(root)]
    return LitInstructCLI(args=args)


def probe_of(run: LitInstructCLI):
    return next(c for c in run.trainer.callbacks if type(c).__name__ == "StageProbe").record


def assert_trained_and_frozen_modes(record) -> None:
    assert record["trained_modes"] == {True}, "a trained module ran a training forward pass in eval mode"
    assert record["frozen_modes"] <= {False}, "a frozen module ran in train mode"


def assert_fp32_masters(modules) -> None:
    dtypes = {p.dtype for m in modules for p in m.parameters() if p.requires_grad}
    assert dtypes == {torch.float32}, dtypes


def assert_export_dtype(path, export_dtype: str, auto_class) -> torch.nn.Module:
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == export_dtype
    model = auto_class.from_pretrained(path, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {getattr(torch, export_dtype)}
    return model


@pytest.mark.parametrize("family, setting", list(itertools.product(FAMILIES, SETTINGS)),
                         ids=[f"{f}-{s[1]}" for f, s in itertools.product(FAMILIES, SETTINGS)])
def test_every_stage_on_a_real_architecture(family, setting, small_data, tmp_path):
    stored, precision, export_dtype = setting
    source = write_hf_model(tmp_path / "hub", family, stored)
    common = ["--trainer.precision", precision, "--model.export_dtype", export_dtype]

    # ---------------------------------------------------------------- SFT
    dropout = RESIDUAL_DROPOUT[family]
    sft = cli("sft/tiny.yaml", *common, "--model.model_name_or_path", str(source),
              "--model.residual_dropout", "null" if dropout is None else str(dropout), "--model.gradient_checkpointing", "true",
              "--model.export_dir", str(tmp_path / "sft"), "--model.num_sample_prompts", "1", "--model.sample_max_new_tokens", "3",
              "--trainer.max_steps", "3", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
              "--data.train_file", small_data["sft"], "--data.val_fraction", "0.1", "--data.max_length", "96",
              "--data.batch_size", "4", root=tmp_path / "sft-run")
    record = probe_of(sft)
    assert record["steps"] == 3
    assert_trained_and_frozen_modes(record)
    assert record["dropout_live"], "configured dropout is not active in training"
    assert record["recomputed_layer_calls"] >= record["backward_passes"] > 0, "gradient checkpointing did not recompute"
    assert_fp32_masters([sft.model.model])
    exported = assert_export_dtype(tmp_path / "sft", export_dtype, AutoModelForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "sft")
    ids = tokenizer("Hello", return_tensors="pt", add_special_tokens=False)
    assert exported.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3
    recorded_format = read_metadata(tmp_path / "sft")["prompt_format"]
    assert recorded_format["kind"] == ("chat_template" if family in CHAT_FAMILIES else "prompt_template")

    # ---------------------------------------------------------------- reward model
    rm = cli("reward/tiny.yaml", *common, "--model.model_name_or_path", str(tmp_path / "sft"),
             "--model.gradient_checkpointing", "true", "--model.export_dir", str(tmp_path / "rm"),
             "--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
             "--data.train_file", small_data["rank"], "--data.val_fraction", "0.2", "--data.max_length", "96",
             "--data.batch_size", "2", "--data.demonstrations_file", small_data["sft"], "--data.normalization_rows", "8",
             "--model.gain.policy", str(tmp_path / "sft"), "--model.gain.max_new_tokens", "4",
             "--data.policy_prompts_file", small_data["prompts"], root=tmp_path / "rm-run")
    record = probe_of(rm)
    assert_trained_and_frozen_modes(record)
    assert record["recomputed_layer_calls"] >= record["backward_passes"] > 0
    assert_fp32_masters([rm.model.reward_model])
    assert "val/accuracy" in rm.trainer.callback_metrics
    shift = rm.model.reward_model.reward_shift
    assert isinstance(shift, float) and shift != 0.0
    seq_cls = assert_export_dtype(tmp_path / "rm", export_dtype, AutoModelForSequenceClassification)
    assert seq_cls.config.num_labels == 1 and seq_cls.config.reward_normalization["shift"] == shift  # exactly
    reloaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert reloaded.reward_shift == shift
    assert rm.model.reward_model.normalization["gain"] > 0 and reloaded.reward_gain == 1.0  # folded into the head
    assert reloaded.format_description() == recorded_format
    assert torch.isfinite(reloaded.score(["Say hi.", "Name a colour."], ["Hi!", "Blue."])).all()

    # ---------------------------------------------------------------- PPO-ptx, then plain PPO
    runs = [("ppo/tiny.yaml", "ppo_ptx", "auto"), ("ppo/tiny_plain.yaml", "ppo", "auto")]
    if family == "gpt2" and precision == "bf16-mixed":  # the control: the sampling shortcut under bf16 is what the probe catches
        runs.append(("ppo/tiny.yaml", "ppo_sampling", "sampling"))
    for config, name, logprobs in runs:
        ppo = cli(config, *common, "--model.ppo.rollout_logprobs", logprobs, "--model.policy_name_or_path", str(tmp_path / "sft"),
                  "--model.reward_model_path", str(tmp_path / "rm"), "--model.export_dir", str(tmp_path / name),
                  "--model.total_episodes", "8", "--model.ppo.minibatch_size", "2", "--model.sampling.max_new_tokens", "6",
                  "--model.ptx.examples_per_episode", "1", "--model.gradient_checkpointing", "true",
                  "--model.num_sample_prompts", "1", "--model.warmup_steps", "0",
                  "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                  "--data.prompts_file", small_data["prompts"], "--data.pretrain_file", small_data["pretrain"],
                  "--data.rollout_batch_size", "4", "--data.max_prompt_tokens", "80", "--data.ptx_block_size", "32",
                  "--data.max_val_prompts", "2", "--data.val_batch_size", "2", "--data.max_val_pretrain_blocks", "2",
                  "--data.val_fraction", "0.1", root=tmp_path / f"{name}-run")
        module, record = ppo.model, probe_of(ppo)
        assert module.episodes == 8 and record["steps"] == 2
        assert_trained_and_frozen_modes(record)
        assert record["recomputed_layer_calls"] >= record["backward_passes"] > 0
        assert_fp32_masters([module.policy, module.critic])
        assert dropout_probabilities(module.policy) == {} and dropout_probabilities(module.critic) == {}
        # Old log-probs match the update's forward pass: every iteration's first minibatch, before its update.
        print(f"[{family} {precision} {name}] first-minibatch max|ratio-1| {record['ratio_error']} approxkl {record['approxkl']} kl {record['kl']}")
        if logprobs == "sampling":
            assert max(record["ratio_error"]) > 1e-5, record["ratio_error"]  # bf16 sampling logits are not the update's
            continue
        assert max(record["ratio_error"]) < 1e-5, record["ratio_error"]
        assert max(record["approxkl"]) < 1e-8, record["approxkl"]
        assert abs(record["kl"][0]) < 1e-4, record["kl"]  # the first rollout: the policy is still the reference
        policy = assert_export_dtype(tmp_path / name, export_dtype, AutoModelForCausalLM)
        assert policy.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3


def test_cli_sft_on_a_bf16_hub_directory_trains_in_train_mode(tmp_path):
    """The command a new user runs, in its own process with warnings shown: a bf16 Hugging Face directory through
    the tiny SFT config in bf16-mixed trains (no 'eval mode' warning from Lightning) and exports fp32 weights."""
    source = write_hf_model(tmp_path / "hub", "gpt_neox", torch.bfloat16)
    result = run_cli("fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--model.model_name_or_path", str(source),
                     "--trainer.precision", "bf16-mixed", *tiny_overrides(tmp_path), "--data.max_length", "96",
                     env={"PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "in eval mode at the start of training" not in result.stderr + result.stdout
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype="auto")
    assert {p.dtype for p in exported.parameters()} == {torch.float32}
