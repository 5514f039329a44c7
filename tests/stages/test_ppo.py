"""PPO-ptx stage: which weights train, resume, a reward that rises, bad input, and the CLI."""

import json
import warnings

import lightning as L
import pytest
import torch
from helpers import CONFIGS, quiet_trainer, run_cli

from lit_instruct import PPODataModule, PPOModule, RewardModel
from lit_instruct.data.records import DataError
from lit_instruct.models.export import read_metadata, save_export
from lit_instruct.rollout import collate_prompts
from lit_instruct.stages.ppo_rollout import RolloutPlacement
from lit_instruct.stages.ppo_settings import (
    KLPenalty,
    PPOUpdate,
    PtxMix,
    RolloutSettings,
    Sampling,
)


def make(exports, **kwargs):
    """A small PPOModule on the session's ``tiny_exports``; a settings group given as a dict is merged into this
    one's (``ptx={"ptx_coef": 0.0}``)."""
    args = dict(policy_name_or_path=str(exports / "sft"), reward_model_path=str(exports / "rm"),
                sampling={"max_new_tokens": 8}, ppo={"minibatch_size": 4}, ptx={"examples_per_episode": 1},
                num_sample_prompts=2, warmup_steps=0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-5))
    for key, value in kwargs.items():
        args[key] = {**args[key], **value} if isinstance(args.get(key), dict) and isinstance(value, dict) else value
    return PPOModule(**args)


def data(**kwargs):
    args = dict(rollout_batch_size=8, max_prompt_tokens=48, max_val_prompts=4, val_batch_size=4, ptx_block_size=32,
                max_val_pretrain_blocks=4)
    args.update(kwargs)
    return PPODataModule(**args)


def trainer(tmp_path, iterations, **kwargs):
    args = dict(max_epochs=1, limit_train_batches=iterations, limit_val_batches=1, val_check_interval=iterations,
                num_sanity_val_steps=0, default_root_dir=tmp_path)
    return quiet_trainer(**{**args, **kwargs})


def test_trainable_weights_change_and_frozen_ones_do_not(tiny_exports, tmp_path):
    module = make(tiny_exports)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer(tmp_path, 2, enable_checkpointing=False).fit(module, data())
    after = module.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"policy", "critic"} <= changed
    assert {"reference", "reward_model"} <= {k.split(".")[0] for k in before} and not changed & {"reference", "reward_model"}
    assert not any(p.requires_grad for p in module.reference.parameters()) and not module.reward_model.training
    assert module.episodes == 16
    metrics = module.trainer.callback_metrics
    for name in ("objective/score", "objective/kl", "objective/kl_coef", "objective/entropy", "objective/non_score_reward",
                 "policy/loss", "policy/approxkl", "policy/clipfrac", "value/loss", "value/clipfrac",
                 "value/explained_variance", "ptx/loss", "rollout/response_length", "rollout/eos_fraction",
                 "timing/rollout", "timing/update", "throughput/episodes_per_s", "val/score", "val/kl", "val/pretrain_loss",
                 "memory/peak_gib"):
        assert name in metrics, name
    assert float(metrics["ptx/loss"]) > 0 and float(metrics["memory/peak_gib"]) > 0


def test_plain_ppo_has_no_ptx_term(tiny_exports, tmp_path):
    module = make(tiny_exports, ptx={"ptx_coef": 0.0})
    trainer(tmp_path, 1, enable_checkpointing=False).fit(module, data())
    assert float(module.trainer.callback_metrics["ptx/loss"]) == 0.0


