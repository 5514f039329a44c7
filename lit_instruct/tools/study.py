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

import yaml

from lit_instruct.evaluation import HELD_OUT_METRICS as METRICS
from lit_instruct.evaluation import measure_policy
from lit_instruct.stages.ppo_settings import setting


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
    config = yaml.safe_load(config_file.read_text())
    model_args = config["model"]["init_args"]
    reference = model_args.get("reference_name_or_path") or model_args["policy_name_or_path"]
    measured = measure_policy(model_args, config["data"]["init_args"], policy=reference, reference=reference,
                              seed=config.get("seed_everything") or 1234, root=str(cache.parent))
    baseline = {"policy": reference, **{name: measured[name] for name in METRICS}}
    cache.write_text(json.dumps(baseline, indent=2) + "\n")
    return baseline


def _symlog_axis(ax, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= 10:
        ax.set_xscale("symlog", linthresh=min(positive)) if min(values) <= 0 else ax.set_xscale("log")


def plot(rows: list[dict], baseline: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl_coefs = sorted({r["kl_coef"] for r in rows})
    ptx_coefs = sorted({r["ptx_coef"] for r in rows})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colours = plt.get_cmap("viridis")
    for row_index, (metric, label) in enumerate((("score", "validation RM score (normalised)"),
                                                  ("pretrain_loss", "held-out pretraining loss"))):
        # metric vs one coefficient, a line per value of the other
        for ax, x, line, marker, xlabel in ((axes[row_index, 0], "ptx_coef", "kl_coef", "o-", "ptx_coef (gamma; 0 = plain PPO)"),
                                            (axes[row_index, 1], "kl_coef", "ptx_coef", "s-", "kl_coef (beta)")):
            values = sorted({r[line] for r in rows})
            for i, value in enumerate(values):
                points = sorted((r[x], r[metric]) for r in rows if r[line] == value)
                ax.plot(*zip(*points), marker, color=colours(i / max(1, len(values) - 1)), label=f"{line} {value:g}")
            _symlog_axis(ax, sorted({r[x] for r in rows}))
            ax.set_xlabel(xlabel)
        ax = axes[row_index, 2]  # metric vs measured KL, coloured by ptx_coef, marker size by kl_coef
        for i, ptx_coef in enumerate(ptx_coefs):
            sel = [r for r in rows if r["ptx_coef"] == ptx_coef]
            ax.scatter([r["kl"] for r in sel], [r[metric] for r in sel], color=colours(i / max(1, len(ptx_coefs) - 1)),
                       s=[30 + 30 * kl_coefs.index(r["kl_coef"]) for r in sel], label=f"ptx_coef {ptx_coef:g}")
        if baseline:
            ax.scatter([0.0], [baseline[metric]], marker="*", color="k", s=150, label="SFT")
        ax.set_xlabel("KL to SFT (nats per response); marker size grows with kl_coef")
        for ax in axes[row_index]:
            ax.set_ylabel(label)
            if baseline:
                ax.axhline(baseline[metric], color="k", linestyle="--", linewidth=1)
            ax.grid(alpha=0.3)
        axes[row_index, 0].legend(fontsize=8)
        axes[row_index, 1].legend(fontsize=8)
        axes[row_index, 2].legend(fontsize=8)
    fig.suptitle(title + ("  (dashed: SFT)" if baseline else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(rows: list[dict], baseline: dict | None) -> list[str]:
    lines = ["| kl_coef | ptx_coef | RM score | KL | pretraining loss | response length | run |", "|---|---|---|---|---|---|---|"]
    if baseline:
        lines.append(f"| (SFT) | | {baseline['score']:.3f} | 0 | {baseline['pretrain_loss']:.3f} | {baseline['response_length']:.1f} | `{baseline['policy']}` |")
    for r in rows:
        lines.append(f"| {r['kl_coef']:g} | {r['ptx_coef']:g} | {r['score']:.3f} | {r['kl']:.2f} | {r['pretrain_loss']:.3f} "
                     f"| {r['response_length']:.1f} | `{r['run']}` |")
    return lines


def study(folder: Path, out: Path | None = None, baseline: bool = True) -> dict:
    out = out or folder
    rows = gather(folder)
    if not rows:
        raise SystemExit(f"lit-instruct study: no finished PPO / PPO-ptx runs (export/lit_instruct.json with val/* "
                         f"metrics) under {folder}")
    out.mkdir(parents=True, exist_ok=True)
    base = sft_baseline(rows, out / "sft_baseline.json") if baseline else None
    record = json.loads((folder / "sweep.json").read_text()) if (folder / "sweep.json").is_file() else {}
    title = f"alignment-tax study: {record.get('name', folder.name)} ({len(rows)} runs)"
    plot(rows, base, out / "study.png", title)
    lines = [f"# {title}", "", f"Runs under `{folder}`; every number is the run's final validation on the same held-out "
             "prompts (RM score of sampled responses, KL to the SFT model in nats per response) and held-out "
             "pretraining text (LM loss).", ""]
    if base:
        best = max(rows, key=lambda r: r["score"])
        taxed = [r for r in rows if r["pretrain_loss"] > base["pretrain_loss"]]
        lines += [f"Best RM score: {best['score']:.3f} at kl_coef {best['kl_coef']:g}, ptx_coef {best['ptx_coef']:g} "
                  f"(SFT {base['score']:.3f}). Runs whose held-out pretraining loss ended above SFT's "
                  f"({base['pretrain_loss']:.3f}): {len(taxed)} of {len(rows)}"
                  + (f", ptx_coef {sorted({r['ptx_coef'] for r in taxed})}." if taxed else "."), ""]
    lines += ["![study](study.png)", ""] + table(rows, base)
    (out / "study.md").write_text("\n".join(lines) + "\n")
    result = {"runs": rows, "sft": base, "sweep": record.get("file")}
    (out / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(table(rows, base)))
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
