"""The PNG plots of the pipeline's report (score against KL, the alignment tax during training) and of the study
(the paper's beta / gamma ablations), drawn headless with matplotlib."""

from __future__ import annotations

import csv
from contextlib import contextmanager
from pathlib import Path

import numpy as np

#: The PPO runs of a pipeline, by the label its plots give them.
PPO_RUNS = {"ppo": "PPO", "ppo_ptx": "PPO-ptx"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(path: Path, nrows: int = 1, ncols: int = 1, figsize=(5, 4), dpi: int = 100, title: str | None = None):
    """A figure whose axes the block draws on, then saved to ``path`` and closed."""
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize)
    try:
        yield axes
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def csv_log(folder: Path) -> list[dict]:
    """The rows of the latest ``version_*/metrics.csv`` a CSVLogger wrote under ``folder`` (none: [])."""
    files = sorted(folder.glob("version_*/metrics.csv"))
    if not files:
        return []
    with files[-1].open() as f:
        return list(csv.DictReader(f))


def pipeline_plots(out: Path, sft: dict) -> list[str]:
    """``score_vs_kl.png`` and ``pretrain_loss.png`` in the pipeline folder ``out``, from its PPO stages' CSV logs,
    with the SFT policy's held-out ``score`` and ``pretrain_loss`` for reference; returns the file names."""
    logs = {stage: csv_log(out / stage / "csv") for stage in PPO_RUNS}
    with figure(out / "score_vs_kl.png") as ax:
        for stage, label in PPO_RUNS.items():
            rows = [r for r in logs[stage] if r.get("objective/kl") and r.get("objective/score")]
            ax.plot([float(r["objective/kl"]) for r in rows], [float(r["objective/score"]) for r in rows], ".-", label=label, alpha=0.7)
        ax.plot([0.0], [sft["score"]], "k*", markersize=12, label="SFT (held-out)")
        _label(ax, "KL to SFT (nats per response)", "RM score (training rollouts)", "Score vs KL during training")
    with figure(out / "pretrain_loss.png") as ax:
        for stage, label in PPO_RUNS.items():
            rows = [r for r in logs[stage] if r.get("val/pretrain_loss")]
            episodes = {r["step"]: float(r["episodes"]) for r in logs[stage] if r.get("episodes")}
            ax.plot([episodes.get(r["step"], float(r["step"])) for r in rows], [float(r["val/pretrain_loss"]) for r in rows], "o-", label=label)
        ax.axhline(sft["pretrain_loss"], color="k", linestyle="--", label="SFT")
        _label(ax, "episodes", "held-out pretraining LM loss", "Alignment tax during training")
    images = ["score_vs_kl.png", "pretrain_loss.png"]
    if any(r.get("val/judge_score") for rows in logs.values() for r in rows):
        images.append("judge_vs_reward_model.png")
        with figure(out / images[-1], figsize=(6, 4)) as ax:
            for i, (stage, label) in enumerate(PPO_RUNS.items()):
                rows = [r for r in logs[stage] if r.get("val/judge_score") and r.get("val/reward_model_score")]
                episodes = {r["step"]: float(r["episodes"]) for r in logs[stage] if r.get("episodes")}
                x = [episodes.get(r["step"], float(r["step"])) for r in rows]
                ax.plot(x, [float(r["val/reward_model_score"]) for r in rows], "o-", color=f"C{i}", label=f"{label}: optimised RM")
                ax.plot(x, [float(r["val/judge_score"]) for r in rows], "s--", color=f"C{i}", label=f"{label}: judge")
            if "judge_score" in sft:
                ax.axhline(sft["judge_score"], color="k", linestyle=":", label="SFT: judge")
            _label(ax, "episodes", "held-out score (normalised)", "Optimised reward model vs held-apart judge")
    return images


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


