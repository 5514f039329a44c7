"""``lit-instruct eval``: the alignment tax of a policy export on public NLP benchmarks (lm-evaluation-harness).

    lit-instruct eval runs/pipeline/ppo_ptx/export                       # the paper's SQuADv2 / DROP / FR->EN items
    lit-instruct eval EXPORT --tasks instructgpt_squadv2 hellaswag --out tax.json   # any harness task (hub needed)
    lit-instruct eval EXPORT --prompt-format policy                     # prompts as the policy was trained to be asked

Writes the results as JSON (``--out``; ``runs/x/export`` writes ``runs/x/tax.json``) and a markdown table beside it (``.md``), and
prints the table. The numbers equal what :class:`~lit_instruct.callbacks.AlignmentTax` logs during training on the
same weights with the same settings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from lit_instruct.evaluation import harness
from lit_instruct.models.causal_lm import as_dtype, load_causal_lm, load_tokenizer
from lit_instruct.models.export import read_metadata

PROMPT_FORMATS = ("raw", "policy")


def policy_prompt_format(export: str | Path, tokenizer):
    """The prompt format an export records (``lit_instruct.json``), or its tokenizer's chat template."""
    from lit_instruct.data.prompt_format import PromptFormat

    description = read_metadata(export).get("prompt_format")
    if description is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{export}: --prompt-format policy needs an export that records its prompt format "
                         "(lit_instruct.json) or a tokenizer with a chat template")
    return PromptFormat.from_description(description, tokenizer) if description else PromptFormat.from_tokenizer(tokenizer, chat_template="always")


def load_policy(export: str | Path, dtype: str = "float32", device: Optional[str] = None):
    """An export's causal LM (on ``device``: CUDA when there is one) and tokenizer."""
    tokenizer = load_tokenizer(str(export))
    model = load_causal_lm(str(export), tokenizer, dtype=as_dtype(dtype), trainable=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer


def evaluate_export(export: str | Path, tasks: Sequence[str] = harness.BUNDLED_TASKS, *, data_file: str = harness.DEFAULT_DATA,
                    limit: Optional[int] = None, batch_size: int = 16, max_gen_toks: Optional[int] = None,
                    prompt_format: str = "raw", dtype: str = "float32", bootstrap_iters: int = 1000,
                    device: Optional[str] = None) -> dict:
    """The tasks' results on an export, with what produced them: ``{"export", "settings", "results", "seconds"}``."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    model, tokenizer = load_policy(export, dtype, device)
    fmt = policy_prompt_format(export, tokenizer) if prompt_format == "policy" else None
    configs = harness.task_configs(tasks, data_file, max_gen_toks, fmt)  # every input checked before any model runs
    start = time.perf_counter()
    results = harness.evaluate(model, tokenizer, tasks, limit=limit, batch_size=batch_size, bootstrap_iters=bootstrap_iters,
                               configs=configs)
    settings = {"tasks": list(tasks), "data_file": data_file, "limit": limit, "batch_size": batch_size,
                "max_gen_toks": max_gen_toks, "prompt_format": prompt_format, "dtype": dtype, "decoding": "greedy"}
    return {"export": str(export), "settings": settings, "results": results, "seconds": round(time.perf_counter() - start, 1)}


def write_results(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    header = f"# Alignment-tax benchmarks: `{result['export']}`\n\nSettings: " + ", ".join(
        f"{k} {v}" for k, v in result["settings"].items() if k != "tasks") + "\n\n"
    out.with_suffix(".md").write_text(header + harness.markdown_table(result["results"]))


def default_out(export: str | Path) -> Path:
    """``runs/x/export`` -> ``runs/x/tax.json`` (an export folder holds only the export); else ``<dir>.tax.json``."""
    export = Path(export)
    return export.parent / "tax.json" if export.name == "export" else export.with_name(export.name + ".tax.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=list(harness.BUNDLED_TASKS),
                        help=f"bundled tasks ({', '.join(harness.BUNDLED_TASKS)}: the default), task .yaml files, or harness task names")
    parser.add_argument("--data", default=harness.DEFAULT_DATA, help="the bundled tasks' JSON Lines file (task, prompt, refs per row)")
    parser.add_argument("--limit", type=int, help="only the first N items of each task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-gen-toks", type=int, help="generated tokens per answer (default: each task's own)")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="raw",
                        help="raw: the paper's zero-shot prompts as they are (default); policy: wrapped in the export's prompt format")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-instruct eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a policy export (or any Hugging Face causal LM directory)")
    parser.add_argument("--out", help="results JSON (default: tax.json beside an export folder named export, else <export>.tax.json); a .md table beside it")
    parser.add_argument("--bootstrap-iters", type=int, default=1000, help="bootstrap draws for BLEU's standard error (0: none)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = evaluate_export(args.export, args.tasks, data_file=args.data, limit=args.limit, batch_size=args.batch_size,
                             max_gen_toks=args.max_gen_toks, prompt_format=args.prompt_format, dtype=args.dtype,
                             bootstrap_iters=args.bootstrap_iters)
    out = Path(args.out) if args.out else default_out(args.export)
    write_results(result, out)
    print(harness.markdown_table(result["results"]), end="")
    print(f"wrote {out} and {out.with_suffix('.md')} ({result['seconds']} s)")
