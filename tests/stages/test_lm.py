"""The LM stage's options (pretrain and SFT share them): any optimizer a config names, gradient checkpointing."""

import pytest
import torch
from helpers import quiet_trainer

from lit_instruct import SFTDataModule, SFTModule


def test_bitsandbytes_8bit_adamw_is_selectable(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    module = SFTModule(optimizer=lambda p: bnb.optim.AdamW8bit(p, lr=1e-3, betas=(0.9, 0.95)))
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, enable_checkpointing=False, default_root_dir=tmp_path)
    before = module.model.transformer.wte.weight.detach().clone()
    trainer.fit(module, SFTDataModule(batch_size=2, max_length=64))
    assert isinstance(trainer.optimizers[0], bnb.optim.AdamW8bit)
    assert not torch.equal(before, module.model.transformer.wte.weight)


def test_gradient_checkpointing_trains_the_same_step(tmp_path):
    """Recomputing activations changes memory, not results: one step with and without gives the same weights."""
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = SFTModule(gradient_checkpointing=checkpointing, num_sample_prompts=0)
        trainer = quiet_trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False, default_root_dir=tmp_path)
        trainer.fit(module, SFTDataModule(batch_size=2, max_length=64))
        assert module.model.is_gradient_checkpointing == checkpointing
        results.append(module.model.transformer.h[0].mlp.c_fc.weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)
