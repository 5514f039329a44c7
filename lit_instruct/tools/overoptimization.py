"""Reward over-optimisation (Gao et al. 2022) in ``lit-instruct study``: gold and proxy score against d = sqrt(KL), for
RL and for best-of-n, with Gao et al.'s functional forms fitted.

- **RL**: every PPO run of the study folder that logged ``val/gold_score`` (``gold_path``) gives one point per
  validation, read from its CSV log (``<run>/csv/version_*/metrics.csv``): d = ``val/sqrt_kl``, the proxy score
  ``val/reward_model_score`` (the optimised reward model's own score, without the EOS penalty) and the gold score
  ``val/gold_score``. The initial policy's point (d = 0) is the SFT reference measured by the same validation against
  each proxy (:func:`~lit_instruct.evaluation.measure_policy`, cached in ``overoptimization_baselines.json``). Runs are
  grouped by their proxy (``reward_model``); their seeds pool into one fit of ``R(d) = d (a - b log d)``
  (:func:`~lit_instruct.objectives.fit_rl`) to the gold score less the initial policy's.
- **Best-of-n**: every ``lit-instruct best-of-n`` result (``*.json`` with ``"tool": "lit-instruct best-of-n"``) under
  the folder, fitted with ``R(d) = d (a - b d)`` (:func:`~lit_instruct.objectives.fit_best_of_n`) by that tool.

Writes ``overoptimization.png`` (one panel each for RL and best-of-n: proxy and gold score less the initial policy's,
against d, with the fitted gold curves), ``overoptimization.md`` (the fits, the KL at which the fitted gold score
peaks, the best gold score observed and where, per proxy and method) and ``overoptimization.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lit_instruct.objectives import fit_rl
from lit_instruct.tools.best_of_n import TOOL as BEST_OF_N_TOOL
from lit_instruct.tools.best_of_n import peak_text
from lit_instruct.tools.plots import csv_log, figure

#: What a validation row of a PPO run's CSV log gives a point: d, the proxy score, the gold score.
RL_COLUMNS = {"d": "val/sqrt_kl", "proxy_score": "val/reward_model_score", "gold_score": "val/gold_score"}


def label_of(path: str | None) -> str:
    """A proxy's short name: its run folder (``runs/overopt/proxy-400/export`` -> ``proxy-400``)."""
    p = Path(path or "?")
    return p.parent.name if p.name == "export" else p.name


def rl_points(run_folder: Path) -> list[dict]:
    """The validation points of one PPO run (see the module docstring), in step order; [] without a gold score."""
    points = []
    for row in csv_log(run_folder / "csv"):
        if all(row.get(column) not in (None, "") for column in RL_COLUMNS.values()):
            points.append({"step": int(float(row["step"])), **{k: float(row[c]) for k, c in RL_COLUMNS.items()}})
    return points