def _symlog_axis(ax, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= 10:
        ax.set_xscale("symlog", linthresh=min(positive)) if min(values) <= 0 else ax.set_xscale("log")


def _mean_and_error(cell: dict, metric: str) -> tuple[float, float]:
    """A cell's mean of ``metric`` and its interval's half-width (NaN, so no bar is drawn, for one seed)."""
    stats = cell["metrics"][metric]
    return stats["mean"], stats["half_width"] if stats["half_width"] is not None else float("nan")


def alignment_tax(rows: list[dict], cells: list[dict], baseline: dict | None, path: Path, title: str) -> None:
    """The study's panels: the judge's and the optimised RM's scores where the runs have them (else the RM
    score), and held-out pretraining loss (bottom), against ``ptx_coef`` (a line per
    ``kl_coef``), against ``kl_coef`` (a line per ``ptx_coef``), and against the measured KL; SFT dashed. Each point
    is a cell's mean over its seeds (``cells``), with its 95% interval as error bars; each run (``rows``) a faint dot."""
    kl_coefs = sorted({c["kl_coef"] for c in cells})
    ptx_coefs = sorted({c["ptx_coef"] for c in cells})
    colours = _pyplot().get_cmap("viridis")
    note = "points: mean over seeds, bars: 95% t interval, dots: runs" + ("; dashed: SFT" if baseline else "")
    panels = [(m, label) for m, label in (("judge_score", "held-out judge score (never optimised)"),
                                          ("reward_model_score", "held-out score of the optimised RM"))
              if all(m in r for r in rows)] or [("score", "validation RM score (normalised)")]
    panels.append(("pretrain_loss", "held-out pretraining loss"))
    with figure(path, len(panels), 3, figsize=(15, 4.25 * len(panels)), dpi=90, title=f"{title}\n({note})") as axes:
        for row_index, (metric, label) in enumerate(panels):
            # metric vs one coefficient, a line per value of the other
            for ax, x, line, marker, xlabel in ((axes[row_index, 0], "ptx_coef", "kl_coef", "o-", "ptx_coef (gamma; 0 = plain PPO)"),
                                                (axes[row_index, 1], "kl_coef", "ptx_coef", "s-", "kl_coef (beta)")):
                values = sorted({c[line] for c in cells})
                for i, value in enumerate(values):
                    colour = colours(i / max(1, len(values) - 1))
                    sel = sorted((c for c in cells if c[line] == value), key=lambda c: c[x])
                    means, errors = zip(*(_mean_and_error(c, metric) for c in sel))
                    ax.errorbar([c[x] for c in sel], means, yerr=errors, fmt=marker, color=colour, capsize=3,
                                label=f"{line} {value:g}")
                    runs = [r for r in rows if r[line] == value]
                    ax.scatter([r[x] for r in runs], [r[metric] for r in runs], color=colour, s=14, alpha=0.45, linewidths=0)
                _symlog_axis(ax, sorted({c[x] for c in cells}))
                ax.set_xlabel(xlabel)
            ax = axes[row_index, 2]  # metric vs measured KL, coloured by ptx_coef, marker size by kl_coef
            for i, ptx_coef in enumerate(ptx_coefs):
                colour = colours(i / max(1, len(ptx_coefs) - 1))
                sel = [c for c in cells if c["ptx_coef"] == ptx_coef]
                (kl, kl_error), (y, y_error) = [zip(*(_mean_and_error(c, m) for c in sel)) for m in ("kl", metric)]
                ax.errorbar(kl, y, xerr=kl_error, yerr=y_error, fmt="none", ecolor=colour, capsize=2, alpha=0.7)
                ax.scatter(kl, y, color=colour, s=[30 + 30 * kl_coefs.index(c["kl_coef"]) for c in sel],
                           label=f"ptx_coef {ptx_coef:g}")
                runs = [r for r in rows if r["ptx_coef"] == ptx_coef]
                ax.scatter([r["kl"] for r in runs], [r[metric] for r in runs], color=colour, s=14, alpha=0.45, linewidths=0)
            if baseline and metric in baseline:
                ax.scatter([0.0], [baseline[metric]], marker="*", color="k", s=150, label="SFT")
            ax.set_xlabel("KL to SFT (nats per response); marker size grows with kl_coef")
            for ax in axes[row_index]:
                ax.set_ylabel(label)
                if baseline and metric in baseline:
                    ax.axhline(baseline[metric], color="k", linestyle="--", linewidth=1)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)


