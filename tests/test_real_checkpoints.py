"""Defects that only show with real Hugging Face checkpoints (fp16/bf16 on disk, eval mode after ``from_pretrained``,
float dropout attributes, Llama configs, sequence-classification reward models), one test per defect.

The checkpoints are the tiny random-init ones of :mod:`hf_models`; every run is a few steps, in process, on CPU.
"""

import json
from pathlib import Path

import hf_models
import lightning as L
import pytest
import torch
from helpers import CONFIGS, quiet_trainer, write_jsonl
from hf_models import write_hf_model
from safetensors import safe_open
from safetensors.torch import load_file

from lit_instruct import (
    PPODataModule,
    PPOModule,
    RewardDataModule,
    RewardModel,
    RewardModule,
    SFTDataModule,
    SFTModule,
    TinyConfig,
)
from lit_instruct.data.prompt_format import DEFAULT_TEMPLATE, format_prompt
from lit_instruct.models.causal_lm import load_tokenizer
from lit_instruct.models.export import save_export
from lit_instruct.objectives import lm_loss

FP16, BF16 = torch.float16, torch.bfloat16
QA_TEMPLATE = "Q: {prompt}\nA:"
TINY = TinyConfig(n_layer=1, n_embd=64, n_head=2, n_positions=128)
WORDS = "apple river stone cloud green quiet market winter paper garden window silver".split()


