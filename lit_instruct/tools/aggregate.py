"""Runs of the same cell (the same coefficients, different seeds) as one number each: the mean and its 95%
Student-t confidence interval, ``mean ± t_{0.975, n-1} · s / sqrt(n)`` with ``s`` the sample standard deviation.

Pure functions on plain rows (dicts), no torch, no scipy: the t quantiles are a table for 1-30 degrees of freedom
and the Cornish-Fisher expansion beyond (error under 1e-7 there). One run gives the mean and no interval: ``sd``,
``half_width``, ``low`` and ``high`` are ``None``, never a made-up width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

#: The interval's coverage; the quantile is t at (1 + CONFIDENCE) / 2.
CONFIDENCE = 0.95

#: The 0.975 quantile of Student's t with 1..30 degrees of freedom (``scipy.stats.t.ppf(0.975, df)``, 6 decimals).
T_975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)

_Z_975 = 1.959963984540054  # the normal quantile the expansion starts from

#: The row fields that say which run a row is, not what it measured: never aggregated.
NOT_METRICS = frozenset({"seed", "episodes"})


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = _Z_975
    terms = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
             (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(term / df ** (power + 1) for power, term in enumerate(terms))


def mean_ci(values: Sequence[float]) -> dict:
    """``n``, ``mean``, sample ``sd``, the interval's ``half_width`` and its ends ``low`` / ``high`` over ``values``
    (one value per seed); with one value only ``n`` and ``mean`` are set (the rest ``None``)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = math.fsum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "half_width": None, "low": None, "high": None}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = t_quantile(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half_width": half_width, "low": mean - half_width, "high": mean + half_width}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_names(rows: Iterable[dict], keys: Sequence[str]) -> list[str]:
    """Every field that holds a number in some row, in first-seen order, except the cell's ``keys`` and
    :data:`NOT_METRICS`: a metric added to the rows is aggregated without naming it anywhere."""
    names: dict[str, None] = {}
    for row in rows:
        for name, value in row.items():
            if name not in keys and name not in NOT_METRICS and _is_number(value):
                names.setdefault(name)
    return list(names)


def cell_aggregates(rows: Sequence[dict], keys: Sequence[str] = ("kl_coef", "ptx_coef"),
                    metrics: Sequence[str] | None = None) -> list[dict]:
    """One entry per cell (the distinct values of ``keys``), sorted by them: the keys, ``n`` (its runs),
    ``seeds`` (each run's ``seed``, ``None`` where unknown, sorted), ``runs`` (their ``run`` names) and
    ``metrics``: per metric (``metrics``, default :func:`metric_names`) its :func:`mean_ci` over the cell's runs that
    have it. The result does not depend on the order of the rows."""
    metrics = list(metrics) if metrics is not None else metric_names(rows, keys)
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault(tuple(row[key] for key in keys), []).append(row)
    out = []
    for cell in sorted(cells):
        # rows in seed order, so sums run in the same order whatever order the runs came in
        members = sorted(cells[cell], key=lambda r: (r.get("seed") is None, r.get("seed") or 0, str(r.get("run", ""))))
        entry = dict(zip(keys, cell))
        entry.update(n=len(members), seeds=[r.get("seed") for r in members],
                     runs=[r["run"] for r in members if "run" in r], metrics={})
        for name in metrics:
            values = [r[name] for r in members if _is_number(r.get(name))]
            if values:
                entry["metrics"][name] = mean_ci(values)
        out.append(entry)
    return out


def repeated_seeds(cells: Iterable[dict]) -> list[dict]:
    """The cells in which a known seed occurs more than once (repeats of one run, not independent seeds)."""
    return [cell for cell in cells
            if len([s for s in cell["seeds"] if s is not None]) != len({s for s in cell["seeds"] if s is not None})]