def test_resume_restores_the_ppo_state(tiny_exports, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    module = make(tiny_exports, kl=KLPenalty(kl_coef=0.1, adaptive=True, target=0.01, horizon=50))
    dm = data()
    trainer(tmp_path, 2, callbacks=[ckpt]).fit(module, dm)
    assert module.kl_controller.value != 0.1  # the controller moved
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    resumed, dm2 = make(tiny_exports, kl=KLPenalty(kl_coef=0.1, adaptive=True, target=0.01, horizon=50)), data()
    t2 = trainer(tmp_path, 3, enable_checkpointing=False)
    t2.fit(resumed, dm2, ckpt_path=tmp_path / "ck" / "last.ckpt")
    assert state["ppo_state"]["episodes"] == 16 and resumed.episodes == 24
    assert dm2.consumed_prompts == 24 and dm2.consumed_ptx_blocks > dm.consumed_ptx_blocks  # went on, not restarted
    assert state["PPODataModule"]["consumed_prompts"] == 16  # global positions: prompts of all processes together
    policy = {k: v for k, v in state["state_dict"].items() if k.startswith("policy.")}
    assert policy and state["optimizer_states"][0]["state"]  # policy weights and Adam moments were saved


class TokenShareReward(torch.nn.Module):
    """A reward that is easy to raise: 10 x the share of ``token_id`` among the response's tokens (the last ``width``
    columns; responses never end early here)."""

    def __init__(self, rm, token_id, width):
        super().__init__()
        self.reward_model, self.token_id, self.width = rm, token_id, width
        self.tokenizer = rm.tokenizer

    @property
    def context_length(self):
        return self.reward_model.context_length

    def forward(self, input_ids, attention_mask):
        ids, mask = input_ids[:, -self.width:], attention_mask[:, -self.width:].bool()
        return 10 * ((ids == self.token_id) & mask).float().sum(1) / mask.sum(1).clamp(min=1)


def test_score_rises_and_kl_grows_with_an_easy_reward(tiny_exports, tmp_path):
    torch.manual_seed(0)
    module = make(tiny_exports, ptx={"ptx_coef": 0.0}, missing_eos_penalty=None, kl={"kl_coef": 0.01},
                  ppo={"minibatch_size": 8, "ppo_epochs": 2}, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3, eps=1e-5))
    dm = data(rollout_batch_size=16)
    dm.connect(module.tokenizer)
    dm.prepare()
    query, mask = collate_prompts(dm.train_prompts[:16], module.tokenizer.pad_token_id, module.device)
    with torch.no_grad():  # reward the token the policy already likes most (a few % of its samples)
        target = int(module.policy(input_ids=query, attention_mask=mask).logits[:, -1].softmax(-1).mean(0).argmax())
    module.reward_model = TokenShareReward(module.reward_model, target, width=8)
    scores, kls = [], []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            scores.append(float(trainer.callback_metrics["objective/score"]))
            kls.append(float(trainer.callback_metrics["objective/kl"]))

    trainer(tmp_path, 16, enable_checkpointing=False, callbacks=[Record()], limit_val_batches=0).fit(module, dm)
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 3.0, scores
    assert sum(kls[-3:]) / 3 > sum(kls[:3]) / 3 + 1.0, kls


def test_bad_inputs_stop_before_training(tiny_exports, tmp_path, tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl:1: file is empty"):
        trainer(tmp_path, 1).fit(make(tiny_exports), data(prompts_file=str(empty)))
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "word " * 200}) + "\n" + "".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(40)))
    with pytest.raises(DataError, match=r"long.jsonl:1: prompt is \d+ tokens, longer than max_prompt_tokens=48"):
        trainer(tmp_path, 1).fit(make(tiny_exports), data(prompts_file=str(long), overlong="error"))
    # Prompt room plus response length beyond the context.
    with pytest.raises(ValueError, match=r"max_prompt_tokens \(121\) \+ model.sampling.max_new_tokens \(8\) = 129 tokens exceed the 128-token context"):
        trainer(tmp_path, 1).fit(make(tiny_exports), data(max_prompt_tokens=121))
    # A reward model without its normalisation.
    raw = RewardModel.from_causal_lm(str(tiny_exports / "sft"), tokenizer)
    save_export(raw, tokenizer, tmp_path / "raw_rm", {"stage": "reward", "normalization": None})
    with pytest.raises(ValueError, match="has no normalisation"):
        make(tiny_exports, reward_model_path=str(tmp_path / "raw_rm"))
    # A reward model whose tokenizer is not the policy's.
    from lit_instruct.models.causal_lm import train_embedded_tokenizer

    other = train_embedded_tokenizer(4000)
    other_rm = RewardModel.from_causal_lm(str(tiny_exports / "sft"), tokenizer)
    other_rm.normalization = {"shift": 0.0}
    save_export(other_rm, other, tmp_path / "other_rm", {"stage": "reward", "normalization": {"shift": 0.0}})
    with pytest.raises(ValueError, match="mismatched tokenizers"):
        make(tiny_exports, reward_model_path=str(tmp_path / "other_rm"))


def test_ema_weights_are_exported(tiny_exports, tmp_path):
    module = make(tiny_exports, ema_decay=0.5, export_dir=str(tmp_path / "export"))
    trainer(tmp_path, 1, enable_checkpointing=False, limit_val_batches=0).fit(module, data())
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").state_dict()
    ema = module.ema.module.state_dict()
    live = module.policy.state_dict()
    key = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(exported[key], ema[key]) and not torch.equal(exported[key], live[key])