def best_of_n_files(folder: Path) -> list[tuple[Path, dict]]:
    """Every ``lit-instruct best-of-n`` result under ``folder``."""
    found = []
    for path in sorted(folder.glob("**/*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and data.get("tool") == BEST_OF_N_TOOL:
            found.append((path, data))
    return found


def has_overoptimization(folder: Path, rows: list[dict]) -> bool:
    """Whether a study folder holds an over-optimisation study: runs with a gold model, or best-of-n results."""
    return any("gold_score" in r for r in rows) or bool(best_of_n_files(folder))


def rl_curves(rows: list[dict], baselines: dict[str, dict]) -> list[dict]:
    """Per proxy: its runs' points (score less the initial policy's, per ``baselines[proxy]``) and the RL fit."""
    curves = []
    for proxy in sorted({r["reward_model"] for r in rows if "gold_score" in r}):
        base = baselines[proxy]
        runs = []
        for row in (r for r in rows if r["reward_model"] == proxy and "gold_score" in r):
            points = [{**p, "proxy_gain": p["proxy_score"] - base["reward_model_score"], "gold_gain": p["gold_score"] - base["gold_score"]}
                      for p in rl_points(Path(row["folder"]))]
            runs.append({"run": row["run"], "seed": row["seed"], "points": points})
        pooled = [p for run in runs for p in run["points"] if p["d"] > 0]
        fit = fit_rl([p["d"] for p in pooled], [p["gold_gain"] for p in pooled])._asdict() if len(pooled) >= 2 else None
        best = max(pooled, key=lambda p: p["gold_gain"]) if pooled else None
        curves.append({"proxy": proxy, "label": label_of(proxy), "initial": base, "runs": runs, "fit": fit,
                       "best_observed": best and {"kl": best["d"] ** 2, "gold_gain": best["gold_gain"], "step": best["step"]}})
    return curves


def bon_curves(files: list[tuple[Path, dict]]) -> list[dict]:
    """Per proxy of every best-of-n file: the points (score less n = 1's) and the fit that tool made."""
    curves = []
    for path, data in files:
        for curve in data["curves"]:
            points = curve["points"]
            first = points[0]
            gains = [{**p, "proxy_gain": p["proxy_score"] - first["proxy_score"], "gold_gain": p["gold_score"] - first["gold_score"]}
                     for p in points]
            best = max(gains, key=lambda p: p["gold_gain"])
            curves.append({"proxy": curve["proxy"], "label": label_of(curve["proxy"]), "file": str(path), "k": data["k"],
                           "prompts": data["prompts"], "points": gains, "fit": curve["fit"].get("gold"),
                           "best_observed": {"kl": best["kl"], "gold_gain": best["gold_gain"], "n": best["n"]}})
    return curves


def plot(rl: list[dict], bon: list[dict], path: Path, title: str) -> None:
    """RL and best-of-n panels: proxy (hollow, dashed) and gold (filled) score gains against d, the fitted gold curve."""
    panels = [(name, curves) for name, curves in (("RL (PPO)", rl), ("best-of-n", bon)) if curves]
    with figure(path, 1, len(panels), figsize=(5.6 * len(panels), 4.4), dpi=90, title=title) as axes:
        for ax, (name, curves) in zip(np.atleast_1d(axes).ravel(), panels):
            for i, curve in enumerate(curves):
                color = f"C{i}"
                series = curve["runs"] if "runs" in curve else [{"points": curve["points"]}]
                for j, run in enumerate(series):
                    pts = sorted(run["points"], key=lambda p: p["d"])
                    d = [p["d"] for p in pts]
                    first = j == 0
                    ax.plot(d, [p["proxy_gain"] for p in pts], "o--", mfc="none", color=color, alpha=0.6,
                            label=f"{curve['label']}: proxy" if first else None)
                    ax.plot(d, [p["gold_gain"] for p in pts], "o", color=color, label=f"{curve['label']}: gold" if first else None)
                fit = curve["fit"]
                d_max = max((p["d"] for run in series for p in run["points"]), default=0.0)
                if fit and d_max > 0:
                    grid = np.linspace(1e-3, d_max, 200)
                    form = grid * (fit["a"] - fit["b"] * (np.log(grid) if name.startswith("RL") else grid))
                    ax.plot(grid, form, "-", color=color, lw=1.5, label=f"{curve['label']}: gold fit")
            ax.axhline(0.0, color="k", lw=0.8, linestyle=":")
            ax.set_xlabel("d = sqrt(KL to the initial policy), sqrt(nats)")
            ax.set_ylabel("score less the initial policy's")
            ax.set_title(name + (": R = d(a - b log d)" if name.startswith("RL") else ": R = d(a - b d)"))
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)


def _fit_cells(fit: dict | None) -> str:
    if not fit:
        return "| – | – | – |"
    return f"| {fit['a']:+.3f} | {fit['b']:+.4f} | {peak_text(fit)} |"


def markdown(rl: list[dict], bon: list[dict]) -> list[str]:
    lines = ["## Over-optimisation: gold vs proxy (Gao et al. 2022)", "",
             "Scores are gains over the initial (SFT) policy; d = sqrt(KL) in sqrt(nats). The fitted gold score peaks at "
             "the KL in the sixth column (RL: d* = exp(a/b - 1); best-of-n: d* = a / 2b); with a <= 0 the fitted gold "
             "score falls from the initial policy on.", "",
             "| method | proxy | points | a | b | KL at the fitted gold peak (nats) | best gold gain observed | at KL | final proxy gain | final gold gain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for curve in rl:
        pts = [p for run in curve["runs"] for p in run["points"]]
        finals = [max(run["points"], key=lambda p: p["step"]) for run in curve["runs"] if run["points"]]
        best = curve["best_observed"]
        lines.append(f"| RL ({len(curve['runs'])} run(s)) | {curve['label']} | {len(pts)} {_fit_cells(curve['fit'])} "
                     f"{best['gold_gain']:+.3f} | {best['kl']:.3g} | {np.mean([p['proxy_gain'] for p in finals]):+.3f} | "
                     f"{np.mean([p['gold_gain'] for p in finals]):+.3f} |" if best else
                     f"| RL | {curve['label']} | 0 | – | – | – | – | – | – | – |")
    for curve in bon:
        best, last = curve["best_observed"], curve["points"][-1]
        lines.append(f"| best-of-n (K {curve['k']}, {curve['prompts']} prompts) | {curve['label']} | {len(curve['points'])} "
                     f"{_fit_cells(curve['fit'])} {best['gold_gain']:+.3f} | {best['kl']:.3g} | {last['proxy_gain']:+.3f} | "
                     f"{last['gold_gain']:+.3f} |")
    return lines


def overoptimization_report(folder: Path, out: Path, rows: list[dict], baselines: dict[str, dict], title: str) -> dict:
    """The over-optimisation outputs of a study (see the module docstring); returns what ``overoptimization.json`` holds."""
    rl, bon = rl_curves(rows, baselines), bon_curves(best_of_n_files(folder))
    result = {"rl": rl, "best_of_n": bon}
    if rl or bon:
        plot(rl, bon, out / "overoptimization.png", title)
    (out / "overoptimization.md").write_text("\n".join(markdown(rl, bon)) + "\n")
    (out / "overoptimization.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print("\n".join(markdown(rl, bon)))
    print(f"[study] wrote {out / 'overoptimization.png'}, {out / 'overoptimization.md'}, {out / 'overoptimization.json'}")
    return result
