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
from lit_instruct.objectives import better_pairs, last_index, ranking_loss  # noqa: E402


def reference_ranking_loss(rewards: list[list[float]], ranks: list[list[int]], keep=None) -> float:
    """Plain loop: per prompt, mean over non-tied ordered pairs (those with ``keep[b][i][j]``, when given) of
    -log sigmoid(r_better - r_worse); mean over prompts."""
    per_prompt = []
    for b, (r, rk) in enumerate(zip(rewards, ranks)):
        terms = []
        for i in range(len(r)):
            for j in range(len(r)):
                if rk[i] < rk[j] and (keep is None or keep[b][i][j]):
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


@pytest.mark.parametrize("seed", range(3))
def test_ranking_loss_with_a_pair_mask_equals_a_python_loop_over_the_kept_pairs(seed):
    rewards, ranks = random_groups(seed)
    R, K, M = grid(rewards, ranks)
    rng = torch.Generator().manual_seed(100 + seed)
    keep = torch.rand(R.shape[0], R.shape[1], R.shape[1], generator=rng) < 0.5
    for b, rk in enumerate(ranks):  # every prompt keeps at least one non-tied pair
        i, j = next((i, j) for i in range(len(rk)) for j in range(len(rk)) if rk[i] < rk[j])
        keep[b, i, j] = True
    keep_lists = keep.tolist()
    out = ranking_loss(R, K, M, keep)
    assert math.isclose(float(out["loss"]), reference_ranking_loss(rewards, ranks, keep_lists), rel_tol=1e-6)
    kept = [(b, i, j) for b, rk in enumerate(ranks) for i in range(len(rk)) for j in range(len(rk)) if rk[i] < rk[j] and keep_lists[b][i][j]]
    assert sorted(out["pair_margin"].tolist()) == pytest.approx(sorted(rewards[b][i] - rewards[b][j] for b, i, j in kept))
    assert not math.isclose(float(out["loss"]), reference_ranking_loss(rewards, ranks), rel_tol=1e-6)  # the mask mattered


def test_ranking_loss_refuses_a_prompt_whose_pairs_are_all_masked():
    with pytest.raises(ValueError, match="no non-tied pair"):
        ranking_loss(torch.zeros(1, 2), torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool))


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


def test_last_index_handles_either_padding_side():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert last_index(right).tolist() == [2, 3]
    assert last_index(left).tolist() == [3, 3]