def test_cli_ppo_ptx_tiny_config(tiny_exports, tmp_path):
    done = run_cli(
        "fit", "--config", str(CONFIGS / "ppo" / "tiny.yaml"),
        "--model.policy_name_or_path", str(tiny_exports / "sft"), "--model.reward_model_path", str(tiny_exports / "rm"),
        "--model.total_episodes", "32", "--trainer.val_check_interval", "2", "--data.max_val_prompts", "4",
        "--data.max_prompt_tokens", "64", "--model.sampling.max_new_tokens", "16", "--model.kl.kl_coef", "0.05",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path),
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath", str(tmp_path / "ck"),
        "--trainer.callbacks.save_last", "true", "--model.export_dir", str(tmp_path / "export"),
        "--trainer.default_root_dir", str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "export" / "lit_instruct.json").read_text())
    assert meta["stage"] == "ppo" and meta["episodes"] == 32
    assert meta["hparams"]["kl"]["kl_coef"] == 0.05 and meta["hparams"]["sampling"]["max_new_tokens"] == 16
    assert "val/pretrain_loss" in meta["metrics"]


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_frozen_models_load_quantized(tiny_exports, tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    module = make(tiny_exports, frozen_quantization=bits)
    assert any("Linear8bitLt" in type(m).__name__ or "Linear4bit" in type(m).__name__ for m in module.reference.modules())
    assert any("Linear8bitLt" in type(m).__name__ or "Linear4bit" in type(m).__name__ for m in module.reward_model.modules())
    trainer(tmp_path, 1, enable_checkpointing=False, limit_val_batches=0).fit(module, data())
    assert module.episodes == 8


def test_gradient_checkpointing_of_policy_and_critic(tiny_exports, tmp_path):
    module = make(tiny_exports, gradient_checkpointing=True)
    assert module.policy.is_gradient_checkpointing and module.critic.backbone.is_gradient_checkpointing
    trainer(tmp_path, 1, enable_checkpointing=False, limit_val_batches=0).fit(module, data())
    assert module.episodes == 8


def test_settings_groups_take_dataclasses_or_dicts(tiny_exports):
    module = make(tiny_exports, sampling=Sampling(max_new_tokens=5, temperature=0.7), ppo=PPOUpdate(minibatch_size=2),
                  kl={"kl_coef": 0.3}, ptx=PtxMix(ptx_coef=0.0))
    assert module.sampling == Sampling(max_new_tokens=5, temperature=0.7) and module.ppo.minibatch_size == 2
    assert module.kl == KLPenalty(kl_coef=0.3) and module.kl_controller.value == 0.3
    assert module.max_new_tokens == 5 and not module.uses_ptx
    assert make(tiny_exports, ptx={"examples_per_episode": 0}).uses_ptx is False and make(tiny_exports).uses_ptx


FLAT_HPARAMS = {  # the hyper-parameters of a checkpoint written before PPO's settings were grouped
    "kl_coef": 0.07, "adaptive_kl": True, "kl_target": 3.0, "kl_horizon": 500, "ptx_coef": 2.5,
    "ptx_examples_per_episode": 3, "ppo_epochs": 2, "minibatch_size": 4, "clip_range": 0.3, "value_clip_range": 0.25,
    "vf_coef": 0.2, "discount": 0.99, "gae_lambda": 0.9, "whiten_advantages": False, "temperature": 0.8, "top_k": 5,
    "top_p": 0.9, "max_new_tokens": 8, "val_max_new_tokens": 12, "max_grad_norm": 0.5, "rollout_logprobs": "recompute",
    "num_sample_prompts": 0, "warmup_steps": 0,
}


def test_flat_hparams_of_an_old_checkpoint_map_onto_the_groups():
    grouped = PPOModule.upgrade_hparams({**FLAT_HPARAMS, "_class_path": "lit_instruct.ppo_ptx.PPOPtxModule"})
    assert grouped["kl"] == {"kl_coef": 0.07, "adaptive": True, "target": 3.0, "horizon": 500}
    assert grouped["ptx"] == {"ptx_coef": 2.5, "examples_per_episode": 3}
    assert grouped["sampling"] == {"temperature": 0.8, "top_k": 5, "top_p": 0.9, "max_new_tokens": 8, "val_max_new_tokens": 12}
    assert PPOUpdate(**grouped["ppo"]) == PPOUpdate(ppo_epochs=2, minibatch_size=4, clip_range=0.3, value_clip_range=0.25,
                                                        vf_coef=0.2, discount=0.99, gae_lambda=0.9, whiten_advantages=False,
                                                        max_grad_norm=0.5, rollout_logprobs="recompute")
    assert grouped["num_sample_prompts"] == 0 and grouped["_class_path"] == "lit_instruct.ppo_ptx.PPOPtxModule"
    assert PPOModule.upgrade_hparams(grouped) == grouped  # grouped ones come back as they are


def test_a_checkpoint_of_the_flat_argument_module_still_exports(tiny_exports, tmp_path):
    from lit_instruct.tools.checkpoints import export_checkpoint

    module = make(tiny_exports)
    with torch.no_grad():
        module.policy.lm_head.weight.add_(0.01)  # weights that differ from the SFT export's
    hparams = {**FLAT_HPARAMS, "policy_name_or_path": str(tiny_exports / "sft"), "reward_model_path": str(tiny_exports / "rm"),
               "export_dir": None, "optimizer": torch.optim.Adam}  # an optimizer saved as code: not loaded
    ckpt = {"lit_instruct": {"class_path": "lit_instruct.ppo_ptx.PPOPtxModule", "stage": "ppo_ptx"},
            "state_dict": module.state_dict(), "hyper_parameters": hparams,
            "ppo_state": {"kl_controller": {"value": 0.05}, "episodes": 40}}
    torch.save(ckpt, tmp_path / "old.ckpt")
    export_checkpoint(tmp_path / "old.ckpt", tmp_path / "export")
    meta = read_metadata(tmp_path / "export")
    assert meta["hparams"]["kl"] == {"kl_coef": 0.07, "adaptive": True, "target": 3.0, "horizon": 500}
    assert meta["hparams"]["ptx"] == {"ptx_coef": 2.5, "examples_per_episode": 3}
    assert meta["hparams"]["sampling"]["max_new_tokens"] == 8 and meta["hparams"]["ppo"]["minibatch_size"] == 4
    assert meta["episodes"] == 40 and meta["kl_coef_final"] == 0.05
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "export" / "model.safetensors")
    key = next(k for k in exported if k.endswith("wte.weight") or k.endswith("lm_head.weight"))
    assert torch.equal(exported[key], module.policy.state_dict()[key])


