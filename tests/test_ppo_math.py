"""PPO-ptx math: each function against a plain reference loop, plus an invariance."""

import math

import pytest
import torch

from lit_instruct.objectives import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logprobs,
    explained_variance,
    gae,
    kl_penalized_rewards,
    lm_loss,
    masked_whiten,
)


def random_mask(b, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    return (torch.arange(t)[None] < lengths[:, None]).float(), lengths.tolist()


def test_kl_penalized_rewards_match_a_loop():
    b, t, kl_coef = 4, 7, 0.05
    mask, lengths = random_mask(b, t)
    logp, ref, scores = torch.randn(b, t), torch.randn(b, t), torch.randn(b)
    rewards, kl = kl_penalized_rewards(logp, ref, scores, mask, kl_coef)
    for i in range(b):
        for j in range(t):
            expected = 0.0
            if j < lengths[i]:
                expected = -kl_coef * (logp[i, j] - ref[i, j])
                if j == lengths[i] - 1:
                    expected += scores[i]
            assert math.isclose(float(rewards[i, j]), float(expected), abs_tol=1e-6)
    assert torch.allclose(kl.sum(1), ((logp - ref) * mask).sum(1))


def reference_gae(rewards, values, length, discount, lam):
    adv = [0.0] * len(rewards)
    last = 0.0
    for t in reversed(range(length)):
        next_v = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + discount * next_v - values[t]
        last = delta + discount * lam * last
        adv[t] = last
    return adv


@pytest.mark.parametrize("discount, lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0)])
def test_gae_matches_a_loop(discount, lam):
    b, t = 5, 9
    mask, lengths = random_mask(b, t, seed=3)
    rewards, values = torch.randn(b, t) * mask, torch.randn(b, t)
    adv, ret = gae(rewards, values, mask, discount, lam)
    for i in range(b):
        expected = reference_gae(rewards[i].tolist(), values[i].tolist(), lengths[i], discount, lam)
        assert torch.allclose(adv[i], torch.tensor(expected), atol=1e-5)
        assert torch.allclose(ret[i, : lengths[i]], adv[i, : lengths[i]] + values[i, : lengths[i]], atol=1e-6)
        assert (adv[i, lengths[i]:] == 0).all()


def test_gae_with_lambda_one_and_no_discount_is_return_minus_value():
    mask, _ = random_mask(3, 6, seed=4)
    rewards, values = torch.randn(3, 6) * mask, torch.randn(3, 6)
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    reward_to_go = torch.flip(torch.cumsum(torch.flip(rewards, [1]), 1), [1])
    assert torch.allclose(adv, (reward_to_go - values) * mask, atol=1e-5)


def test_whitening_matches_a_loop_and_is_shift_and_scale_invariant():
    mask, _ = random_mask(4, 6, seed=5)
    x = torch.randn(4, 6) * 3 + 1
    out = masked_whiten(x, mask)
    vals = [float(x[i, j]) for i in range(4) for j in range(6) if mask[i, j]]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    for i in range(4):
        for j in range(6):
            expected = (float(x[i, j]) - mean) / std if mask[i, j] else 0.0
            assert math.isclose(float(out[i, j]), expected, abs_tol=1e-4)
    assert torch.allclose(masked_whiten(x * 5 + 7, mask), out, atol=1e-4)


def test_clipped_policy_loss_matches_a_loop():
    b, t, clip = 3, 5, 0.2
    mask, _ = random_mask(b, t, seed=6)
    logp, old, adv = torch.randn(b, t) * 0.3, torch.randn(b, t) * 0.3, torch.randn(b, t)
    out = clipped_policy_loss(logp, old, adv, mask, clip)
    terms, clipped, kls = [], [], []
    for i in range(b):
        for j in range(t):
            if mask[i, j]:
                r = math.exp(logp[i, j] - old[i, j])
                a = float(adv[i, j])
                unc, cl = -a * r, -a * min(max(r, 1 - clip), 1 + clip)
                terms.append(max(unc, cl))
                clipped.append(1.0 if cl > unc else 0.0)
                kls.append(0.5 * float(logp[i, j] - old[i, j]) ** 2)
    assert math.isclose(float(out["loss"]), sum(terms) / len(terms), rel_tol=1e-5)
    assert math.isclose(float(out["clipfrac"]), sum(clipped) / len(clipped), rel_tol=1e-6)
    assert math.isclose(float(out["approxkl"]), sum(kls) / len(kls), rel_tol=1e-5)


def test_policy_loss_at_the_old_policy_is_minus_the_mean_advantage_with_no_clipping():
    mask, _ = random_mask(3, 5, seed=7)
    logp, adv = torch.randn(3, 5), torch.randn(3, 5)
    out = clipped_policy_loss(logp, logp.clone(), adv, mask)
    assert torch.allclose(out["loss"], -(adv * mask).sum() / mask.sum(), atol=1e-6)
    assert float(out["clipfrac"]) == 0.0 and float(out["approxkl"]) == 0.0


def test_clipped_value_loss_matches_a_loop():
    b, t, clip = 3, 5, 0.2
    mask, _ = random_mask(b, t, seed=8)
    v, old, ret = torch.randn(b, t), torch.randn(b, t), torch.randn(b, t)
    out = clipped_value_loss(v, old, ret, mask, clip)
    terms, fracs = [], []
    for i in range(b):
        for j in range(t):
            if mask[i, j]:
                vc = float(old[i, j]) + min(max(float(v[i, j] - old[i, j]), -clip), clip)
                unc, cl = (float(v[i, j]) - float(ret[i, j])) ** 2, (vc - float(ret[i, j])) ** 2
                terms.append(max(unc, cl))
                fracs.append(1.0 if cl > unc else 0.0)
    assert math.isclose(float(out["loss"]), 0.5 * sum(terms) / len(terms), rel_tol=1e-5)
    assert math.isclose(float(out["clipfrac"]), sum(fracs) / len(fracs), rel_tol=1e-6)


def test_ptx_term_is_the_lm_loss_on_every_token():
    logits, ids = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert torch.allclose(lm_loss(logits, ids), expected, atol=1e-6)


def test_entropy_matches_a_loop_and_is_log_v_for_a_uniform_distribution():
    logp = torch.log_softmax(torch.randn(2, 3, 7), dim=-1)
    out = entropy_from_logprobs(logp)
    for i in range(2):
        for j in range(3):
            expected = -sum(math.exp(float(lp)) * float(lp) for lp in logp[i, j])
            assert math.isclose(float(out[i, j]), expected, rel_tol=1e-5)
    uniform = torch.full((4, 7), -math.log(7))
    assert torch.allclose(entropy_from_logprobs(uniform), torch.full((4,), math.log(7)))


def test_adaptive_kl_controller_matches_the_formula_and_clips_the_error():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    value = 0.1
    for kl, n in [(3.0, 512), (6.0, 512), (12.0, 512), (100.0, 256), (0.0, 1000)]:
        ctl.update(kl, n)
        error = min(max(kl / 6.0 - 1, -0.2), 0.2)
        value *= 1 + error * n / 10000
        assert math.isclose(ctl.value, value, rel_tol=1e-12)
    restored = AdaptiveKLController(0.5, 6.0, 10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_explained_variance_is_one_for_perfect_predictions():
    mask, _ = random_mask(3, 5, seed=9)
    target = torch.randn(3, 5)
    assert math.isclose(float(explained_variance(target, target, mask)), 1.0, abs_tol=1e-6)
