"""``lit-instruct interpolate``: the weight-interpolation baseline for the alignment tax (Lin et al. 2023, "Mitigating
the Alignment Tax of RLHF": model averaging).

    lit-instruct interpolate runs/pipeline/ppo --ratios 0 0.25 0.5 0.75 1 --compare runs/pipeline/ppo_ptx

For each ratio a, the policy ``(1 - a) * SFT + a * PPO`` (every floating-point weight; a = 0 is the SFT policy, 1 the
PPO one) is written as an export and measured like the pipeline measures its policies: reward-model and judge
scores, KL to SFT, held-out pretraining loss, length and EOS fraction (PPO validation with the PPO run's own
settings), and the alignment tax on the bundled NLP benchmarks (lm-evaluation-harness). ``--compare`` adds other
runs' policies (PPO-ptx) measured the same way, so the pretraining mix can be set against the simplest known
alternative. Writes ``interpolation.json``, ``interpolation.md`` and ``interpolation.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lit_instruct.evaluation import harness, measure_policy
from lit_instruct.models.causal_lm import load_causal_lm, load_tokenizer
from lit_instruct.models.export import read_metadata
from lit_instruct.tools import plots
from lit_instruct.tools.configs import load_config
from lit_instruct.tools.report import TAX_COLUMNS

DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def interpolate_state_dicts(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """``(1 - ratio) * start + ratio * end`` for every floating-point tensor (computed in float32, stored in
    ``end``'s dtype); other tensors (integer buffers) are ``end``'s. The two must have the same keys and shapes."""
    if start.keys() != end.keys():
        differ = sorted(set(start) ^ set(end))
        raise ValueError(f"the two policies' weights differ in names ({', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}): not the same architecture")
    out = {}
    for name, b in end.items():
        a = start[name]
        if a.shape != b.shape:
            raise ValueError(f"{name}: shape {tuple(a.shape)} vs {tuple(b.shape)}: not the same architecture")
        if b.is_floating_point():
            out[name] = torch.lerp(a.float(), b.float(), ratio).to(b.dtype)
        else:
            out[name] = b.clone()
    return out


def run_settings(run: Path) -> tuple[dict, dict, int]:
    """A PPO run folder's model and data arguments (its ``config.yaml``) and seed."""
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not a PPO run folder (no config.yaml)")
    config = load_config(config_file)
    if "policy_name_or_path" not in config.get("model", {}).get("init_args", {}):
        raise ValueError(f"{config_file}: not a PPO run (its model has no policy_name_or_path)")
    return config["model"]["init_args"], config["data"]["init_args"], config.get("seed_everything") or 1234


def _export_dir(run: Path) -> Path:
    export = run / "export"
    if not (export / "config.json").is_file():
        raise FileNotFoundError(f"{export}: no policy export (finish the run, or lit-instruct export its checkpoint)")
    return export


def measure(policy: Path, reference: str, model_args: dict, data_args: dict, seed: int, *, reward_model: Optional[str],
            judge: Optional[str], tasks: Sequence[str], limit: Optional[int], root: Path) -> dict:
    from lit_instruct.tools.tax import evaluate_export

    held_out = measure_policy(model_args, data_args, policy=str(policy), reference=reference, reward_model=reward_model,
                              judge=judge, seed=seed, root=str(root))
    held_out.pop("samples", None)
    tax = evaluate_export(policy, tasks, limit=limit, bootstrap_iters=0)["results"] if tasks else {}
    return {**held_out, **harness.flat_metrics(tax)}


def interpolate(run: Path, out: Path, ratios: Sequence[float] = DEFAULT_RATIOS, *, sft: Optional[str] = None,
                compare: Sequence[Path] = (), tasks: Sequence[str] = harness.BUNDLED_TASKS, limit: Optional[int] = None,
                judge: Optional[str] = None, max_val_prompts: Optional[int] = None) -> dict:
    """Measure the interpolated policies (and ``compare``'s) and write the report; returns it."""
    for ratio in ratios:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"interpolation ratios must be in [0, 1], got {ratio}")
    model_args, data_args, seed = run_settings(run)
    ppo_export = _export_dir(run)
    sft = sft or model_args.get("reference_name_or_path") or model_args["policy_name_or_path"]
    judge = judge or model_args.get("judge_path")
    if max_val_prompts is not None:
        data_args = {**data_args, "max_val_prompts": max_val_prompts}
    if tasks:
        harness.task_configs(tasks)  # the harness, the data file and the task names, before anything runs
    tokenizer = load_tokenizer(str(ppo_export))
    end = load_causal_lm(str(ppo_export), tokenizer, trainable=False)
    start = load_causal_lm(sft, load_tokenizer(sft), trainable=False).state_dict()
    meta = read_metadata(ppo_export)
    rows = []
    for ratio in ratios:
        folder = out / f"ratio={ratio:g}" / "export"
        weights = interpolate_state_dicts(start, end.state_dict(), ratio)
        folder.mkdir(parents=True, exist_ok=True)
        end.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)
        (folder / "lit_instruct.json").write_text(json.dumps({
            "stage": "interpolate", "prompt_format": meta.get("prompt_format"),
            "interpolation": {"sft": sft, "ppo": str(ppo_export), "ratio": ratio}}, indent=2) + "\n")
        print(f"[interpolate] ratio {ratio:g}: measuring", flush=True)
        rows.append({"policy": f"interpolated {ratio:g}", "ratio": ratio,
                     **measure(folder, sft, model_args, data_args, seed, reward_model=model_args.get("reward_model_path"),
                               judge=judge, tasks=tasks, limit=limit, root=folder.parent)})
    for other in compare:
        print(f"[interpolate] {other}: measuring", flush=True)
        rows.append({"policy": str(other), "ratio": None,
                     **measure(_export_dir(other), sft, model_args, data_args, seed, reward_model=model_args.get("reward_model_path"),
                               judge=judge, tasks=tasks, limit=limit, root=out / "compare" / other.name)})
    report = {"sft": sft, "ppo": str(ppo_export), "judge": judge, "ratios": list(ratios), "rows": rows}
    write_report(out, report)
    return report