def test_settings_groups_load_with_weights_only(tiny_exports, tmp_path):
    """Built in Python, the module saves its groups as plain dicts (as a config gives them), so its checkpoints load
    with ``weights_only`` (a resume too); a checkpoint that holds the dataclasses themselves loads safely as well."""
    from lit_instruct.tools.checkpoints import safe_load

    module = make(tiny_exports, kl=KLPenalty(kl_coef=0.04), sampling=Sampling(max_new_tokens=6))
    assert module.hparams["kl"] == vars(KLPenalty(kl_coef=0.04)) and module.hparams["sampling"]["max_new_tokens"] == 6
    groups = {"sampling": Sampling(max_new_tokens=6), "ppo": PPOUpdate(), "kl": KLPenalty(kl_coef=0.04), "ptx": PtxMix()}
    torch.save({"hyper_parameters": groups, "state_dict": {}}, tmp_path / "groups.ckpt")
    assert safe_load(tmp_path / "groups.ckpt")["hyper_parameters"] == groups


def test_missing_eos_penalty_replaces_the_score_and_warns_on_an_unscaled_reward_model(tiny_exports, tmp_path):
    from helpers import gained_reward_model

    gained = gained_reward_model(tiny_exports / "sft", tmp_path / "rm")
    with pytest.warns(UserWarning, match="without a gain"):  # the shift-only tiny reward model: no scale
        make(tiny_exports, missing_eos_penalty=-1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*without a gain.*")
        module = make(tiny_exports, reward_model_path=str(gained), missing_eos_penalty=-1.0)
    fmt = module.reward_model.format()
    prompts = [module.tokenizer(fmt.prompt(f"Question {i}: what is {i} plus {i}?"))["input_ids"] for i in range(16)]
    torch.manual_seed(0)
    rollout = module.rollout(prompts, 32, values=False)
    ended = rollout.ended
    assert ended.any() and (~ended).any(), "need responses that ended and ones that were cut"
    assert torch.all(rollout.scores[~ended] == -1.0)
    assert torch.equal(rollout.scores[ended], rollout.reward_model_scores[ended])
    assert not torch.all(rollout.reward_model_scores[~ended] == -1.0)


def test_validation_scores_with_a_held_apart_judge(tiny_exports, tmp_path):
    from helpers import gained_reward_model

    judge = gained_reward_model(tiny_exports / "sft", tmp_path / "judge")
    for role in ("judge", "gold"):
        with pytest.raises(ValueError, match=f"{role}_path .* held apart"):
            make(tiny_exports, **{f"{role}_path": str(tiny_exports / "rm")})
    # Gao et al.'s gold model scores the same responses as the judge, under its own name: the same model, the same score.
    module = make(tiny_exports, judge_path=str(judge), gold_path=str(judge))
    metrics = trainer(tmp_path, 1).validate(module, data(), verbose=False)[0]
    assert {"val/judge_score", "val/gold_score", "val/reward_model_score", "val/eos_fraction", "val/score"} <= set(metrics)
    assert 0.0 <= metrics["val/eos_fraction"] <= 1.0
    assert metrics["val/judge_score"] != metrics["val/reward_model_score"]  # another model's opinion
    assert metrics["val/gold_score"] == pytest.approx(metrics["val/judge_score"], abs=1e-6)
    assert metrics["val/sqrt_kl"] == pytest.approx(max(metrics["val/kl"], 0.0) ** 0.5, rel=1e-5)
    plain = trainer(tmp_path, 1).validate(make(tiny_exports), data(), verbose=False)[0]
    assert "val/judge_score" not in plain and "val/gold_score" not in plain


def test_offload_frozen_keeps_the_scoring_models_off_the_accelerator_between_rollouts(tiny_exports, tmp_path):
    """``rollout.offload_frozen``: the reference and the reward model run only while moved to the module's device
    (rollouts, validation), and sit on the CPU between (the PPO update); the moves themselves, on modules that record
    them; nothing moves without the setting; ZeRO-3 and quantized frozen models are refused."""
    module = make(tiny_exports, rollout={"offload_frozen": True})
    during, between = [], []
    for frozen in (module.reference, module.reward_model):
        frozen.register_forward_pre_hook(lambda m, args: during.append(module.placement.frozen_on_accelerator))

    class Between(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            between.append(module.placement.frozen_on_accelerator)

    trainer(tmp_path, 1, enable_checkpointing=False, callbacks=[Between()]).fit(module, data())  # a rollout, then validation
    assert len(during) >= 4 and all(during) and between == [False] and not module.placement.frozen_on_accelerator

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moves = []

        def to(self, device):
            self.moves.append(str(device))
            return self

    a, b = Recorder(), Recorder()
    placement = RolloutPlacement(RolloutSettings(offload_frozen=True), lambda: [a, b])
    placement.offload()
    with placement.frozen_on_device(torch.device("cuda", 1)):
        with placement.frozen_on_device(torch.device("cuda", 1)):  # nested (validation's judge around its rollout)
            assert a.moves == b.moves == ["cpu", "cuda:1"] and placement.frozen_on_accelerator
    assert a.moves == b.moves == ["cpu", "cuda:1", "cpu"] and not placement.frozen_on_accelerator
    c = Recorder()
    off = RolloutPlacement(RolloutSettings(), lambda: [c])
    off.offload()
    with off.frozen_on_device(torch.device("cuda", 0)):
        pass
    assert c.moves == []
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="offload_frozen is not supported under ZeRO-3"):
        RolloutPlacement.check(RolloutSettings(offload_frozen=True), SimpleNamespace(zero_stage_3=True), None)
    with pytest.raises(ValueError, match="frozen_quantization='8bit'"):
        RolloutPlacement.check(RolloutSettings(offload_frozen=True), None, "8bit")


def test_zero3_generation_is_gathered_within_the_budget_only(caplog):
    """``rollout.gather_for_generation`` under ZeRO-3: gathered (processes not stepping together) when the policy fits
    ``rollout.gather_budget_gib``, else per-layer with a log line saying so; nothing changes without ZeRO-3."""
    import contextlib
    import logging
    from types import SimpleNamespace

    policy, zero3 = torch.nn.Linear(256, 256), SimpleNamespace(zero_stage_3=True, world_size=2)  # 0.25 MiB
    context, synced = RolloutPlacement(RolloutSettings(gather_budget_gib=1.0), list).generation(policy, zero3)
    assert not isinstance(context, contextlib.nullcontext) and synced is False
    with caplog.at_level(logging.INFO):
        context, synced = RolloutPlacement(RolloutSettings(gather_budget_gib=1e-4), list).generation(policy, zero3)
    assert isinstance(context, contextlib.nullcontext) and synced is True
    assert "exceed rollout.gather_budget_gib=0.0001; generating with ZeRO-3's per-layer gathering" in caplog.text
    context, synced = RolloutPlacement(RolloutSettings(gather_for_generation=False), list).generation(policy, zero3)
    assert isinstance(context, contextlib.nullcontext) and synced is True
    context, synced = RolloutPlacement(RolloutSettings(), list).generation(policy, None)
    assert isinstance(context, contextlib.nullcontext) and synced is False