# ---------------------------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small data files: demonstrations, rankings (K = 2 and K = 3), PPO prompts and pretraining text."""
    root = tmp_path_factory.mktemp("real_ckpt_data")
    sft = [{"prompt": f"What is {i} plus {i}, in words about {WORDS[i % 12]}?",
            "response": f"It is {2 * i}: {i} and {i} make {2 * i}, like {WORDS[(i + 3) % 12]} and {WORDS[(i + 5) % 12]}."}
           for i in range(24)]
    rank = [{"prompt": f"Describe the {WORDS[i % 12]} number {i}.",
             "completions": [f"The {WORDS[i % 12]} is calm and {WORDS[(i + 1) % 12]} today, number {i}.",
                             f"No {WORDS[(i + 2) % 12]}.", f"Maybe a {WORDS[(i + 4) % 12]} or two, who knows."],
             "ranking": [0, 2, 1]} if i % 2 else
            {"prompt": f"Name a {WORDS[i % 12]} thing, number {i}.", "chosen": f"A {WORDS[(i + 6) % 12]} near the {WORDS[i % 12]}.",
             "rejected": "Nothing at all."}
            for i in range(24)]
    prompts = [{"prompt": f"Tell me about the {WORDS[i % 12]} and the {WORDS[(i * 7) % 12]} ({i})."} for i in range(40)]
    docs = [" ".join(WORDS[(i + j) % 12] for j in range(40 + i)) + f" {i}." for i in range(30)]
    (root / "pretrain.txt").write_text("\n\n".join(docs))
    return {"sft": write_jsonl(root / "sft.jsonl", sft), "rank": write_jsonl(root / "rank.jsonl", rank),
            "prompts": write_jsonl(root / "prompts.jsonl", prompts), "pretrain": str(root / "pretrain.txt")}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Hub-style checkpoints, stored in fp16 / bf16."""
    root = tmp_path_factory.mktemp("real_ckpt_hf")
    return {
        "gpt2": write_hf_model(root / "gpt2", "gpt2", FP16),
        "llama": write_hf_model(root / "llama", "llama", BF16),
        "gpt2_rm": write_hf_model(root / "gpt2_rm", "gpt2", FP16, seq_cls=True, seed=1),
        "qwen2": write_hf_model(root / "qwen2", "qwen2", BF16),
        "qwen2_rm": write_hf_model(root / "qwen2_rm", "qwen2", FP16, seq_cls=True, seed=2),
    }


@pytest.fixture(scope="module")
def rm_exports(hf, tmp_path_factory):
    """Normalised reward-model exports of ours built on the gpt2 checkpoint: one in the default prompt format, one
    recording a different text template."""
    root = tmp_path_factory.mktemp("real_ckpt_rm")
    tok = load_tokenizer(str(hf["gpt2"]))
    rm = RewardModel.from_causal_lm(str(hf["gpt2"]), tok)
    rm.reward_shift = 0.1
    rm.normalization = {"shift": 0.1, "rows": 0}
    save_export(rm, tok, root / "rm", {"stage": "reward", "normalization": rm.normalization})
    save_export(rm, tok, root / "rm_qa", {"stage": "reward", "normalization": rm.normalization,
                                         "prompt_format": {"kind": "prompt_template", "template": QA_TEMPLATE}})
    return {"default": root / "rm", "qa": root / "rm_qa"}


def trainer(tmp_path, steps=1, **kwargs):
    args = dict(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                default_root_dir=tmp_path)
    return quiet_trainer(**{**args, **kwargs})


def sft_data(files, **kwargs):
    return SFTDataModule(**{"train_file": files["sft"], "val_fraction": 0.25, "batch_size": 4, "max_length": 64, **kwargs})


def reward_data(files, **kwargs):
    args = dict(train_file=files["rank"], val_fraction=0.25, batch_size=4, max_length=64, demonstrations_file=None)
    return RewardDataModule(**{**args, **kwargs})


def ppo(policy, rm, tmp_path, **kwargs):
    args = dict(policy_name_or_path=str(policy), reward_model_path=str(rm), sampling={"max_new_tokens": 8},
                ppo={"minibatch_size": 4}, ptx={"examples_per_episode": 1}, num_sample_prompts=0, warmup_steps=0,
                export_dir=str(tmp_path / "ppo_export"),
                optimizer=lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-5))
    return PPOModule(**{**args, **kwargs})


def ppo_data(files, **kwargs):
    args = dict(prompts_file=files["prompts"], pretrain_file=files["pretrain"], pretrain_val_fraction=0.3, val_fraction=0.2,
                rollout_batch_size=8, max_prompt_tokens=48, max_val_prompts=4, val_batch_size=4, ptx_block_size=32,
                max_val_pretrain_blocks=4)
    return PPODataModule(**{**args, **kwargs})


def all_train(module: torch.nn.Module) -> bool:
    return all(m.training for m in module.modules())


def all_eval(module: torch.nn.Module) -> bool:
    return not any(m.training for m in module.modules())


class ModeProbe(L.Callback):
    """At every training step: is ``pl_module.<attr>`` (every submodule) in train mode, and do two forwards of the
    step's batch differ (dropout live)?"""

    def __init__(self, attr: str, forward) -> None:
        self.attr, self.forward = attr, forward
        self.modes: list[bool] = []
        self.differ: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append(all_train(getattr(pl_module, self.attr)))
        with torch.no_grad():
            self.differ.append(not torch.equal(self.forward(pl_module, batch), self.forward(pl_module, batch)))


def lm_forward(module, batch):
    return module(batch["input_ids"], batch["attention_mask"])


def rm_forward(module, batch):
    return module.rewards(batch)


def safetensors_dtypes(directory: Path) -> set:
    dtypes = set()
    for file in Path(directory).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return dtypes


# ---------------------------------------------------------------------------------------------- 1. train / eval modes


def test_sft_and_reward_train_in_train_mode_from_a_hub_checkpoint(hf, files, tmp_path):
    """``from_pretrained`` returns eval mode and Lightning 2.6 no longer calls ``.train()``: the stage must."""
    sft = SFTModule(model_name_or_path=str(hf["gpt2"]), residual_dropout=0.2, num_sample_prompts=0,
                    export_dir=str(tmp_path / "sft"))
    probe = ModeProbe("model", lm_forward)
    trainer(tmp_path, 2, callbacks=[probe]).fit(sft, sft_data(files))
    assert probe.modes == [True, True], "SFT trained a model that was (partly) in eval mode"
    assert probe.differ == [True, True], "residual dropout 0.2 was not live during SFT training steps"

    reward = RewardModule(model_name_or_path=str(hf["gpt2"]), residual_dropout=0.2, export_dir=str(tmp_path / "rm"))
    probe = ModeProbe("reward_model", rm_forward)
    trainer(tmp_path, 2, callbacks=[probe]).fit(reward, reward_data(files))
    assert probe.modes == [True, True], "the reward stage trained a model that was (partly) in eval mode"
    assert probe.differ == [True, True], "residual dropout 0.2 was not live during reward training steps"


