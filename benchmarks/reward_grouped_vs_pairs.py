"""Reward-model training speed: InstructGPT's grouped K-way loss vs the same comparisons expanded to pairs.

Both sides train the same tiny reward model (same initial weights, same optimizer) on the same prompts, with the
same objective (per prompt, the mean over its non-tied pairs of -log sigmoid(r_better - r_worse)). The grouped
side puts each of a prompt's K completions through the model once; the expanded side puts each of the C(K,2)
pairs through as two sequences (2*C(K,2) rows), in chunks no larger than the grouped batch. Steps alternate
between the two sides, so machine noise hits both alike. Prints a table and one JSON line.

    python benchmarks/reward_grouped_vs_pairs.py                    # K = 4, K = 9, rank.jsonl as it is, and tie-free
    python benchmarks/reward_grouped_vs_pairs.py --settings k9 --steps 4 --prompts-per-step 4
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

import torch
import torch.nn.functional as F

from lit_instruct.data.prompt_format import encode_pair, format_prompt
from lit_instruct.data.rankings import RankedCollator, as_ranking, check_ranked_row
from lit_instruct.data.records import read_rows
from lit_instruct.models.causal_lm import load_tokenizer
from lit_instruct.models.reward_model import RewardModel
from lit_instruct.objectives import ranking_loss


def load_groups(setting: str, tokenizer, max_length: int) -> list[dict]:
    """Prompts of ``rank.jsonl`` for a setting: ``k4`` (first 4 completions of rows with K >= 4), ``k9`` (rows
    with K = 9), ``asis`` (every row as it is). A ``strict`` suffix breaks ties by position (all C(K,2) pairs
    count: the case the paper's 8x at K = 9 describes). Rows left with only ties are dropped."""
    strict = setting.endswith("strict")
    setting = setting.removesuffix("strict")
    groups = []
    for _, row in read_rows("bundled:rank.jsonl", check_ranked_row):
        prompt, completions, ranks = as_ranking(row)
        if setting == "k4":
            if len(completions) < 4:
                continue
            completions, ranks = completions[:4], ranks[:4]
        elif setting == "k9" and len(completions) != 9:
            continue
        if strict:  # rank by (rank, position): no ties
            order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
            ranks = [order.index(i) for i in range(len(ranks))]
        if len(set(ranks)) < 2:
            continue
        prompt_ids = tokenizer(format_prompt(prompt), add_special_tokens=False)["input_ids"][-(max_length // 2):]
        ids = [encode_pair(tokenizer, prompt_ids, c, max_length)[0] for c in completions]
        groups.append({"input_ids": ids, "ranks": ranks, "prompt": prompt})
    random.Random(0).shuffle(groups)  # the file is ordered by source: sample across all of it
    return groups


def comparisons(group: dict) -> list[tuple[int, int]]:
    r = group["ranks"]
    return [(i, j) for i in range(len(r)) for j in range(len(r)) if r[i] < r[j]]


def grouped_step(model, optimizer, collate, groups) -> int:
    batch = collate(groups)
    flat = model(batch["input_ids"], batch["attention_mask"])
    grid = flat.new_zeros(batch["mask"].shape).index_put((batch["group"], batch["slot"]), flat)
    loss = ranking_loss(grid, batch["ranks"], batch["mask"])["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return batch["input_ids"].shape[0]


def expanded_step(model, optimizer, collate, groups, max_rows: int) -> int:
    """The same objective, each pair as two sequences; chunks of at most ``max_rows`` rows, gradients accumulated."""
    pairs = [(g, i, j, 1.0 / (len(groups) * len(comparisons(g)))) for g in groups for i, j in comparisons(g)]
    optimizer.zero_grad(set_to_none=True)
    per_chunk = max(1, max_rows // 2)
    rows = 0
    for start in range(0, len(pairs), per_chunk):
        chunk = pairs[start : start + per_chunk]
        batch = collate([{"input_ids": [g["input_ids"][i], g["input_ids"][j]], "ranks": [0, 1]} for g, i, j, _ in chunk])
        r = model(batch["input_ids"], batch["attention_mask"]).view(-1, 2)  # (pairs, 2)
        weights = torch.tensor([w for *_, w in chunk])
        (-(F.logsigmoid(r[:, 0] - r[:, 1]) * weights).sum()).backward()
        rows += batch["input_ids"].shape[0]
    optimizer.step()
    return rows


def run_setting(setting: str, args, tokenizer) -> dict:
    groups = load_groups(setting, tokenizer, args.max_length)
    if not groups:
        raise SystemExit(f"no prompts for setting {setting}")
    torch.manual_seed(0)
    models = {"grouped": RewardModel.from_causal_lm(args.model, tokenizer)}
    models["expanded"] = RewardModel.from_causal_lm(args.model, tokenizer)
    models["expanded"].load_state_dict(models["grouped"].state_dict())
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95)) for k, m in models.items()}
    collate = RankedCollator(tokenizer.pad_token_id)
    seconds = {"grouped": 0.0, "expanded": 0.0}
    rows = {"grouped": 0, "expanded": 0}
    n_comparisons = 0
    p = args.prompts_per_step
    for step in range(args.warmup + args.steps):
        batch = [groups[(step * p + i) % len(groups)] for i in range(p)]
        max_rows = sum(len(g["input_ids"]) for g in batch)
        for side in (("grouped", "expanded") if step % 2 == 0 else ("expanded", "grouped")):
            start = time.perf_counter()
            if side == "grouped":
                n = grouped_step(models[side], optims[side], collate, batch)
            else:
                n = expanded_step(models[side], optims[side], collate, batch, max_rows)
            if step >= args.warmup:
                seconds[side] += time.perf_counter() - start
                rows[side] += n
        if step >= args.warmup:
            n_comparisons += sum(len(comparisons(g)) for g in batch)
    result = {
        "setting": setting,
        "prompts": args.steps * p,
        "comparisons": n_comparisons,
        "mean_k": sum(len(g["input_ids"]) for g in groups) / len(groups),
        "rows_grouped": rows["grouped"],
        "rows_expanded": rows["expanded"],
        "grouped_comparisons_per_s": n_comparisons / seconds["grouped"],
        "expanded_comparisons_per_s": n_comparisons / seconds["expanded"],
    }
    result["speedup"] = result["grouped_comparisons_per_s"] / result["expanded_comparisons_per_s"]
    result["row_ratio"] = rows["expanded"] / rows["grouped"]
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="k4,k9,asis,k4strict,k9strict",
                        help="comma-separated: k4, k9, asis; a 'strict' suffix breaks ties by position")
    parser.add_argument("--model", default="embedded", help="causal LM to start from (embedded, hub name or directory)")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per prompt + completion")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    results = [run_setting(s, args, tokenizer) for s in args.settings.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"model {args.model}, {args.prompts_per_step} prompts/step, {args.steps} timed steps, max_length {args.max_length}")
    print(f"{'setting':9} {'mean K':>6} {'comparisons':>11} {'rows grouped':>12} {'rows expanded':>13} "
          f"{'grouped cmp/s':>13} {'expanded cmp/s':>14} {'speedup':>7} {'row ratio':>9}")
    for r in results:
        print(f"{r['setting']:9} {r['mean_k']:6.2f} {r['comparisons']:11d} {r['rows_grouped']:12d} {r['rows_expanded']:13d} "
              f"{r['grouped_comparisons_per_s']:13.1f} {r['expanded_comparisons_per_s']:14.1f} {r['speedup']:6.2f}x {r['row_ratio']:8.2f}x")
    print(json.dumps({"benchmark": "reward_grouped_vs_pairs", "results": results}))
    return results


if __name__ == "__main__":
    main()
