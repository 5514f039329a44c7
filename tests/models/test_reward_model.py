"""RewardModel: the reward read at the EOS whatever the padding side; an export without normalisation is refused."""

import pytest
import torch

from lit_instruct.models.export import save_export
from lit_instruct.models.reward_model import RewardModel


def test_reward_is_the_same_with_left_or_right_padding(tokenizer):
    rm = RewardModel.from_causal_lm("embedded", tokenizer).eval()
    ids = tokenizer("Human: hi\n\nAssistant: hello")["input_ids"]
    short = ids[:4]
    right = torch.tensor([ids, short + [0] * (len(ids) - 4)])
    right_mask = torch.tensor([[1] * len(ids), [1] * 4 + [0] * (len(ids) - 4)])
    left = torch.tensor([ids, [0] * (len(ids) - 4) + short])
    left_mask = right_mask.flip(-1)
    with torch.no_grad():
        a, b = rm(right, right_mask), rm(left, left_mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_unnormalised_export_is_refused(tmp_path, tokenizer):
    rm = RewardModel.from_causal_lm("embedded", tokenizer)
    save_export(rm, tokenizer, tmp_path / "rm", {"stage": "reward", "normalization": None})
    with pytest.raises(ValueError, match="has no normalisation"):
        RewardModel.from_pretrained(tmp_path / "rm")
    assert RewardModel.from_pretrained(tmp_path / "rm", require_normalization=False) is not None
