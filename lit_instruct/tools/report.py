"""The written results: the pipeline's ``report.json`` / ``report.md`` and the study's ``study.json`` / ``study.md``,
with their plots from :mod:`lit_instruct.tools.plots`."""

from __future__ import annotations

import json
from pathlib import Path

from lit_instruct.tools import plots
from lit_instruct.tools.aggregate import CONFIDENCE

#: The policies a pipeline report compares, by the label its table gives them.
POLICIES = {"sft": "SFT", "ppo": "PPO (ptx_coef 0)", "ppo_ptx": "PPO-ptx"}


def _cell(text) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|")[:300]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


#: The pipeline report's columns: (key in a policy's results, header, format).
COLUMNS = (("judge_score", "judge score", "{:.3f}"), ("reward_model_score", "RM score (optimised)", "{:.3f}"),
           ("score", "reward with EOS penalty", "{:.3f}"), ("kl", "KL", "{:.2f}"), ("pretrain_loss", "pretraining loss", "{:.3f}"),
           ("response_length", "response length", "{:.1f}"), ("eos_fraction", "EOS fraction", "{:.2f}"))


#: The benchmark (alignment-tax) columns, by the name :mod:`lit_instruct.evaluation.harness` gives each headline metric.
TAX_COLUMNS = {"tax/instructgpt_squadv2/f1": ("SQuADv2 F1", ".1f"), "tax/instructgpt_drop/f1": ("DROP F1", ".1f"),
               "tax/instructgpt_fr_to_en/bleu": ("FR->EN BLEU", ".2f"),
               "tax/instructgpt_references/bits_per_byte": ("reference bits/byte", ".3f")}


