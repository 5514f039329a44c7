"""Runs of one cell at several seeds as a mean and a 95% Student-t interval (lit_instruct.tools.aggregate)."""

import math
import random

import pytest

from lit_instruct.tools.aggregate import (
    cell_aggregates,
    mean_ci,
    metric_names,
    repeated_seeds,
    t_quantile,
)


def test_t_quantiles_are_the_textbook_values():
    textbook = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042,
                40: 2.021, 60: 2.000, 120: 1.980}
    for df, value in textbook.items():
        assert t_quantile(df) == pytest.approx(value, abs=6e-4), df
    assert t_quantile(10 ** 6) == pytest.approx(1.959964, abs=1e-5)  # the normal quantile in the limit
    with pytest.raises(ValueError):
        t_quantile(0)


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 45), 60, 100, 1000]:
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6), df


def test_mean_ci_by_hand():
    """1, 2, 4: mean 7/3, s = sqrt(7/3), half-width t(0.975, 2) * s / sqrt(3) = 4.302653 * 1.527525 / 1.732051."""
    stats = mean_ci([1.0, 2.0, 4.0])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(7 / 3)
    assert stats["sd"] == pytest.approx(math.sqrt(7 / 3))
    assert stats["half_width"] == pytest.approx(3.794583, abs=1e-6)
    assert (stats["low"], stats["high"]) == pytest.approx((7 / 3 - 3.794583, 7 / 3 + 3.794583), abs=1e-6)
    scipy_stats = pytest.importorskip("scipy.stats")
    low, high = scipy_stats.t.interval(0.95, 2, loc=7 / 3, scale=scipy_stats.sem([1.0, 2.0, 4.0]))
    assert (stats["low"], stats["high"]) == pytest.approx((low, high), abs=1e-6)


def test_one_seed_gives_the_mean_and_no_interval():
    assert mean_ci([0.25]) == {"n": 1, "mean": 0.25, "sd": None, "half_width": None, "low": None, "high": None}
    assert mean_ci([0.25, 0.25])["half_width"] == 0.0  # two equal runs: a zero-width interval, not none
    with pytest.raises(ValueError):
        mean_ci([])


def rows_of(cells: dict[tuple[float, float], list[int]], seed=0) -> list[dict]:
    rng = random.Random(seed)
    return [{"run": f"{kl}-{ptx}-{s}", "seed": s, "kl_coef": kl, "ptx_coef": ptx, "adaptive_kl": False,
             "score": rng.gauss(0, 1), "pretrain_loss": rng.uniform(6, 7), "judge_score": rng.random(), "episodes": 960}
            for (kl, ptx), seeds in cells.items() for s in seeds]


def test_aggregates_group_by_cell_over_whatever_metrics_the_rows_have():
    rows = rows_of({(0.02, 0.0): [1, 2, 3], (0.02, 1.0): [1, 2], (0.2, 0.0): [7]})
    rows[0]["eos_fraction"] = 0.5  # a metric only one run has
    assert metric_names(rows, ("kl_coef", "ptx_coef")) == ["score", "pretrain_loss", "judge_score", "eos_fraction"]
    cells = cell_aggregates(rows)
    assert [(c["kl_coef"], c["ptx_coef"], c["n"], c["seeds"]) for c in cells] == [
        (0.02, 0.0, 3, [1, 2, 3]), (0.02, 1.0, 2, [1, 2]), (0.2, 0.0, 1, [7])]
    first = cells[0]["metrics"]
    assert set(first) == {"score", "pretrain_loss", "judge_score", "eos_fraction"}
    assert first["judge_score"] == mean_ci([r["judge_score"] for r in rows[:3]])
    assert first["eos_fraction"]["n"] == 1 and first["eos_fraction"]["half_width"] is None
    assert cells[2]["metrics"]["score"]["half_width"] is None  # one seed: no interval
    assert set(cell_aggregates(rows, metrics=["score"])[0]["metrics"]) == {"score"}


def test_aggregates_do_not_depend_on_the_order_of_runs_or_seeds():
    rows = rows_of({(0.002, 0.0): [1, 2, 3, 4], (0.002, 27.8): [5, 6, 7], (0.2, 1.0): [1]})
    expected = cell_aggregates(rows)
    rng = random.Random(1)
    for _ in range(5):
        shuffled = rows[:]
        rng.shuffle(shuffled)
        assert cell_aggregates(shuffled) == expected
    # relabelling the seeds of a cell (same values, other seed numbers) leaves its numbers as they are
    relabelled = [dict(r, seed=10 - r["seed"]) for r in rows]
    assert [c["metrics"] for c in cell_aggregates(relabelled)] == [c["metrics"] for c in expected]


def test_repeated_seeds_are_found():
    cells = cell_aggregates(rows_of({(0.02, 0.0): [1234, 1234], (0.02, 1.0): [1, 2], (0.2, 0.0): [None, None]}))
    assert [(c["kl_coef"], c["ptx_coef"]) for c in repeated_seeds(cells)] == [(0.02, 0.0)]
