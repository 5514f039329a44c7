"""``lit-instruct sample``: K sampled responses per prompt from a policy export, the first step of the paper's iterated
loop (sample -> ``lit-instruct label`` -> a new reward model -> PPO again) and the samples of best-of-n.

    lit-instruct sample runs/pipeline/ppo_ptx/export --prompts bundled:prompts.jsonl --k 4 --out runs/loop/samples.jsonl

Writes JSON Lines rows ``{"prompt", "completions": [...]}`` in the prompts file's order, and beside them
``OUT.meta.json`` (``runs/loop/samples.meta.json``): the export, the prompts file, every sampling setting and what came
out (rows, responses, the share that ended with EOS, seconds); the same is printed.

- **Prompts** are ``{"prompt"}`` rows in any format the stages read (``bundled:prompts.jsonl``, JSONL, Parquet, ...; a
  prompt is a string or a message list). A row's integer ``"k"`` overrides ``--k`` for that row. Every row is checked
  before the model loads; bad ones stop the run with ``FILE:LINE: problem``.
- **Split** (``--split train|val``): one side of the deterministic by-prompt split PPO makes of the same file (its
  ``data.val_fraction`` and ``data.split_seed``, given as ``--val-fraction`` / ``--split-seed``): ``val`` gives PPO
  validation's held-out prompts (best-of-n against the same prompts as the RL curve), ``train`` the prompts new
  labels may come from without touching them.
- **Prompt format**: the one the export records (``prompt_format`` in ``lit_instruct.json``), so the policy is asked
  as it was trained; a plain Hugging Face directory gets its tokenizer's chat template if it has one, else the default
  text template (``Human: {prompt}\\n\\nAssistant:``). Prompts longer than the context less ``--max-new-tokens`` are
  skipped and counted.
- **Generation** is PPO's (:func:`lit_instruct.rollout.generate`: KV cache, stop at EOS): ``--batch-size`` responses
  per call (several prompts times their K, left-padded), ``--temperature`` and ``--top-p`` as PPO samples.
- **Completions** are the decoded response up to its EOS, stripped of surrounding whitespace (how every stage reads
  a response). One that is empty (EOS at once) is kept: ``lit-instruct label`` drops it.
- **Deterministic**: the same export, file, settings (batch size included) and seed give the same file on the same
  machine; sampling runs on its own seeded random stream.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch

from lit_instruct.data.prompt_format import (
    DEFAULT_TEMPLATE,
    PromptFormat,
    check_prompt_field,
    prompt_key,
)
from lit_instruct.data.records import check_range, read_rows, split
from lit_instruct.models.causal_lm import check_source, context_length
from lit_instruct.models.export import read_metadata
from lit_instruct.rollout import collate_prompts, generate

#: ``--split``: every prompt, or one side of the deterministic by-prompt split PPO makes of the same file.
SPLITS = ("all", "train", "val")


def meta_path(out: str | Path) -> Path:
    """The sidecar of a written file: ``runs/loop/samples.jsonl`` -> ``runs/loop/samples.meta.json``."""
    return Path(out).with_suffix(".meta.json")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def check_prompt_row(row: dict) -> Optional[str]:
    """The problem with a prompts-file row (``prompt``, and an optional integer ``k`` >= 1), or ``None``."""
    problem = check_prompt_field(row)
    if problem or "k" not in row:
        return problem
    k = row["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        return f"field 'k' must be an integer >= 1 (responses for this prompt), got {k!r}"
    return None


def export_prompt_format(export: str | Path, tokenizer) -> PromptFormat:
    """How to ask an export: the prompt format it records, else (a plain HF directory) its tokenizer's chat template,
    else the recorded or default text template."""
    meta = read_metadata(export)
    if meta.get("prompt_format"):
        return PromptFormat.from_description(meta["prompt_format"], tokenizer)
    return PromptFormat.from_tokenizer(tokenizer, meta.get("prompt_template", DEFAULT_TEMPLATE), "auto")


def check_settings(k: int, max_new_tokens: int, temperature: float, top_p: float, batch_size: int, limit: Optional[int]) -> None:
    """Refuse bad sampling settings before anything is read (``ValueError`` naming the flag)."""
    check_range("--k", k, 1)
    check_range("--max-new-tokens", max_new_tokens, 1)
    check_range("--batch-size", batch_size, 1)
    check_range("--limit", limit, 1, optional=True)
    check_range("--temperature", temperature, 0)
    check_range("--top-p", top_p, 0)
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"--temperature must be > 0 (samples, not greedy) and --top-p in (0, 1], got {temperature} and {top_p}")


@torch.no_grad()
def sample_completions(model, tokenizer, prompt_ids: list[list[int]], ks: list[int], *, max_new_tokens: int,
                       temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
                       progress: bool = True) -> tuple[list[list[str]], dict]:
    """``ks[i]`` sampled responses to each tokenized, formatted prompt ``prompt_ids[i]``, generated ``batch_size`` at a
    time (a prompt repeated K times sits in consecutive rows; a batch may hold several prompts, left-padded).

    Seeded on its own random stream (the caller's is left as it was). Returns the completions per prompt and
    ``{"responses", "eos_fraction", "mean_response_tokens"}``."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    flat = [(i, ids) for i, (ids, k) in enumerate(zip(prompt_ids, ks)) for _ in range(k)]
    out: list[list[str]] = [[] for _ in prompt_ids]
    ended = tokens = 0
    bar = tqdm(total=len(flat), desc="sample", unit="response", disable=not progress)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(flat), batch_size):
            chunk = flat[start:start + batch_size]
            query, query_mask = collate_prompts([ids for _, ids in chunk], tokenizer.pad_token_id, device)
            rollout = generate(model, query, query_mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, keep_logits=False)
            for (i, _), response, mask in zip(chunk, rollout.response, rollout.response_mask):
                out[i].append(tokenizer.decode(response[mask.bool()], skip_special_tokens=True).strip())
            ended += int(rollout.ended.sum())
            tokens += int(rollout.response_mask.sum())
            bar.update(len(chunk))
    bar.close()
    n = max(len(flat), 1)
    return out, {"responses": len(flat), "eos_fraction": ended / n, "mean_response_tokens": tokens / n}