def tax_section(rows: dict[str, dict]) -> list[str]:
    """The policies' benchmark numbers beside their held-out pretraining loss (markdown), or nothing when none has them."""
    keys = [k for k in TAX_COLUMNS if any(k in r for r in rows.values())]
    if not keys:
        return []
    lines = ["## The alignment tax on public NLP benchmarks", "",
             "lm-evaluation-harness on the InstructGPT paper's own items (`eval_instructgpt_nlp.jsonl`: SQuADv2, DROP, "
             "French-to-English; greedy answers, one line), and every item's reference scored by likelihood (bits per "
             "byte, lower is better). F1 and BLEU are in percent, higher is better. Held-out pretraining loss beside them.", "",
             "| policy | pretraining loss | " + " | ".join(TAX_COLUMNS[k][0] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for label, r in rows.items():
        loss = f"{r['pretrain_loss']:.3f}" if "pretrain_loss" in r else ""
        lines.append(f"| {label} | {loss} | " + " | ".join(format(r[k] + 0.0, TAX_COLUMNS[k][1]) if k in r else "" for k in keys) + " |")
    return lines + [""]


def length_limited(result: dict) -> bool:
    """Whether most of a policy's held-out responses stopped at the length limit instead of ending (EOS)."""
    return "eos_fraction" in result and result["eos_fraction"] < 0.5


def directions(results: dict) -> list[tuple[str, bool | None]]:
    """The paper's directions, measured: each claim and whether it holds (``None``: not measured here)."""
    sft, ppo, ptx = (results[name] for name in POLICIES)
    judge = "judge_score" in ptx and "judge_score" in sft
    eos = "eos_fraction" in ptx and "eos_fraction" in sft
    return [
        ("PPO-ptx scores above SFT by the held-apart judge", ptx["judge_score"] > sft["judge_score"] if judge else None),
        ("PPO-ptx scores above SFT by the optimised reward model", ptx.get("reward_model_score", ptx["score"]) > sft.get("reward_model_score", sft["score"])),
        ("plain PPO's held-out pretraining loss is above SFT's (the alignment tax)", ppo["pretrain_loss"] > sft["pretrain_loss"]),
        ("PPO-ptx's held-out pretraining loss is below plain PPO's (ptx pays the tax back)", ptx["pretrain_loss"] < ppo["pretrain_loss"]),
        ("PPO-ptx's EOS fraction is at least half of SFT's (responses still end)", ptx["eos_fraction"] >= 0.5 * sft["eos_fraction"] if eos else None),
    ]


def _reward_model_line(name: str, info: dict | None) -> str:
    if not info:
        return ""
    acc, base = info.get("accuracy"), info.get("length_baseline_accuracy")
    norm = info.get("normalization") or {}
    text = f"- {name}: held-out pairwise accuracy {acc:.3f}" if acc is not None else f"- {name}:"
    if base is not None:
        text += f" (longer-wins baseline on the same pairs: {base:.3f})"
    if info.get("started_from"):
        text += f"; trained from `{info['started_from']}`"
    if "gain" in norm:
        text += (f"; normalised with gain {norm['gain']:.3f} (the SFT policy's {norm.get('policy_samples')} samples had raw "
                 f"std {norm.get('policy_raw_std', float('nan')):.3f}) and shift {norm['shift']:+.3f}")
    elif "shift" in norm:
        text += f"; normalised by a shift only ({norm['shift']:+.3f})"
    return text + "."


def stages_section(timings: dict[str, float], memory: dict[str, float | None] | None) -> list[str]:
    """Each stage's wall time and peak memory (``memory/peak_gib`` of its export: CUDA memory allocated on a GPU, the
    process's peak RSS on CPU, the largest over its processes) as a markdown table, or nothing without memory figures."""
    if not memory or not any(v is not None for v in memory.values()):
        return []
    lines = ["## Stage time and peak memory", "", "Peak memory per process: CUDA memory allocated when the stage ran on a "
             "GPU, the process's peak resident set size (RSS) on CPU.", "", "| stage | wall time (s) | peak memory (GiB) |",
             "|---|---|---|"]
    for stage in dict.fromkeys([*timings, *memory]):
        seconds, gib = timings.get(stage), memory.get(stage)
        lines.append(f"| {stage} | {'' if seconds is None else f'{seconds:.0f}'} | {'' if gib is None else f'{gib:.2f}'} |")
    return lines + [""]


def pipeline_report(out: Path, results: dict, timings: dict[str, float], total_seconds: float,
                    memory: dict[str, float | None] | None = None) -> None:
    """``report.json`` (per policy its held-out metrics, the reward model's and the judge's accuracy, the measured
    directions, the stages' wall times and peak memory) and ``report.md`` (the table with length-limited policies flagged, the
    directions, the plots, SFT and PPO-ptx responses side by side) in the pipeline folder ``out``."""
    keys = [key for key, _, _ in COLUMNS]
    summary = {name: {k: v for k, v in results[name].items() if k in keys or k.startswith("tax/")} for name in POLICIES}
    for name in POLICIES:
        summary[name]["length_limited"] = length_limited(results[name])
    for stage in ("reward", "judge"):
        if stage in results:
            summary[stage] = results[stage]
    checks = directions(results)
    summary["directions"] = {claim: holds for claim, holds in checks}
    summary["timing"] = {"stages_seconds": timings, "total_seconds": total_seconds}
    if memory:
        summary["memory"] = {"stages_peak_gib": memory}
    _write_json(out / "report.json", summary)
    images = plots.pipeline_plots(out, results["sft"])
    columns = [c for c in COLUMNS if all(c[0] in results[name] for name in POLICIES)]
    limit = results.get("max_new_tokens")
    lines = ["# lit-instruct pipeline report", "",
             f"Run folder `{out}`. Stage wall times (from the run that trained each): "
             + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
             + f" ({sum(timings.values()):.0f} s in all); this invocation took {total_seconds:.0f} s.", "",
             "Held-out prompts and held-out pretraining text, the same for every policy. Scores are normalised (the SFT "
             "policy's samples have unit standard deviation, SFT demonstrations average 0). The judge is a second reward "
             "model that PPO never optimises; the RM score is the optimised reward model's; the reward adds the missing-EOS "
             "penalty where a response did not end. KL is to the SFT model, in nats per response"
             + (f"; responses are cut at {limit} tokens." if limit else "."), "",
             "| policy | " + " | ".join(header for _, header, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, label in POLICIES.items():
        r = results[name]
        flag = " (length-limited: most responses hit the limit)" if length_limited(r) else ""
        lines.append(f"| {label}{flag} | " + " | ".join(fmt.format(r[key] + 0.0) for key, _, fmt in columns) + " |")
    lines += [""] + stages_section(timings, memory) + ["## The paper's directions, measured", ""]
    lines += [f"- {'holds' if holds else 'does NOT hold' if holds is not None else 'not measured'}: {claim}" for claim, holds in checks]
    lines += [""] + tax_section({label: results[name] for name, label in POLICIES.items()})
    lines += ["## Reward models", "", _reward_model_line("Optimised reward model", results.get("reward")),
              _reward_model_line("Judge (never optimised)", results.get("judge")), ""]
    lines += [f"![{img}]({img})" for img in images]
    lines += ["", "## Samples (held-out prompts)", "", "| prompt | SFT | PPO-ptx |", "|---|---|---|"]
    for a, b in zip(results["sft"]["samples"], results["ppo_ptx"]["samples"]):
        lines.append(f"| {_cell(a['prompt'])} | {_cell(a['response'])} ({a['score']:.2f}) | {_cell(b['response'])} ({b['score']:.2f}) |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


#: The study's column heading and number format per metric; a metric not named here gets its own name and 3 decimals.
STUDY_COLUMNS = {"score": ("reward (RM, EOS penalty)", ".3f"), "kl": ("KL", ".2f"), "pretrain_loss": ("pretraining loss", ".3f"),
                 "response_length": ("response length", ".1f"), "judge_score": ("judge score", ".3f"),
                 "reward_model_score": ("RM score", ".3f"), "eos_fraction": ("EOS fraction", ".2f"), **TAX_COLUMNS}


def _column(name: str) -> tuple[str, str]:
    return STUDY_COLUMNS.get(name, (name, ".3f"))


def _study_metrics(cells: list[dict]) -> list[str]:
    return list(dict.fromkeys(name for cell in cells for name in cell["metrics"]))


def _mean_pm(stats: dict | None, fmt: str) -> str:
    """``mean ± half-width``; the mean alone for one seed (no interval), blank for a metric the cell lacks."""
    if stats is None:
        return ""
    mean = format(stats["mean"] + 0.0, fmt)
    return mean if stats["half_width"] is None else f"{mean} ± {format(stats['half_width'], fmt)}"


def study_table(cells: list[dict], baseline: dict | None) -> list[str]:
    """The study's cells as a markdown table, the SFT starting point first: per cell the number of seeds n and each
    metric's mean ± half-width of its 95% interval over the seeds (the mean alone where n is 1)."""
    names = _study_metrics(cells)
    lines = ["| kl_coef | ptx_coef | n | " + " | ".join(_column(n)[0] for n in names) + " | seeds |",
             "|---" * (len(names) + 4) + "|"]
    if baseline:
        values = ["0" if n == "kl" else (format(baseline[n], _column(n)[1]) if n in baseline else "") for n in names]
        lines.append("| (SFT) | | | " + " | ".join(values) + f" | `{baseline['policy']}` |")
    for cell in cells:
        values = [_mean_pm(cell["metrics"].get(n), _column(n)[1]) for n in names]
        seeds = ", ".join("?" if s is None else str(s) for s in cell["seeds"])
        lines.append(f"| {cell['kl_coef']:g} | {cell['ptx_coef']:g} | {cell['n']} | " + " | ".join(values) + f" | {seeds} |")
    return lines


def study_runs_table(rows: list[dict], names: list[str]) -> list[str]:
    """Every run of the study, one line each, with its seed and its ``names`` metrics."""
    lines = ["| kl_coef | ptx_coef | seed | " + " | ".join(_column(n)[0] for n in names) + " | run |",
             "|---" * (len(names) + 4) + "|"]
    for r in rows:
        values = [format(r[n] + 0.0, _column(n)[1]) if n in r else "" for n in names]
        seed = "?" if r.get("seed") is None else r["seed"]
        lines.append(f"| {r['kl_coef']:g} | {r['ptx_coef']:g} | {seed} | " + " | ".join(values) + f" | `{r['run']}` |")
    return lines


def study_report(out: Path, folder: Path, rows: list[dict], cells: list[dict], baseline: dict | None, sweep: dict) -> dict:
    """``study.png``, ``study.md`` and ``study.json`` in ``out`` for the runs gathered under ``folder`` and their
    per-cell aggregates ``cells`` (``sweep``: its ``sweep.json``, or {}); returns what ``study.json`` holds."""
    seeds = sorted({cell["n"] for cell in cells})
    per_cell = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    title = f"alignment-tax study: {sweep.get('name', folder.name)} ({len(cells)} cells, {per_cell} seeds each)"
    plots.alignment_tax(rows, cells, baseline, out / "study.png", title)
    tax_keys = [k for k in TAX_COLUMNS if all(k in c["metrics"] for c in cells)]
    if tax_keys:
        plots.reward_vs_tax(rows, cells, baseline, ["pretrain_loss"] + tax_keys, out / "study_tax.png",
                            f"{title}: reward against the tax", {k: TAX_COLUMNS[k][0] for k in tax_keys})
    lines = [f"# {title}", "", (f"Runs under `{folder}`; every number is the run's final validation on the same held-out "
             "prompts (scores of sampled responses by the optimised reward model, with and without the missing-EOS "
             "penalty, and by the held-apart judge where the runs had one; KL to the SFT model in nats per response) "
             "and held-out pretraining text (LM loss)."), "",
             f"Per cell (kl_coef, ptx_coef): n runs with different seeds; each metric is the mean over them ± the "
             f"half-width of its {CONFIDENCE:.0%} Student-t interval, t(0.975, n-1) · s / sqrt(n). "
             + ("Every cell has one seed: the numbers are single runs and there are no intervals (their noise is "
                "not measured here)." if seeds == [1] else
                "A cell with one seed shows its run's value alone: one run gives no interval."), ""]
    if baseline:
        def mean(cell: dict, name: str) -> float:
            return cell["metrics"][name]["mean"]

        key = "judge_score" if all("judge_score" in c["metrics"] for c in cells) and "judge_score" in baseline else "score"
        what = "judge score (never optimised)" if key == "judge_score" else "reward (RM, EOS penalty)"
        best = max(cells, key=lambda c: mean(c, key))
        taxed = [c for c in cells if mean(c, "pretrain_loss") > baseline["pretrain_loss"]]
        lines += [f"Best mean {what}: {mean(best, key):.3f} at kl_coef {best['kl_coef']:g}, ptx_coef "
                  f"{best['ptx_coef']:g} (SFT {baseline[key]:.3f}). Cells whose mean held-out pretraining loss ended "
                  f"above SFT's ({baseline['pretrain_loss']:.3f}): {len(taxed)} of {len(cells)}"
                  + (f", ptx_coef {sorted({c['ptx_coef'] for c in taxed})}." if taxed else "."), ""]
    lines += ["![study](study.png)", ""]
    if tax_keys:
        lines += ["Reward against the alignment tax, measured two ways: held-out pretraining loss and the public NLP "
                  "benchmarks (lm-evaluation-harness on the paper's SQuADv2 / DROP / FR->EN items; reference bits/byte: "
                  "the references scored by likelihood).", "", "![reward against the tax](study_tax.png)", ""]
    lines += study_table(cells, baseline)
    lines += ["", f"## Runs ({len(rows)})", ""] + study_runs_table(rows, _study_metrics(cells))
    (out / "study.md").write_text("\n".join(lines) + "\n")
    result = {"runs": rows, "cells": cells, "confidence": CONFIDENCE, "sft": baseline, "sweep": sweep.get("file")}
    _write_json(out / "study.json", result)
    return result
