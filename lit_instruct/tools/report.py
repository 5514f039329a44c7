"""The written results: the pipeline's ``report.json`` / ``report.md`` and the study's ``study.json`` / ``study.md``,
with their plots from :mod:`lit_instruct.tools.plots`."""

from __future__ import annotations

import json
from pathlib import Path

from lit_instruct.evaluation import HELD_OUT_METRICS
from lit_instruct.tools import plots

#: The policies a pipeline report compares, by the label its table gives them.
POLICIES = {"sft": "SFT", "ppo": "PPO (ptx_coef 0)", "ppo_ptx": "PPO-ptx"}


def _cell(text) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|")[:300]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def pipeline_report(out: Path, results: dict, timings: dict[str, float], total_seconds: float) -> None:
    """``report.json`` (per policy its held-out metrics, the reward model's accuracy, the stages' wall times) and
    ``report.md`` (the table, the plots, SFT and PPO-ptx responses side by side) in the pipeline folder ``out``."""
    summary = {name: {k: results[name][k] for k in HELD_OUT_METRICS} for name in POLICIES}
    summary["reward"] = results["reward"]
    summary["timing"] = {"stages_seconds": timings, "total_seconds": total_seconds}
    _write_json(out / "report.json", summary)
    images = plots.pipeline_plots(out, results["sft"])
    lines = ["# lit-instruct pipeline report", "",
             f"Run folder `{out}`. Stage wall times (from the run that trained each): "
             + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
             + f" ({sum(timings.values()):.0f} s in all); this invocation took {total_seconds:.0f} s.", "",
             "Held-out prompts and held-out pretraining text, the same for every policy; KL is to the SFT model, "
             "in nats per response.", "",
             "| policy | RM score | KL | pretraining loss | response length |", "|---|---|---|---|---|"]
    for name, label in POLICIES.items():
        r = results[name]
        lines.append(f"| {label} | {r['score']:.3f} | {r['kl'] + 0.0:.2f} | {r['pretrain_loss']:.3f} | {r['response_length']:.1f} |")
    acc, base = results["reward"]["accuracy"], results["reward"]["length_baseline_accuracy"]
    lines += ["", f"Reward model held-out pairwise accuracy: {acc:.3f}" + (f" (longer-wins baseline on the same pairs: {base:.3f})" if base is not None else ""), ""]
    lines += [f"![{img}]({img})" for img in images]
    lines += ["", "## Samples (held-out prompts)", "", "| prompt | SFT | PPO-ptx |", "|---|---|---|"]
    for a, b in zip(results["sft"]["samples"], results["ppo_ptx"]["samples"]):
        lines.append(f"| {_cell(a['prompt'])} | {_cell(a['response'])} ({a['score']:.2f}) | {_cell(b['response'])} ({b['score']:.2f}) |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def study_table(rows: list[dict], baseline: dict | None) -> list[str]:
    """The study's runs as a markdown table, the SFT starting point first."""
    lines = ["| kl_coef | ptx_coef | RM score | KL | pretraining loss | response length | run |", "|---|---|---|---|---|---|---|"]
    if baseline:
        lines.append(f"| (SFT) | | {baseline['score']:.3f} | 0 | {baseline['pretrain_loss']:.3f} | {baseline['response_length']:.1f} | `{baseline['policy']}` |")
    for r in rows:
        lines.append(f"| {r['kl_coef']:g} | {r['ptx_coef']:g} | {r['score']:.3f} | {r['kl']:.2f} | {r['pretrain_loss']:.3f} "
                     f"| {r['response_length']:.1f} | `{r['run']}` |")
    return lines


def study_report(out: Path, folder: Path, rows: list[dict], baseline: dict | None, sweep: dict) -> dict:
    """``study.png``, ``study.md`` and ``study.json`` in ``out`` for the runs gathered under ``folder`` (``sweep``:
    its ``sweep.json``, or {}); returns what ``study.json`` holds."""
    title = f"alignment-tax study: {sweep.get('name', folder.name)} ({len(rows)} runs)"
    plots.alignment_tax(rows, baseline, out / "study.png", title)
    lines = [f"# {title}", "", f"Runs under `{folder}`; every number is the run's final validation on the same held-out "
             "prompts (RM score of sampled responses, KL to the SFT model in nats per response) and held-out "
             "pretraining text (LM loss).", ""]
    if baseline:
        best = max(rows, key=lambda r: r["score"])
        taxed = [r for r in rows if r["pretrain_loss"] > baseline["pretrain_loss"]]
        lines += [f"Best RM score: {best['score']:.3f} at kl_coef {best['kl_coef']:g}, ptx_coef {best['ptx_coef']:g} "
                  f"(SFT {baseline['score']:.3f}). Runs whose held-out pretraining loss ended above SFT's "
                  f"({baseline['pretrain_loss']:.3f}): {len(taxed)} of {len(rows)}"
                  + (f", ptx_coef {sorted({r['ptx_coef'] for r in taxed})}." if taxed else "."), ""]
    lines += ["![study](study.png)", ""] + study_table(rows, baseline)
    (out / "study.md").write_text("\n".join(lines) + "\n")
    result = {"runs": rows, "sft": baseline, "sweep": sweep.get("file")}
    _write_json(out / "study.json", result)
    return result