def reward_vs_tax(rows: list[dict], cells: list[dict], baseline: dict | None, taxes: list[str], path: Path, title: str,
                  labels: dict[str, str]) -> None:
    """The reward (the judge's score where the runs have it, else the RM score) against each measure of the tax
    (``taxes``: held-out pretraining loss and the benchmark metrics), a point per cell (mean over seeds, 95% interval
    bars both ways) coloured by ``ptx_coef``, marker size by ``kl_coef``, runs as faint dots, SFT a star."""
    score = "judge_score" if all("judge_score" in r for r in rows) else "score"
    ptx_coefs = sorted({c["ptx_coef"] for c in cells})
    kl_coefs = sorted({c["kl_coef"] for c in cells})
    colours = _pyplot().get_cmap("viridis")
    with figure(path, 1, len(taxes), figsize=(4.6 * len(taxes), 4.2), dpi=90, title=title) as axes:
        for ax, tax in zip(np.atleast_1d(axes).ravel(), taxes):
            for i, ptx_coef in enumerate(ptx_coefs):
                colour = colours(i / max(1, len(ptx_coefs) - 1))
                sel = [c for c in cells if c["ptx_coef"] == ptx_coef]
                (x, x_error), (y, y_error) = [zip(*(_mean_and_error(c, m) for c in sel)) for m in (tax, score)]
                ax.errorbar(x, y, xerr=x_error, yerr=y_error, fmt="none", ecolor=colour, capsize=2, alpha=0.7)
                ax.scatter(x, y, color=colour, s=[30 + 30 * kl_coefs.index(c["kl_coef"]) for c in sel], label=f"ptx_coef {ptx_coef:g}")
                runs = [r for r in rows if r["ptx_coef"] == ptx_coef]
                ax.scatter([r[tax] for r in runs], [r[score] for r in runs], color=colour, s=14, alpha=0.45, linewidths=0)
            if baseline and tax in baseline and score in baseline:
                ax.scatter([baseline[tax]], [baseline[score]], marker="*", color="k", s=150, label="SFT")
            _label(ax, labels.get(tax, "held-out pretraining loss" if tax == "pretrain_loss" else tax),
                   "judge score" if score == "judge_score" else "RM score", "")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


def metric_curves(runs: dict[str, Path], metrics: list[str], path: Path, title: str = "") -> None:
    """``metrics`` against the optimizer step, one panel each, a line per run (``runs``: label -> the folder its
    CSVLogger wrote to), read from the runs' ``metrics.csv``: the tax curves the ``AlignmentTax`` callback logs."""
    with figure(path, 1, len(metrics), figsize=(4.6 * len(metrics), 3.8), dpi=90, title=title or None) as axes:
        for ax, metric in zip(np.atleast_1d(axes).ravel(), metrics):
            for label, folder in runs.items():
                points = [(float(r["step"]), float(r[metric])) for r in csv_log(folder) if r.get(metric) not in (None, "")]
                if points:
                    ax.plot(*zip(*points), "o-", label=label)
            _label(ax, "optimizer step", metric, "")
            ax.grid(alpha=0.3)


def main(argv: list[str] | None = None) -> None:
    """``python -m lit_instruct.tools.plots curves --run LABEL=CSV_FOLDER ... --metrics M ... --out PNG``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lit_instruct.tools.plots")
    parser.add_argument("what", choices=["curves"])
    parser.add_argument("--run", action="append", required=True, help="LABEL=FOLDER (a CSVLogger's save_dir); repeat per run")
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.run)
    metric_curves({label: Path(folder) for label, folder in runs.items()}, args.metrics, Path(args.out), args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
