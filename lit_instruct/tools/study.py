"""``lit-instruct study DIR``: the alignment-tax ablation plots and table from a sweep's PPO / PPO-ptx runs.

Gathers every run under ``DIR`` (the runs ``lit-instruct sweep`` recorded in ``DIR/sweep.json``, or any folder
holding PPO exports, ``*/export/lit_instruct.json``), reads each run's effective ``kl.kl_coef`` and ``ptx.ptx_coef`` and
its seed (``seed_everything`` in the ``config.yaml`` LightningCLI saved in the run folder) and its final held-out
metrics (``val/score``, ``val/kl``, ``val/pretrain_loss`` and whatever else ``HELD_OUT_METRICS`` names), measures
the SFT starting point on the same held-out prompts and text once (the dashed line in every panel), groups the
runs by cell (``kl_coef``, ``ptx_coef``: a sweep's seed axis gives each cell several runs) and writes (``--tax``: also each run's alignment tax on the bundled NLP benchmarks, measured with
lm-evaluation-harness where the run did not log it, cached as ``<run>/tax.json``):

- ``study_tax.png`` (with ``--tax``): reward against each measure of the tax (pretraining loss, the benchmarks);
- ``study.png``: validation reward and held-out pretraining loss against ``ptx_coef`` (log scale, 0 = plain PPO)
  and against ``kl_coef``, and reward against KL, as in the paper's beta/gamma ablations: per cell the mean over
  seeds with its 95% Student-t interval as error bars, each run a faint dot;
- ``study.md``: per cell the number of seeds n and mean ± half-width of each metric, then every run;
  ``study.json``: the per-run rows and the per-cell aggregates (:mod:`lit_instruct.tools.aggregate`).

A folder of over-optimisation runs (PPO against proxy reward models with a ``gold_path``, and ``lit-instruct
best-of-n`` results) gets Gao et al.'s gold-vs-proxy study instead: ``overoptimization.png`` / ``.md`` / ``.json``
(:mod:`lit_instruct.tools.overoptimization`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from lit_instruct.evaluation import HELD_OUT_METRICS, OPTIONAL_METRICS, measure_policy
from lit_instruct.evaluation.harness import BUNDLED_TASKS, HEADLINE_KEYS, headline
from lit_instruct.stages.ppo_settings import setting
from lit_instruct.tools.aggregate import cell_aggregates, repeated_seeds
from lit_instruct.tools.configs import load_config
from lit_instruct.tools.overoptimization import (
    has_overoptimization,
    overoptimization_report,
)
from lit_instruct.tools.report import study_report, study_table

#: The metrics every run must have to be studied (the plotted ones); the rest of ``METRICS`` is taken
#: where a run has it, so runs exported before a metric was added still count.
REQUIRED = ("score", "kl", "pretrain_loss")

#: Every metric a run's final validation may have (the judge's score, the EOS fraction: where the runs have them).
METRICS = {**HELD_OUT_METRICS, **OPTIONAL_METRICS}

#: The benchmark (alignment-tax) metrics a run has when it logged them (``AlignmentTax``) or ``--tax`` measured them.
TAX_METRICS = HEADLINE_KEYS

#: The cell of a run: the coefficients it was run with; its seed tells it from the other runs of its cell.
CELL = ("kl_coef", "ptx_coef")


def run_seed(meta: dict, run_dir: Path) -> int | None:
    """The seed a run used: ``seed`` in its export metadata if it records one, else ``seed_everything`` in the
    ``config.yaml`` LightningCLI saved in the run folder (the seed actually drawn when the config said ``true``);
    ``None`` when neither says (``false``: not seeded)."""
    for source in (meta, meta.get("hparams", {})):
        if isinstance(source.get("seed"), int) and not isinstance(source["seed"], bool):
            return source["seed"]
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        seed = (yaml.safe_load(config_file.read_text()) or {}).get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def gather(folder: Path) -> list[dict]:
    """One row per finished PPO / PPO-ptx run under ``folder``: coefficients from the export's hyperparameters
    (what the run used, not what a file asked for; grouped, or flat in exports from before the grouping), its seed
    (:func:`run_seed`), metrics from its final validation."""
    rows = []
    for meta_path in sorted(folder.glob("**/export/lit_instruct.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("stage") not in ("ppo", "ppo_ptx"):
            continue
        hparams, metrics = meta.get("hparams", {}), meta.get("metrics", {})
        if not all(METRICS[name] in metrics for name in REQUIRED):
            continue
        run_dir = meta_path.parent.parent
        rows.append({"run": str(run_dir.relative_to(folder)), "folder": str(run_dir), "seed": run_seed(meta, run_dir),
                     "kl_coef": float(setting(hparams, "kl", "kl_coef")), "ptx_coef": float(setting(hparams, "ptx", "ptx_coef")),
                     "adaptive_kl": bool(setting(hparams, "kl", "adaptive")),
                     **{name: float(metrics[key]) for name, key in METRICS.items() if key in metrics},
                     **{key: float(metrics[key]) for key in TAX_METRICS if key in metrics},
                     "episodes": metrics.get("episodes"), "reference": meta.get("reference"),
                     "reward_model": meta.get("reward_model")})
    return sorted(rows, key=lambda r: (r["kl_coef"], r["ptx_coef"], r["seed"] is None, r["seed"] or 0, r["run"]))


def aggregate(rows: list[dict]) -> list[dict]:
    """The runs grouped by cell (:data:`CELL`), each metric of ``METRICS`` the runs have as mean and 95%
    interval over the cell's seeds (:func:`~lit_instruct.tools.aggregate.cell_aggregates`)."""
    names = [name for name in METRICS if any(name in r for r in rows)]
    return cell_aggregates(rows, CELL, names + [key for key in TAX_METRICS if all(key in r for r in rows)])