def test_ppo_updates_in_train_mode_and_frozen_models_stay_in_eval(hf, rm_exports, files, tmp_path):
    module = ppo(hf["gpt2"], rm_exports["default"], tmp_path)
    calls = {name: [] for name in ("policy", "critic", "ref", "rm")}
    watched = {"policy": module.policy, "critic": module.critic.backbone, "ref": module.reference, "rm": module.reward_model.backbone}

    def record(name):
        return lambda m, args, out: calls[name].append((all_train(m), all_eval(m), torch.is_grad_enabled()))

    handles = [m.register_forward_hook(record(name)) for name, m in watched.items()]
    trainer(tmp_path, 1).fit(module, ppo_data(files))
    for h in handles:
        h.remove()
    for name in ("policy", "critic"):
        update = [c for c in calls[name] if c[2]]
        assert update, f"no gradient-building forward of the {name}"
        assert all(train for train, _, _ in update), f"the {name} ran update forwards in eval mode"
    for name in ("ref", "rm"):
        assert calls[name] and all(evaluating for _, evaluating, _ in calls[name]), f"the frozen {name} ran in train mode"
        assert not any(grad for _, _, grad in calls[name]), f"the frozen {name} ran with gradients on"


# ---------------------------------------------------------------------------------------------- 2. dtypes


def test_fp16_checkpoints_load_as_fp32_masters(hf, tmp_path):
    sft = SFTModule(model_name_or_path=str(hf["gpt2"]), num_sample_prompts=0)
    assert {p.dtype for p in sft.model.parameters()} == {torch.float32}
    reward = RewardModule(model_name_or_path=str(hf["gpt2"]))
    assert {p.dtype for p in reward.reward_model.parameters()} == {torch.float32}
    module = ppo(hf["gpt2"], hf["gpt2_rm"], tmp_path, critic_name_or_path=str(hf["gpt2_rm"]), require_reward_normalization=False)
    assert {p.dtype for m in (module.policy, module.critic) for p in m.parameters()} == {torch.float32}


def test_bf16_reward_export_scores_and_keeps_the_exact_shift(hf, tmp_path):
    shift = 0.123456789  # not a bf16 number (bf16 would round it to 0.12353515625)
    module = RewardModule(model_name_or_path=str(hf["gpt2"]), export_dtype="bfloat16")
    module.reward_model.reward_shift = shift
    module.reward_model.normalization = {"shift": shift, "raw_mean": -shift, "rows": 3}
    out = module.export(tmp_path / "rm_bf16")
    assert safetensors_dtypes(out) == {"BF16"}
    rm = RewardModel.from_pretrained(out, dtype="bfloat16")
    assert {p.dtype for p in rm.backbone.parameters()} == {BF16}
    assert isinstance(rm.reward_shift, float) and rm.reward_shift == shift
    scores = rm.score(["Say hi", "Name a colour"], ["hi", "green"])  # raised "mat1 and mat2 must have the same dtype"
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_bf16_mixed_step_with_a_tiny_lr_moves_the_fp32_weights(hf, files, tmp_path):
    lr = 1e-5  # below fp16's rounding step of 1.0 (~1e-3) and of most weights: lost if the weights were fp16
    module = SFTModule(model_name_or_path=str(hf["gpt2"]), num_sample_prompts=0, export_dir=str(tmp_path / "sft"),
                       optimizer=lambda p: torch.optim.AdamW(p, lr=lr, betas=(0.9, 0.95), weight_decay=0.0))
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    trainer(tmp_path, 1, precision="bf16-mixed").fit(module, sft_data(files))
    after = dict(module.model.named_parameters())
    assert {p.dtype for p in after.values()} == {torch.float32}
    # Embedding rows of tokens absent from the batch get no gradient; every other weight does.
    delta = torch.cat([(after[k].detach() - before[k]).flatten() for k in before if "wte" not in k and "wpe" not in k])
    moved = delta != 0
    assert moved.float().mean() > 0.9, f"only {moved.float().mean():.1%} of the weights moved"
    step = delta[moved].abs().median()  # Adam's first step is lr per weight
    assert 0.5 * lr < step < 2 * lr, step


