"""The pure math, each against a plain reference loop and an invariance."""

import math

import pytest
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


# ---------------------------------------------------------------- ranking loss
from lit_instruct.objectives import better_pairs, ranking_loss  # noqa: E402


def reference_ranking_loss(rewards: list[list[float]], ranks: list[list[int]]) -> float:
    """Plain loop: per prompt, mean over non-tied ordered pairs of -log sigmoid(r_better - r_worse); mean over prompts."""
    per_prompt = []
    for r, rk in zip(rewards, ranks):
        terms = []
        for i in range(len(r)):
            for j in range(len(r)):
                if rk[i] < rk[j]:
                    terms.append(-math.log(1 / (1 + math.exp(-(r[i] - r[j])))))
        per_prompt.append(sum(terms) / len(terms))
    return sum(per_prompt) / len(per_prompt)


def grid(rewards, ranks):
    k = max(len(r) for r in rewards)
    R = torch.zeros(len(rewards), k, dtype=torch.float64)
    K = torch.zeros(len(rewards), k, dtype=torch.long)
    M = torch.zeros(len(rewards), k, dtype=torch.bool)
    for b, (r, rk) in enumerate(zip(rewards, ranks)):
        R[b, : len(r)] = torch.tensor(r, dtype=torch.float64)
        K[b, : len(r)] = torch.tensor(rk)
        M[b, : len(r)] = True
    R[~M] = 123.0  # padding slots hold garbage that must not matter
    return R, K, M


def random_groups(seed, n=12):
    rng = torch.Generator().manual_seed(seed)
    rewards, ranks = [], []
    while len(rewards) < n:
        k = int(torch.randint(2, 10, (1,), generator=rng))
        rk = torch.randint(0, max(2, k - 2), (k,), generator=rng).tolist()  # ties likely
        if len(set(rk)) == 1:
            continue
        rewards.append((torch.randn(k, generator=rng) * 2).tolist())
        ranks.append(rk)
    return rewards, ranks


@pytest.mark.parametrize("seed", range(5))
def test_ranking_loss_equals_a_python_loop_over_all_pairs(seed):
    rewards, ranks = random_groups(seed)
    R, K, M = grid(rewards, ranks)
    out = ranking_loss(R, K, M)
    assert math.isclose(float(out["loss"]), reference_ranking_loss(rewards, ranks), rel_tol=1e-6)
    n_pairs = sum(ri < rj for rk in ranks for ri in rk for rj in rk)
    assert out["pair_margin"].numel() == n_pairs
    assert sorted(out["pair_k"].tolist()) == sorted(len(rk) for rk in ranks for ri in rk for rj in rk if ri < rj)


def test_ranking_loss_k2_is_logsigmoid_of_the_margin():
    r_w, r_l = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    R = torch.stack([r_w, r_l], 1)
    K = torch.tensor([[0, 1]] * 6)
    out = ranking_loss(R, K, torch.ones(6, 2, dtype=torch.bool))
    assert torch.allclose(out["loss"].double(), -torch.nn.functional.logsigmoid(r_w - r_l).mean(), atol=1e-6)


def test_ranking_loss_is_invariant_to_a_constant_and_ignores_ties():
    rewards, ranks = random_groups(7)
    R, K, M = grid(rewards, ranks)
    base = ranking_loss(R, K, M)["loss"]
    assert torch.allclose(ranking_loss(R + 3.7, K, M)["loss"], base, atol=1e-6)
    # A tied pair contributes nothing: [0, 1, 1] equals the mean of the two real comparisons.
    R3 = torch.tensor([[0.3, -0.2, 1.5]], dtype=torch.float64)
    tied = ranking_loss(R3, torch.tensor([[0, 1, 1]]), torch.ones(1, 3, dtype=torch.bool))["loss"]
    expected = -(torch.nn.functional.logsigmoid(R3[0, 0] - R3[0, 1]) + torch.nn.functional.logsigmoid(R3[0, 0] - R3[0, 2])) / 2
    assert torch.allclose(tied.double(), expected, atol=1e-6)
    # Moving the two tied completions' rewards apart, keeping their comparisons with the winner, changes nothing.
    both = ranking_loss(torch.tensor([[0.3, 1.5, -0.2]], dtype=torch.float64), torch.tensor([[0, 1, 1]]), torch.ones(1, 3, dtype=torch.bool))["loss"]
    assert torch.allclose(both, tied)


def test_ranking_loss_refuses_a_prompt_with_only_ties():
    with pytest.raises(ValueError, match="no non-tied pair"):
        ranking_loss(torch.zeros(1, 3), torch.tensor([[1, 1, 1]]), torch.ones(1, 3, dtype=torch.bool))


def test_better_pairs_ignore_padding():
    pairs = better_pairs(torch.tensor([[0, 1, 0]]), torch.tensor([[True, True, False]]))
    assert pairs.sum() == 1 and pairs[0, 0, 1]
