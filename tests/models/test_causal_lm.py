"""Backbones and tokenizers: the embedded default, and real loading code on directories the tests write."""

import pytest
import torch
from helpers import quiet_trainer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from lit_instruct import SFTDataModule, SFTModule
from lit_instruct.models.causal_lm import (
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
    train_embedded_tokenizer,
)


def test_embedded_tokenizer_is_deterministic(tokenizer):
    again = train_embedded_tokenizer(4096)
    text = "Human: What is the capital of France?\n\nAssistant: Paris."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert len(tokenizer) == 4096 and tokenizer.eos_token == "<|endoftext|>"


def save_hf_dir(path, arch, tokenizer):
    if arch == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
        )
        model = GPTNeoXForCausalLM(config)
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
        )
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_sft_trains_any_hf_causal_lm_from_a_directory(tmp_path, tokenizer, arch):
    source = save_hf_dir(tmp_path / "src", arch, tokenizer)
    module = SFTModule(model_name_or_path=str(tmp_path / "src"), export_dir=str(tmp_path / "export"), num_sample_prompts=1, sample_max_new_tokens=3)
    assert torch.equal(module.model.get_input_embeddings().weight, source.get_input_embeddings().weight)
    assert module.context_length == 128
    trainer = quiet_trainer(max_steps=3, limit_val_batches=1, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, SFTDataModule(batch_size=2))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert reloaded.config.model_type == arch
    assert not torch.equal(reloaded.get_input_embeddings().weight, source.get_input_embeddings().weight)


def test_residual_dropout_maps_to_each_architecture(tmp_path, tokenizer):
    save_hf_dir(tmp_path / "neox", "gpt_neox", tokenizer)
    model = load_causal_lm(str(tmp_path / "neox"), tokenizer, residual_dropout=0.2)
    assert model.config.hidden_dropout == 0.2
    disable_dropout(model)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    save_hf_dir(tmp_path / "llama", "llama", tokenizer)
    with pytest.raises(ValueError, match="cannot set residual dropout 0.2 on model type .llama.: this architecture has no residual dropout"):
        load_causal_lm(str(tmp_path / "llama"), tokenizer, residual_dropout=0.2)


def test_mismatched_tokenizer_is_refused(tmp_path, tokenizer):
    small = train_embedded_tokenizer(300)
    small.save_pretrained(tmp_path / "tok")
    save_hf_dir(tmp_path / "m", "llama", load_tokenizer(str(tmp_path / "tok")))
    with pytest.raises(ValueError, match="do not belong together"):
        load_causal_lm(str(tmp_path / "m"), tokenizer)


def test_tokenizer_without_pad_token_gets_eos(tmp_path):
    tok = train_embedded_tokenizer(300)
    tok.pad_token = None  # as GPT-2, Pythia and Llama-3 tokenizers ship
    tok.save_pretrained(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(tmp_path / "tok").pad_token is None
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.pad_token == loaded.eos_token