def tax_of(export: str | Path, cache: Path, limit: int | None) -> dict[str, float]:
    """The bundled benchmarks' headline numbers for a policy export, measured once (cached in ``cache``, with the
    settings: a cache measured with another ``limit`` is measured again)."""
    from lit_instruct.tools.tax import evaluate_export, write_results

    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("settings", {}).get("limit") == limit and cached.get("settings", {}).get("tasks") == list(BUNDLED_TASKS):
            return headline(cached["results"])
    result = evaluate_export(export, BUNDLED_TASKS, limit=limit, bootstrap_iters=0)
    write_results(result, cache)
    return headline(result["results"])


def measure_tax(rows: list[dict], baseline: dict | None, limit: int | None, out: Path) -> None:
    """Every run's (and the SFT baseline's) benchmark numbers, where its final validation did not log them."""
    for row in rows:
        if not all(key in row for key in TAX_METRICS):
            print(f"[study] benchmarks: {row['run']}", flush=True)
            row.update(tax_of(Path(row["folder"]) / "export", Path(row["folder"]) / "tax.json", limit))
    if baseline is not None:
        baseline.update(tax_of(baseline["policy"], out / "sft_tax.json", limit))


def sft_baseline(rows: list[dict], cache: Path) -> dict | None:
    """The SFT (reference) policy measured with the first run's own held-out data settings; cached."""
    if cache.is_file():
        return json.loads(cache.read_text())
    config_file = Path(rows[0]["folder"]) / "config.yaml"
    if not config_file.is_file():
        return None
    config = load_config(config_file)
    model_args = config["model"]["init_args"]
    reference = model_args.get("reference_name_or_path") or model_args["policy_name_or_path"]
    measured = measure_policy(model_args, config["data"]["init_args"], policy=reference, reference=reference,
                              seed=config.get("seed_everything") or 1234, root=str(cache.parent))
    baseline = {"policy": reference, **{name: measured[name] for name in METRICS if name in measured}}
    cache.write_text(json.dumps(baseline, indent=2) + "\n")
    return baseline


def proxy_baselines(rows: list[dict], cache: Path) -> dict[str, dict]:
    """The SFT (reference) policy measured against each proxy reward model of the runs with a gold model, with the
    first such run's own settings (so its gold score too): the initial point (d = 0) of every RL curve; cached."""
    baselines = json.loads(cache.read_text()) if cache.is_file() else {}
    for proxy in sorted({r["reward_model"] for r in rows if "gold_score" in r} - set(baselines)):
        run = next(r for r in rows if r["reward_model"] == proxy and "gold_score" in r)
        config = load_config(Path(run["folder"]) / "config.yaml")
        model_args = config["model"]["init_args"]
        reference = model_args.get("reference_name_or_path") or model_args["policy_name_or_path"]
        print(f"[study] the initial policy against {proxy}", flush=True)
        measured = measure_policy(model_args, config["data"]["init_args"], policy=reference, reference=reference,
                                  reward_model=proxy, seed=config.get("seed_everything") or 1234, root=str(cache.parent))
        baselines[proxy] = {"policy": reference, **{name: measured[name] for name in METRICS if name in measured}}
        cache.write_text(json.dumps(baselines, indent=2) + "\n")
    return baselines


def study(folder: Path, out: Path | None = None, baseline: bool = True, tax: bool = False, tax_limit: int | None = None) -> dict:
    out = out or folder
    rows = gather(folder)
    if has_overoptimization(folder, rows):  # gold vs proxy: its own plot and table, not the beta / gamma ablation
        out.mkdir(parents=True, exist_ok=True)
        baselines = proxy_baselines(rows, out / "overoptimization_baselines.json")
        return overoptimization_report(folder, out, rows, baselines, f"over-optimisation: {folder.name}")
    if not rows:
        raise SystemExit(f"lit-instruct study: no finished PPO / PPO-ptx runs (export/lit_instruct.json with val/* "
                         f"metrics) and no best-of-n results under {folder}")
    out.mkdir(parents=True, exist_ok=True)
    base = sft_baseline(rows, out / "sft_baseline.json") if baseline else None
    if tax:
        measure_tax(rows, base, tax_limit, out)
    sweep = json.loads((folder / "sweep.json").read_text()) if (folder / "sweep.json").is_file() else {}
    cells = aggregate(rows)
    for cell in repeated_seeds(cells):
        print(f"[study] warning: kl_coef {cell['kl_coef']:g}, ptx_coef {cell['ptx_coef']:g} has runs with the same "
              f"seed {cell['seeds']}: repeats of one run, not independent seeds, so its interval is too narrow")
    result = study_report(out, folder, rows, cells, base, sweep)
    print("\n".join(study_table(cells, base)))
    print(f"[study] wrote {out / 'study.png'}, {out / 'study.md'}, {out / 'study.json'}")
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-instruct study", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a sweep folder (lit-instruct sweep --out) or any folder of PPO runs")
    parser.add_argument("--out", help="where to write study.png / study.md / study.json (default: the folder)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="do not measure the SFT starting point")
    parser.add_argument("--tax", action="store_true",
                        help="measure the alignment tax on the bundled NLP benchmarks (lm-evaluation-harness) for every run "
                             "that did not log it, and plot reward against it (study_tax.png)")
    parser.add_argument("--tax-limit", type=int, help="with --tax: only the first N items of each benchmark task")
    args = parser.parse_args(argv)
    study(Path(args.folder), Path(args.out) if args.out else None, baseline=args.baseline, tax=args.tax, tax_limit=args.tax_limit)