COLUMNS = [("judge_score", "judge", "{:+.3f}"), ("reward_model_score", "RM", "{:+.3f}"), ("kl", "KL", "{:.3f}"),
           ("pretrain_loss", "pretrain loss", "{:.3f}"), ("eos_fraction", "EOS", "{:.2f}"), ("response_length", "length", "{:.1f}")]


def write_report(out: Path, report: dict) -> None:
    """``interpolation.json``, ``interpolation.md`` (the table) and ``interpolation.png`` (reward against each measure
    of the tax) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "interpolation.json").write_text(json.dumps(report, indent=2) + "\n")
    tax_keys = [k for k in harness.HEADLINE_KEYS if any(k in row for row in report["rows"])]
    columns = [c for c in COLUMNS if any(c[0] in row for row in report["rows"])]
    header = ["policy"] + [c[1] for c in columns] + [TAX_COLUMNS[k][0] for k in tax_keys]
    lines = [f"# Weight interpolation: SFT `{report['sft']}` -> PPO `{report['ppo']}`", "",
             "Each row's policy is (1 - ratio) x SFT + ratio x PPO, measured with the PPO run's validation settings"
             + (f" and judge `{report['judge']}`" if report["judge"] else "") + "; tax columns: lm-evaluation-harness on the "
             "bundled items (F1 / BLEU: higher is better; bits per byte: lower is better).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        cells = [row["policy"]] + [fmt.format(row[key]) if row.get(key) is not None else "" for key, _, fmt in columns]
        cells += [format(row[k], TAX_COLUMNS[k][1]) if k in row else "" for k in tax_keys]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "interpolation.md").write_text("\n".join(lines) + "\n")
    plot(out / "interpolation.png", report, tax_keys)


def plot(path: Path, report: dict, tax_keys: list[str]) -> None:
    score = "judge_score" if any("judge_score" in r for r in report["rows"]) else "score"
    taxes = ["pretrain_loss"] + tax_keys
    curve = [r for r in report["rows"] if r["ratio"] is not None]
    title = "reward against the alignment tax: weight interpolation vs the pretraining mix"
    with plots.figure(path, 1, len(taxes), figsize=(4.2 * len(taxes), 3.6), dpi=120, title=title) as axes:
        for ax, tax in zip(np.atleast_1d(axes).ravel(), taxes):
            ax.plot([r.get(tax) for r in curve], [r.get(score) for r in curve], "o-", label="SFT -> PPO interpolation")
            for r in curve:
                ax.annotate(f"{r['ratio']:g}", (r.get(tax), r.get(score)), fontsize=7, xytext=(3, 3), textcoords="offset points")
            for r in report["rows"]:
                if r["ratio"] is None:
                    ax.plot([r.get(tax)], [r.get(score)], "s", label=Path(r["policy"]).name)
            ax.set_xlabel(TAX_COLUMNS[tax][0] if tax in TAX_COLUMNS else "held-out pretraining loss")
            ax.set_ylabel(score)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-instruct interpolate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a PPO run folder (config.yaml and export/); SFT is its reference policy")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS), help="weights of PPO, each in [0, 1]")
    parser.add_argument("--sft", help="the SFT export (default: the run's reference policy)")
    parser.add_argument("--compare", nargs="*", default=[], help="other PPO run folders measured the same way (PPO-ptx)")
    parser.add_argument("--judge", help="a judge reward-model export (default: the run's judge_path, if any)")
    parser.add_argument("--tasks", nargs="*", default=list(harness.BUNDLED_TASKS), help="benchmark tasks (none: skip the tax benchmarks)")
    parser.add_argument("--limit", type=int, help="only the first N items of each benchmark task")
    parser.add_argument("--max-val-prompts", type=int, help="held-out prompts measured per policy (default: the run's)")
    parser.add_argument("--out", help="output folder (default: <run>/interpolation)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "interpolation"
    interpolate(run, out, args.ratios, sft=args.sft, compare=[Path(c) for c in args.compare], tasks=args.tasks,
                limit=args.limit, judge=args.judge, max_val_prompts=args.max_val_prompts)
    print((out / "interpolation.md").read_text())
