"""The pure math, each against a plain reference loop and an invariance."""

import math

import torch

from lit_instruct.objectives import IGNORE_INDEX, lm_loss, token_logprobs


def reference_lm_loss(logits, labels):
    """Plain loop: mean over labelled positions j>0 of -log softmax(logits[j-1])[labels[j]]."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for j in range(1, labels.shape[1]):
            y = int(labels[b, j])
            if y == IGNORE_INDEX:
                continue
            row = logits[b, j - 1].tolist()
            log_z = math.log(sum(math.exp(x) for x in row))
            total += log_z - row[y]
            count += 1
    return total / count


def test_lm_loss_equals_hand_computation_over_response_tokens_with_padding():
    torch.manual_seed(1)
    b, t, v = 3, 7, 11
    logits = torch.randn(b, t, v, dtype=torch.float64)
    ids = torch.randint(0, v, (b, t))
    labels = ids.clone()
    labels[0, :3] = IGNORE_INDEX  # prompt of 3 tokens
    labels[1, :2] = IGNORE_INDEX
    labels[1, 5:] = IGNORE_INDEX  # right padding
    labels[2, :5] = IGNORE_INDEX
    expected = reference_lm_loss(logits, labels)
    assert math.isclose(float(lm_loss(logits, labels)), expected, rel_tol=1e-6)


def test_lm_loss_ignores_what_happens_on_unlabelled_positions():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 9)
    labels = torch.randint(0, 9, (2, 6))
    labels[:, :2] = IGNORE_INDEX
    base = lm_loss(logits, labels)
    # Changing the logits that predict unlabelled positions (position 0 predicts label 1) changes nothing.
    changed = logits.clone()
    changed[:, 0] += torch.randn(2, 9) * 5
    assert torch.allclose(lm_loss(changed, labels), base)
    # Softmax is shift-invariant: adding a constant per position leaves every log-prob unchanged.
    shifted = logits + torch.randn(2, 6, 1) * 3
    assert torch.allclose(lm_loss(shifted, labels), base, atol=1e-5)


def test_token_logprobs_are_zero_where_ignored_and_match_log_softmax():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, 4]])
    out = token_logprobs(logits, labels)
    ls = torch.log_softmax(logits, -1)
    assert out.shape == (1, 3)
    assert torch.allclose(out[0], torch.stack([ls[0, 0, 2], torch.tensor(0.0), ls[0, 2, 4]]))
