"""LoRA / QLoRA through peft: the reference is the base with adapters off, only adapters (and heads) train, exports merge
to the same logits and load without peft, adapters alone on request, a real architecture in bf16 and in 4 bits."""

import json

import pytest
import torch
from helpers import quiet_trainer, write_jsonl
from hf_models import write_hf_model
from transformers import AutoModelForCausalLM

from lit_instruct import (
    PPODataModule,
    PPOModule,
    RewardDataModule,
    RewardModel,
    RewardModule,
    SFTDataModule,
    SFTModule,
)
from lit_instruct.models.causal_lm import load_causal_lm, load_tokenizer
from lit_instruct.models.lora import AdaptersOff, LoraSettings
from lit_instruct.rollout import logprobs_from_logits, make_rollout, response_logits

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def perturb_adapters(model) -> None:
    """LoRA starts as a no-op (B = 0); give every B a value so that the adapters change the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)


def trained_names(before: dict, module, exact: bool = True) -> set[str]:
    """State-dict keys whose values moved; ``exact=False`` lets a value be rounded to bf16 (bitsandbytes casts a 4-bit
    layer's bias to its compute dtype in place at the first forward pass)."""
    after = module.state_dict()
    if exact:
        return {k for k in before if not torch.equal(before[k], after[k])}
    return {k for k in before if not torch.allclose(before[k].float(), after[k].float(), rtol=1e-2, atol=1e-5)}


def ppo(exports, **kwargs):
    args = dict(policy_name_or_path=str(exports / "sft"), reward_model_path=str(exports / "rm"), lora=LORA,
                sampling={"max_new_tokens": 6}, ppo={"minibatch_size": 4}, ptx={"examples_per_episode": 1},
                num_sample_prompts=0, warmup_steps=0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-5))
    return PPOModule(**{**args, **kwargs})


def ppo_data():
    return PPODataModule(rollout_batch_size=8, max_prompt_tokens=48, max_val_prompts=4, val_batch_size=4, ptx_block_size=32,
                         max_val_pretrain_blocks=4)


def test_lora_policy_reference_log_probs_equal_the_base_models(tiny_exports):
    module = ppo(tiny_exports)
    assert isinstance(module.reference, AdaptersOff) and module.reference.policy is module.policy  # no second copy
    assert not any(k.startswith("reference.") for k in module.state_dict())
    perturb_adapters(module.policy)
    base = load_causal_lm(str(tiny_exports / "sft"), module.tokenizer, trainable=False)
    prompts = [module.tokenizer(p)["input_ids"] for p in ("Hello there", "Write a poem about the sea", "Why?")]
    rollout, _ = make_rollout(prompts, policy=module.policy, reference=module.reference, reward_model=module.reward_model,
                              critic=None, tokenizer=module.tokenizer, max_new_tokens=6, temperature=1.0, top_k=0, top_p=1.0,
                              missing_eos_penalty=None)
    with torch.no_grad():  # what a separately loaded reference gives (the path without LoRA)
        expected = logprobs_from_logits(response_logits(base, rollout), rollout.response)
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(rollout.ref_logprobs[mask], expected[mask], rtol=0, atol=1e-5)
    assert (rollout.logprobs - rollout.ref_logprobs)[mask].abs().max() > 1e-3  # the adapters do change the policy


def test_lora_reference_refuses_another_checkpoint(tiny_exports):
    with pytest.raises(ValueError, match="reference_name_or_path.*adapters off"):
        ppo(tiny_exports, reference_name_or_path=str(tiny_exports / "rm"))