# ---------------------------------------------------------------------------------------------- 3. disable_dropout


@pytest.mark.parametrize("family", ["opt", "llama", "gpt_neox", "qwen2"])
def test_disable_dropout_disables_float_dropout(family):
    from transformers import AutoModelForCausalLM

    from lit_instruct.models import causal_lm as models

    tok = hf_models.build_tokenizer(family)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_models.build_config(family, tok, torch.float32)).float().train()
    ids = torch.arange(3, 35).unsqueeze(0)

    def two_forwards_agree() -> bool:
        with torch.no_grad():
            return torch.equal(model(ids).logits, model(ids).logits)

    assert not two_forwards_agree()  # dropout is live before
    models.disable_dropout(model)
    assert model.training
    assert two_forwards_agree(), f"{family}: dropout still live (in train mode) after disable_dropout"
    assert models.dropout_probabilities(model) == {}
    assert hf_models.dropout_fields(model.config) == {}


# ---------------------------------------------------------------------------------------------- 4. set_dropout on Llama


def test_zero_residual_dropout_is_a_no_op_on_llama(hf, tmp_path):
    from transformers import AutoConfig

    from lit_instruct.models.causal_lm import set_dropout
    from lit_instruct.tools.cli import LitInstructCLI

    config = AutoConfig.from_pretrained(hf["llama"])
    before = config.to_dict()
    set_dropout(config, 0.0)
    assert config.to_dict() == before
    with pytest.raises(ValueError, match="'llama'"):
        set_dropout(config, 0.2)

    cli = LitInstructCLI(args=["--config", str(CONFIGS / "sft" / "tiny.yaml"),
                               "--model.model_name_or_path", str(hf["llama"]), "--model.export_dir", str(tmp_path / "export"),
                               "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                               "--trainer.callbacks=lightning.pytorch.callbacks.LearningRateMonitor",
                               "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.hparams.residual_dropout == 0.0
    assert type(cli.model.model).__name__ == "LlamaForCausalLM"


# ---------------------------------------------------------------------------------------------- 5. normalisation format


def test_reward_normalisation_uses_the_data_prompt_template(files, tmp_path):
    torch.manual_seed(0)
    module = RewardModule(tiny=TINY, export_dir=str(tmp_path / "export"))
    data = reward_data(files, prompt_template=QA_TEMPLATE, demonstrations_file=files["sft"], normalization_rows=16)
    trainer(tmp_path, 1).fit(module, data)
    demos = data.demonstrations()
    prompts, responses = [p for p, _ in demos], [r for _, r in demos]
    rm = RewardModel.from_pretrained(tmp_path / "export")
    ours = rm.score([format_prompt(p, QA_TEMPLATE) for p in prompts], responses, prompts_are_formatted=True)
    assert abs(float(ours.double().mean())) < 1e-5, "the demonstrations do not average 0 in the data's format"
    default = rm.score([format_prompt(p, DEFAULT_TEMPLATE) for p in prompts], responses, prompts_are_formatted=True)
    assert abs(float(default.double().mean())) > 1e-4  # the test can tell the two formats apart
    meta = json.loads((tmp_path / "export" / "lit_instruct.json").read_text())
    raw = ours.double() - meta["normalization"]["shift"]
    assert meta["normalization"]["shift"] == pytest.approx(-float(raw.mean()), abs=1e-5)
    assert meta["prompt_format"] == {"kind": "prompt_template", "template": QA_TEMPLATE}
    assert rm.score(prompts, responses).double().mean().abs() < 1e-5  # the export formats them that way by itself


# ---------------------------------------------------------------------------------------------- 6. PPO format check


def test_ppo_refuses_a_reward_model_with_another_prompt_format(hf, rm_exports, files, tmp_path):
    steps = []

    class Steps(L.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    module = ppo(hf["gpt2"], rm_exports["qa"], tmp_path)
    with pytest.raises(ValueError, match=r"(?s)(Human: \{prompt\}.*Q: \{prompt\}|Q: \{prompt\}.*Human: \{prompt\})"):
        trainer(tmp_path, 1, callbacks=[Steps()]).fit(module, ppo_data(files))
    assert not steps and module.episodes == 0


# ---------------------------------------------------------------------------------------------- 7. EMA validation


def test_validation_measures_the_ema_policy(hf, rm_exports, files, tmp_path):
    module = ppo(hf["gpt2"], rm_exports["default"], tmp_path, ema_decay=0.5)  # 8 prompts, minibatches of 4: 2 EMA updates
    data = ppo_data(files)
    trainer(tmp_path, 1, max_steps=-1, max_epochs=1, limit_train_batches=1, limit_val_batches=1, val_check_interval=1).fit(module, data)
    logged = float(module.trainer.callback_metrics["val/pretrain_loss"])
    batch = next(iter(data.val_dataloader()[1]))  # the one held-out batch validation saw

    def loss_of(model):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return float(lm_loss(logits, batch["labels"]))

    ema, live = loss_of(module.ema.module), loss_of(module.policy)
    assert abs(ema - live) > 1e-4, "the EMA equals the live policy: the test cannot tell them apart"
    assert logged == pytest.approx(ema, abs=1e-5), f"logged {logged}, EMA {ema}, live policy {live}"
    assert module.evaluated_policy() is module.ema.module


# ---------------------------------------------------------------------------------------------- 8. bf16-true reward


def test_reward_stage_runs_in_bf16_true(files, tmp_path):
    module = RewardModule(tiny=TINY, export_dir=str(tmp_path / "export"))
    trainer(tmp_path, 2, precision="bf16-true", limit_val_batches=2, val_check_interval=2).fit(module, reward_data(files))
    metrics = module.trainer.callback_metrics
    assert "val/accuracy_k2" in metrics and "val/accuracy_k3" in metrics
    assert 0.0 <= float(metrics["val/accuracy_k2"]) <= 1.0


# ---------------------------------------------------------------------------------------------- 9. reward-model format


def test_reward_export_is_a_sequence_classification_model(hf, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    torch.manual_seed(0)
    rm = RewardModel.from_causal_lm("embedded", tokenizer, tiny=TINY).eval()
    rm.reward_shift = 0.25
    rm.normalization = {"shift": 0.25, "rows": 0}
    save_export(rm, tokenizer, tmp_path / "rm", {"stage": "reward", "normalization": rm.normalization})
    seq = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert seq.config.num_labels == 1 and seq.config.reward_normalization["shift"] == 0.25
    texts = ["Human: hi\n\nAssistant: hello there, friend", "Human: two\n\nAssistant: 2", "Human: yes?\n\nAssistant: no"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        ours, theirs = rm(ids, mask), seq(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert torch.allclose(theirs + seq.config.reward_normalization["shift"], ours, atol=1e-5)

    # A family whose tokenizer pads with its EOS: the export leaves pad_token_id unset; single sequences score right.
    gpt2_tok = load_tokenizer(str(hf["gpt2"]))
    assert gpt2_tok.pad_token_id == gpt2_tok.eos_token_id
    rm = RewardModel.from_causal_lm(str(hf["gpt2"]), gpt2_tok).eval()
    rm.reward_shift = -0.5
    rm.normalization = {"shift": -0.5, "rows": 0}
    save_export(rm, gpt2_tok, tmp_path / "rm_gpt2", {"stage": "reward", "normalization": rm.normalization})
    seq = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm_gpt2").eval()
    assert seq.config.pad_token_id is None
    one = torch.tensor([gpt2_tok(texts[0], add_special_tokens=False)["input_ids"] + [gpt2_tok.eos_token_id]])
    with torch.no_grad():
        ours, theirs = rm(one, torch.ones_like(one)), seq(input_ids=one).logits[:, 0]
    assert torch.allclose(theirs - 0.5, ours, atol=1e-5)


def test_trl_style_sequence_classification_reward_models_are_accepted(hf, tmp_path):
    path = hf["qwen2_rm"]
    stored = load_file(path / "model.safetensors")["score.weight"].float()

    with pytest.raises(ValueError, match="no normalisation"):
        RewardModel.from_pretrained(path)
    rm = RewardModel.from_pretrained(path, require_normalization=False)
    assert rm.reward_shift == 0.0 and torch.equal(rm.head.weight.detach(), stored)
    assert rm.score(["Say hi"], ["hi"]).shape == (1,)

    module = RewardModule(model_name_or_path=str(path))
    assert torch.equal(module.reward_model.head.weight.detach(), stored), "the directory's score head was replaced"

    # PPO with a policy of the same family and tokenizer, the directory as reward model and critic.
    module = ppo(hf["qwen2"], path, tmp_path, critic_name_or_path=str(path), require_reward_normalization=False)
    assert torch.equal(module.reward_model.head.weight.detach(), stored) and module.reward_model.reward_shift == 0.0
    assert torch.equal(module.critic.head.weight.detach(), stored)
    with pytest.raises(ValueError, match="require_reward_normalization"):
        ppo(hf["qwen2"], path, tmp_path, critic_name_or_path=str(path))


# ---------------------------------------------------------------------------------------------- 10. export dtype


def test_export_in_the_asked_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    module = SFTModule(tiny=TINY, num_sample_prompts=0, export_dtype="bfloat16")
    out = module.export(tmp_path / "export")
    assert safetensors_dtypes(out) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {BF16}
    for name, p in module.model.state_dict().items():  # the weights are the model's, rounded to bf16
        assert torch.equal(model.state_dict()[name], p.to(BF16)), name


def test_reward_exports_of_the_earlier_format_still_load(tokenizer, tmp_path):
    """Before the sequence-classification format an export was the backbone (``AutoModel``) plus
    ``reward_head.safetensors`` (head weight and bias, and the shift as a tensor). Such exports still load and score
    the same: the head's bias joins the shift."""
    from safetensors.torch import save_file
    from transformers import GPT2Model

    from lit_instruct.models.causal_lm import embedded_config
    from lit_instruct.models.reward_model import LEGACY_HEAD_FILE

    torch.manual_seed(0)
    backbone = GPT2Model(embedded_config(tokenizer))
    backbone.save_pretrained(tmp_path / "old")
    tokenizer.save_pretrained(tmp_path / "old")
    weight, bias, shift = torch.randn(1, backbone.config.hidden_size), torch.tensor([0.25]), torch.tensor(-0.5)
    save_file({"head.weight": weight, "head.bias": bias, "reward_shift": shift}, tmp_path / "old" / LEGACY_HEAD_FILE)
    (tmp_path / "old" / "lit_instruct.json").write_text(json.dumps({"stage": "reward", "normalization": {"shift": -0.5, "rows": 4}}))
    rm = RewardModel.from_pretrained(tmp_path / "old")
    assert rm.reward_shift == pytest.approx(-0.25)
    ids = torch.tensor([[5, 6, 7, tokenizer.eos_token_id]])
    with torch.no_grad():
        expected = (backbone.eval()(input_ids=ids).last_hidden_state[0, -1] @ weight[0]) + bias[0] + shift
        torch.testing.assert_close(rm(ids, torch.ones_like(ids))[0], expected, rtol=1e-5, atol=1e-5)
