"""``lit-instruct study DIR``: the alignment-tax ablation plots and table from a sweep's PPO / PPO-ptx runs.

Gathers every run under ``DIR`` (the runs ``lit-instruct sweep`` recorded in ``DIR/sweep.json``, or any folder
holding PPO exports, ``*/export/lit_instruct.json``), reads each run's effective ``kl.kl_coef`` and ``ptx.ptx_coef`` and
its final held-out metrics (``val/score``, ``val/kl``, ``val/pretrain_loss``), measures the SFT starting point on
the same held-out prompts and text once (the dashed line in every panel), and writes:

- ``study.png``: validation reward and held-out pretraining loss against ``ptx_coef`` (log scale, 0 = plain PPO)
  and against ``kl_coef``, and reward against KL, as in the paper's beta/gamma ablations;
- ``study.md``: the same numbers as a table; ``study.json``: the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lit_instruct.evaluation import HELD_OUT_METRICS as METRICS
from lit_instruct.evaluation import measure_policy
from lit_instruct.stages.ppo_settings import setting
from lit_instruct.tools.configs import load_config
from lit_instruct.tools.report import study_report, study_table


def gather(folder: Path) -> list[dict]:
    """One row per finished PPO / PPO-ptx run under ``folder``: coefficients from the export's hyperparameters
    (what the run used, not what a file asked for; grouped, or flat in exports from before the grouping), metrics
    from its final validation."""
    rows = []
    for meta_path in sorted(folder.glob("**/export/lit_instruct.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("stage") not in ("ppo", "ppo_ptx"):
            continue
        hparams, metrics = meta.get("hparams", {}), meta.get("metrics", {})
        if not all(key in metrics for key in METRICS.values()):
            continue
        run_dir = meta_path.parent.parent
        rows.append({"run": str(run_dir.relative_to(folder)), "folder": str(run_dir),
                     "kl_coef": float(setting(hparams, "kl", "kl_coef")), "ptx_coef": float(setting(hparams, "ptx", "ptx_coef")),
                     "adaptive_kl": bool(setting(hparams, "kl", "adaptive")),
                     **{name: float(metrics[key]) for name, key in METRICS.items()},
                     "episodes": metrics.get("episodes"), "reference": meta.get("reference"),
                     "reward_model": meta.get("reward_model")})
    return sorted(rows, key=lambda r: (r["kl_coef"], r["ptx_coef"]))


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
    baseline = {"policy": reference, **{name: measured[name] for name in METRICS}}
    cache.write_text(json.dumps(baseline, indent=2) + "\n")
    return baseline


def study(folder: Path, out: Path | None = None, baseline: bool = True) -> dict:
    out = out or folder
    rows = gather(folder)
    if not rows:
        raise SystemExit(f"lit-instruct study: no finished PPO / PPO-ptx runs (export/lit_instruct.json with val/* "
                         f"metrics) under {folder}")
    out.mkdir(parents=True, exist_ok=True)
    base = sft_baseline(rows, out / "sft_baseline.json") if baseline else None
    sweep = json.loads((folder / "sweep.json").read_text()) if (folder / "sweep.json").is_file() else {}
    result = study_report(out, folder, rows, base, sweep)
    print("\n".join(study_table(rows, base)))
    print(f"[study] wrote {out / 'study.png'}, {out / 'study.md'}, {out / 'study.json'}")
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-instruct study", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a sweep folder (lit-instruct sweep --out) or any folder of PPO runs")
    parser.add_argument("--out", help="where to write study.png / study.md / study.json (default: the folder)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="do not measure the SFT starting point")
    args = parser.parse_args(argv)
    study(Path(args.folder), Path(args.out) if args.out else None, baseline=args.baseline)