@pytest.mark.parametrize("quantize", [None, "4bit"])
def test_lora_ppo_trains_only_adapters_and_the_value_head_and_exports_merged(tiny_exports, tmp_path, quantize):
    module = ppo(tiny_exports, export_dir=str(tmp_path / "export"), lora={**vars(LORA), "quantize": quantize})
    if quantize:  # QLoRA: the policy's and the critic's frozen bases in 4 bits
        assert any(type(m).__name__ == "Linear4bit" for m in module.policy.modules())
        assert any(type(m).__name__ == "Linear4bit" for m in module.critic.backbone.modules())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, num_sanity_val_steps=0,
                  enable_checkpointing=False, default_root_dir=tmp_path).fit(module, ppo_data())
    changed = trained_names(before, module, exact=not quantize)
    assert any(k.startswith("policy.") for k in changed) and "critic.head.weight" in changed
    assert all("lora_" in k or k.startswith("critic.head.") for k in changed), sorted(changed)
    export = tmp_path / "export"
    assert not (export / "adapter_config.json").exists() and "quantization_config" not in json.loads((export / "config.json").read_text())
    assert json.loads((export / "lit_instruct.json").read_text())["lora"] == {"merged": True, "base": str(tiny_exports / "sft")}
    ids = torch.randint(0, len(module.tokenizer), (2, 12))
    module.policy.eval()
    with torch.no_grad():
        in_memory = module.policy(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(export)(input_ids=ids).logits  # plain transformers, no peft
    if quantize:  # the in-memory 4-bit layers compute in bf16
        assert (merged - in_memory).abs().max() < 0.05 * in_memory.abs().max()
    else:
        torch.testing.assert_close(merged, in_memory, rtol=0, atol=1e-4)


def test_lora_sft_exports_merged_weights_and_adapters_on_request(tmp_path):
    sft = dict(tiny={"n_layer": 1, "n_embd": 64, "n_head": 2, "n_positions": 128}, num_sample_prompts=0,
               optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    module = SFTModule(**sft, lora=LORA, export_dir=str(tmp_path / "merged"))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    quiet_trainer(max_steps=2, limit_val_batches=0, enable_checkpointing=False,
                  default_root_dir=tmp_path).fit(module, SFTDataModule(batch_size=4, max_length=64))
    changed = trained_names(before, module)
    assert changed and all("lora_" in k for k in changed)
    ids = torch.randint(0, len(module.tokenizer), (2, 12))
    module.model.eval()
    with torch.no_grad():
        in_memory = module.model(input_ids=ids).logits
        merged = load_causal_lm(str(tmp_path / "merged"), load_tokenizer(str(tmp_path / "merged")), trainable=False)
        torch.testing.assert_close(merged(input_ids=ids).logits, in_memory, rtol=0, atol=1e-4)
        with module.model.disable_adapter():
            assert (module.model(input_ids=ids).logits - in_memory).abs().max() > 1e-4  # training moved the adapters

    adapters = SFTModule(**sft, lora={**vars(LORA), "export_adapters": True})
    adapters.model.load_state_dict(module.model.state_dict())
    adapters.export(tmp_path / "adapters")
    meta = json.loads((tmp_path / "adapters" / "lit_instruct.json").read_text())
    assert meta["lora"] == {"merged": False, "base": "embedded"} and (tmp_path / "adapters" / "adapter_config.json").is_file()
    from peft import PeftModel

    base = SFTModule(**sft).model  # the embedded base, built from the same seed as the one trained
    base.load_state_dict({k.replace("base_model.model.", "").replace(".base_layer", ""): v
                          for k, v in module.model.state_dict().items() if "lora_" not in k})
    with torch.no_grad():
        reloaded = PeftModel.from_pretrained(base, tmp_path / "adapters").eval()(input_ids=ids).logits
    torch.testing.assert_close(reloaded, in_memory, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="adapters export"):
        load_causal_lm(str(tmp_path / "adapters"), module.tokenizer)


def test_lora_reward_model_trains_adapters_and_head_and_exports_merged(tiny_exports, tmp_path):
    rows = [{"prompt": f"p{i}", "completions": ["yes", "no", "maybe"], "ranking": [0, 2, 1]} for i in range(12)]
    data = RewardDataModule(train_file=write_jsonl(tmp_path / "r.jsonl", rows), val_fraction=0.25, demonstrations_file=None,
                            batch_size=4, max_length=64)
    module = RewardModule(str(tiny_exports / "sft"), lora=LORA, export_dir=str(tmp_path / "export"),
                          optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    quiet_trainer(max_steps=2, limit_val_batches=0, enable_checkpointing=False, default_root_dir=tmp_path).fit(module, data)
    changed = trained_names(before, module)
    assert "reward_model.head.weight" in changed and any("lora_" in k for k in changed)
    assert all("lora_" in k or k.startswith("reward_model.head.") for k in changed), sorted(changed)
    module.reward_model.eval()
    prompts, completions = ["Hello", "What is two plus two?"], ["Hi there.", "Four."]
    expected = module.reward_model.score(prompts, completions)
    exported = RewardModel.from_pretrained(tmp_path / "export", require_normalization=False)
    torch.testing.assert_close(exported.score(prompts, completions), expected, rtol=0, atol=1e-4)


def test_quantize_needs_a_hugging_face_model():
    with pytest.raises(ValueError, match="lora.quantize='4bit' needs a Hugging Face model"):
        SFTModule(lora=LoraSettings(quantize="4bit"))


@pytest.mark.parametrize("quantize", [None, "4bit"])
def test_llama_bf16_lora_and_qlora_merge_to_the_same_logits(tmp_path, quantize):
    path = write_hf_model(tmp_path / "llama", "llama", torch.bfloat16)
    module = SFTModule(str(path), load_dtype="bfloat16", export_dtype="bfloat16", num_sample_prompts=0,
                       lora=LoraSettings(r=4, alpha=8, dropout=0.0, quantize=quantize))
    assert {p.dtype for n, p in module.model.named_parameters() if "lora_" not in n} <= {torch.bfloat16, torch.float32, torch.uint8}
    if quantize:
        assert type(module.model.get_base_model().model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    perturb_adapters(module.model)
    module.model.eval()
    ids = torch.randint(0, len(module.tokenizer), (2, 10))
    with torch.no_grad():
        in_memory = module.model(input_ids=ids).logits.float()
        with module.model.disable_adapter():
            adapters_effect = (module.model(input_ids=ids).logits.float() - in_memory).abs().max()
    module.export(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    with torch.no_grad():
        out = merged(input_ids=ids).logits
    # bf16 weights (and, in 4 bits, bf16 compute on the dequantized weights) round differently from the merged matmul;
    # a merge that lost the adapters or misread the 4-bit weights is off by about the adapters' whole effect
    error = (out - in_memory).abs().max()
    assert error < 0.1 * in_memory.abs().max() and error < 0.1 * adapters_effect, (error, adapters_effect)


def test_lora_ppo_with_gradient_checkpointing_resumes_from_a_lightning_checkpoint(tiny_exports, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    settings = dict(limit_train_batches=1, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path)
    first = ppo(tiny_exports, lora={**vars(LORA), "r": 2}, ptx={"ptx_coef": 0.0},  # a dict, as a checkpoint holds it
                gradient_checkpointing=True)
    assert first.policy.is_gradient_checkpointing and first.critic.backbone.is_gradient_checkpointing
    quiet_trainer(max_epochs=1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)],
                  **settings).fit(first, ppo_data())
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    assert state["hyper_parameters"]["lora"]["r"] == 2 and not any(k.startswith("reference.") for k in state["state_dict"])
    adapters = {k: v for k, v in state["state_dict"].items() if "lora_B" in k}
    assert adapters and any(v.abs().sum() > 0 for v in adapters.values())
    resumed = ppo(tiny_exports, lora={**vars(LORA), "r": 2}, ptx={"ptx_coef": 0.0}, gradient_checkpointing=True)
    quiet_trainer(max_epochs=2, enable_checkpointing=False, **settings).fit(  # one more iteration
        resumed, ppo_data(), ckpt_path=tmp_path / "ck" / "last.ckpt")
    assert resumed.episodes == 16 and resumed.trainer.global_step > first.trainer.global_step