# ---------------------------------------------------------------- PPO-ptx: rewards, advantages, losses, the KL controller
from lit_instruct.objectives import (  # noqa: E402
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logprobs,
    explained_variance,
    gae,
    kl_penalized_rewards,
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


# ====================================================================== over-optimisation (Gao et al. 2022)
import itertools  # noqa: E402

import numpy as np  # noqa: E402

from lit_instruct.objectives import (  # noqa: E402
    best_of_n_expected,
    fit_best_of_n,
    fit_rl,
    kl_best_of_n,
)


def brute_force_best_of_n(scores: list[float], n: int) -> float:
    """The mean over every n-subset of the k samples of the subset's max."""
    subsets = list(itertools.combinations(scores, n))
    return sum(max(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_best_of_n_estimator_equals_the_mean_max_over_all_n_subsets(k):
    torch.manual_seed(k)
    scores = torch.randn(4, k, dtype=torch.float64)
    scores[0, : k // 2] = 0.25  # ties
    for n in range(1, k + 1):
        expected = torch.tensor([brute_force_best_of_n(row.tolist(), n) for row in scores], dtype=torch.float64)
        torch.testing.assert_close(best_of_n_expected(scores, n), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_best_of_n_by_a_proxy_scored_by_gold_equals_brute_force(k):
    """Gao et al.'s best-of-n: the proxy picks, the gold model scores the pick; mean over every n-subset."""
    torch.manual_seed(10 + k)
    proxy, gold = torch.randn(5, k, dtype=torch.float64), torch.randn(5, k, dtype=torch.float64)
    proxy[0, : (k + 1) // 2] = 0.5  # proxy ties: the first sample of equals is picked
    for n in range(1, k + 1):
        expected = []
        for p_row, g_row in zip(proxy.tolist(), gold.tolist()):
            subsets = list(itertools.combinations(range(k), n))
            expected.append(sum(g_row[max(s, key=lambda i: p_row[i])] for s in subsets) / len(subsets))
        torch.testing.assert_close(best_of_n_expected(gold, n, key=proxy), torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(best_of_n_expected(gold, k, key=gold), best_of_n_expected(gold, k))  # its own key
    torch.testing.assert_close(best_of_n_expected(gold, 1, key=proxy), gold.mean(-1))  # n = 1: no selection
    with pytest.raises(ValueError, match="key has shape"):
        best_of_n_expected(gold, 1, key=proxy[:2])


def test_best_of_n_estimator_invariances_and_its_ends():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 7, dtype=torch.float64)  # any leading shape: (prompts..., k)
    for n in (1, 3, 7):
        base = best_of_n_expected(scores, n)
        assert base.shape == (2, 3)
        torch.testing.assert_close(best_of_n_expected(scores[..., torch.randperm(7)], n), base)  # order of the samples
        torch.testing.assert_close(best_of_n_expected(scores + 2.5, n), base + 2.5)  # a shift moves it as much
        torch.testing.assert_close(best_of_n_expected(3.0 * scores, n), 3.0 * base)  # positive scale
    torch.testing.assert_close(best_of_n_expected(scores, 1), scores.mean(-1))
    torch.testing.assert_close(best_of_n_expected(scores, 7), scores.amax(-1))
    # more draws, a larger expected max; numpy in, same answer
    assert bool((best_of_n_expected(scores, 4) >= best_of_n_expected(scores, 3)).all())
    torch.testing.assert_close(best_of_n_expected(scores.numpy(), 4), best_of_n_expected(scores, 4))
    for bad in (0, 8, 2.0):
        with pytest.raises(ValueError, match="n must be an integer in"):
            best_of_n_expected(scores, bad)


def test_best_of_n_estimator_is_unbiased_for_a_known_distribution():
    """E[max of n uniforms on [0, 1]] = n / (n + 1): the estimator's mean over many prompts lands on it."""
    scores = torch.rand(20000, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for n in (1, 2, 4, 8):
        assert abs(float(best_of_n_expected(scores, n).mean()) - n / (n + 1)) < 0.005


def test_kl_of_best_of_n():
    assert kl_best_of_n(1) == 0.0
    assert math.isclose(kl_best_of_n(2), math.log(2) - 0.5)
    assert math.isclose(kl_best_of_n(16), math.log(16) - 15 / 16)
    ns = torch.tensor([1, 2, 4, 16, 1024])
    torch.testing.assert_close(kl_best_of_n(ns), torch.tensor([kl_best_of_n(int(n)) for n in ns], dtype=torch.float64))
    assert bool((kl_best_of_n(ns).diff() > 0).all())  # more samples, further from the initial policy
    with pytest.raises(ValueError):
        kl_best_of_n(0)


def test_fits_recover_known_coefficients_and_peaks():
    d = np.linspace(0.05, 6.0, 40)
    a, b = 1.3, 0.4
    bon = fit_best_of_n(d, d * (a - b * d))
    assert math.isclose(bon.a, a, rel_tol=1e-9) and math.isclose(bon.b, b, rel_tol=1e-9)
    assert math.isclose(bon.d_peak, a / (2 * b)) and math.isclose(bon.kl_peak, (a / (2 * b)) ** 2)
    rl = fit_rl(torch.tensor(d), torch.tensor(d * (a - b * np.log(d))))
    assert math.isclose(rl.a, a, rel_tol=1e-9) and math.isclose(rl.b, b, rel_tol=1e-9)
    assert math.isclose(rl.d_peak, math.exp(a / b - 1)) and math.isclose(rl.kl_peak, math.exp(a / b - 1) ** 2)
    # the peaks are where the fitted curves are highest, on a fine grid
    grid = np.linspace(0.01, 40.0, 400001)
    assert abs(grid[np.argmax(grid * (bon.a - bon.b * grid))] - bon.d_peak) < 1e-3
    assert abs(grid[np.argmax(grid * (rl.a - rl.b * np.log(grid)))] - rl.d_peak) < 1e-3


def test_fits_with_mild_noise_and_their_refusals():
    rng = np.random.default_rng(0)
    d = np.linspace(0.1, 5.0, 200)
    noisy = fit_best_of_n(d, d * (1.0 - 0.25 * d) + rng.normal(0, 0.02, d.shape))
    assert abs(noisy.a - 1.0) < 0.02 and abs(noisy.b - 0.25) < 0.01 and abs(noisy.d_peak - 2.0) < 0.1
    noisy = fit_rl(d, d * (0.8 - 0.5 * np.log(d)) + rng.normal(0, 0.02, d.shape))
    assert abs(noisy.a - 0.8) < 0.02 and abs(noisy.b - 0.5) < 0.02 and abs(noisy.d_peak - math.exp(0.6)) < 0.1
    # a curve that never turns down has no peak
    assert fit_best_of_n(d, 0.7 * d + 0.1 * d * d).d_peak == math.inf
    with pytest.raises(ValueError, match="must be > 0"):
        fit_rl([0.0, 1.0, 2.0], [0.0, 1.0, 1.5])
    with pytest.raises(ValueError, match="at least 2"):
        fit_best_of_n([1.0], [0.5])


def test_the_warmup_cosine_schedule_is_transformers_own():
    """The SFT / reward schedule gives transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` numbers at every
    step (it is ours only so that importing lit_instruct does not import transformers' trainer, peft and bitsandbytes)."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    from lit_instruct.objectives import warmup_cosine_factor

    for warmup, total, ratio in ((0, 10, 0.0), (3, 20, 0.1), (5, 5, 0.5), (10, 7, 0.1)):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        theirs = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=ratio)
        for step in range(total + 3):
            assert warmup_cosine_factor(step, warmup, total, ratio) == pytest.approx(theirs.lr_lambdas[0](step), abs=1e-15)
    assert warmup_cosine_factor(0, 4, 10) == 0.0 and warmup_cosine_factor(4, 4, 10) == 1.0
    assert warmup_cosine_factor(10, 4, 10, 0.1) == pytest.approx(0.1)  # the floor at the end