def sample_export(export: str, prompts_file: str, out: str | Path, *, k: int = 4, max_new_tokens: int = 48,
                  temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
                  limit: Optional[int] = None, split_name: str = "all", val_fraction: float = 0.05, split_seed: int = 0,
                  device: Optional[str] = None, progress: bool = True) -> dict:
    """Sample ``k`` responses (a row's ``"k"`` overrides it) to each prompt of ``prompts_file`` (of its ``split_name``
    split, then the first ``limit`` rows) from the policy ``export``; write the rows to ``out`` and the settings to
    ``OUT.meta.json``. Bad settings and bad rows stop before the model loads. Returns the metadata written."""
    from lit_instruct.tools.tax import load_policy

    check_settings(k, max_new_tokens, temperature, top_p, batch_size, limit)
    if split_name not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split_name!r}")
    rows = read_rows(prompts_file, check_prompt_row)
    if split_name != "all":  # PPO's own split of a prompts file (PPODataModule: val_fraction, split_seed)
        rows = split(rows, lambda r: prompt_key(r[1]["prompt"]), val_fraction, split_seed)[SPLITS.index(split_name) - 1]
    rows = rows[:limit]
    check_source(export)
    if not (Path(export) / "config.json").is_file():
        raise FileNotFoundError(f"{export}: not a model directory (no config.json): give a policy export or a Hugging Face causal LM directory")
    settings = {"export": str(export), "export_stage": read_metadata(export).get("stage"), "prompts_file": str(prompts_file),
                "k": k, "k_from_rows": sum("k" in row for _, row in rows), "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "seed": seed, "batch_size": batch_size, "limit": limit,
                "split": split_name, **({"val_fraction": val_fraction, "split_seed": split_seed} if split_name != "all" else {})}
    print("lit-instruct sample: " + ", ".join(f"{name} {value}" for name, value in settings.items()), flush=True)
    start = time.perf_counter()
    model, tokenizer = load_policy(export, device=device)
    model.eval()
    fmt = export_prompt_format(export, tokenizer)
    room = context_length(model.config) - max_new_tokens
    if room < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the context of {context_length(model.config)} tokens")
    kept, ids, skipped = [], [], []
    for number, row in rows:
        encoded = tokenizer(fmt.prompt(row["prompt"]), add_special_tokens=False)["input_ids"]
        if len(encoded) > room:
            skipped.append(number)
            continue
        kept.append(row)
        ids.append(encoded)
    if skipped:
        print(f"skipped {len(skipped)} prompt(s) longer than {room} tokens (context less --max-new-tokens), at "
              f"{prompts_file}:{', '.join(map(str, skipped[:5]))}{' ...' if len(skipped) > 5 else ''}", flush=True)
    if not kept:
        raise ValueError(f"{prompts_file}: every prompt is longer than {room} tokens; lower --max-new-tokens")
    completions, stats = sample_completions(model, tokenizer, ids, [row.get("k", k) for row in kept], max_new_tokens=max_new_tokens,
                                            temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size, progress=progress)
    out = Path(out)
    write_jsonl(out, [{"prompt": row["prompt"], "completions": c} for row, c in zip(kept, completions)])
    meta = {"tool": "lit-instruct sample", **settings, "export_resolved": str(Path(export).resolve()),
            "prompt_format": fmt.describe(), "device": str(next(model.parameters()).device), "rows": len(kept),
            "skipped_overlong": len(skipped), **stats, "seconds": round(time.perf_counter() - start, 2), "out": str(out)}
    meta_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {len(kept)} rows, {stats['responses']} responses (EOS {stats['eos_fraction']:.0%}, "
          f"{stats['mean_response_tokens']:.1f} tokens on average) to {out}, settings in {meta_path(out)} "
          f"({meta['seconds']} s)", flush=True)
    return meta


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-instruct sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a policy export (or any Hugging Face causal LM directory)")
    parser.add_argument("--prompts", required=True, help="{\"prompt\"} rows (bundled:prompts.jsonl, JSONL, Parquet, ...); a row's integer \"k\" overrides --k")
    parser.add_argument("--k", type=int, default=4, help="responses per prompt (default 4)")
    parser.add_argument("--out", required=True, help="JSON Lines output, {\"prompt\", \"completions\"} per row; settings in OUT.meta.json")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="longest response in tokens (default 48)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0 (default 1)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, in (0, 1] (default 1: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="responses per generate call (default 64)")
    parser.add_argument("--limit", type=int, help="only the first N prompts (of the split)")
    parser.add_argument("--split", choices=SPLITS, default="all",
                        help="all prompts (default), or the training or held-out side of PPO's split of the file: the "
                             "held-out side is PPO validation's prompts (best-of-n), the training side is for new labels")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="with --split: PPO's data.val_fraction (default 0.05)")
    parser.add_argument("--split-seed", type=int, default=0, help="with --split: PPO's data.split_seed (default 0)")
    args = parser.parse_args(argv)
    sample_export(args.export, args.prompts, args.out, k=args.k, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, limit=args.limit,
                  split_name=args.split, val_fraction=args.val_fraction, split_seed=args.split_seed)
