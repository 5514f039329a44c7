"""Reward-model training speed and quality: lit-instruct's grouped K-way loss vs TRL's RewardTrainer on pairs.

Both sides start from the same tiny model: lit-instruct's ``RewardModel`` (GPT-2 backbone + linear head at the last
real token) and ``transformers.GPT2ForSequenceClassification(num_labels=1)`` with the same backbone weights and the
head's weight copied into ``score`` (our head's bias is 0 at init and cancels in every pairwise loss; ``score`` has
none). Same token ids: prompt + " " + completion + EOS from ``encode_pair``, cut at ``--max-length``; TRL gets them
pre-tokenized (``chosen_ids``/``rejected_ids``), so it adds no EOS and drops nothing (it filters pairs longer than
``max_length``, never truncates). TRL pads with the tokenizer's pad token, here EOS, and its model reads the reward at
the last token that is not the pad id: one token before EOS where a sequence ends with EOS (ours read at EOS). TRL
puts chosen and rejected rows of a batch through one forward and takes the mean over pairs (ours: per prompt, the
mean over its pairs, then the mean over prompts: the same unless ties make K's pair counts differ). Same optimizer (AdamW, betas
(0.9, 0.95), no weight decay), cosine schedule to ``--min-lr-ratio``, gradient clipping at 1.0, no dropout, no
reward centering. The lit side is a ``lightning.Trainer`` fit of ``RewardModule`` (export skipped) on prompts with
all their completions; the TRL side is ``RewardTrainer.train()`` on every non-tied pair as (chosen, rejected).

Speed: per setting (see ``reward_grouped_vs_pairs.py``: k4, k9, asis, k9strict), ``--prompts-per-step`` prompts per
lit step; TRL gets all their pairs, ``per_device_train_batch_size`` = pairs / steps, so its steps cover the same
comparisons. Comparisons/s = non-tied pairs trained on / wall time from the end of the warm-up steps to the end of
the last step (data loading, forward, backward, optimizer step). Each run is a worker subprocess; rounds alternate
the order (lit, trl, then trl, lit); medians over rounds. Quality (``--accuracy``): one epoch on the train split
of ``RewardDataModule`` (rank.jsonl, 10% of prompts held out, seed 0) with the same number of optimizer steps, then
pairwise accuracy of both models on the held-out pairs, scored by the same code. Prints tables and one JSON line.

    python benchmarks/reward_vs_trl.py                 # k4, k9, asis, k9strict, 2 rounds, then held-out accuracy
    python benchmarks/reward_vs_trl.py --tiny          # smoke run: k4, k9strict, 1 round, 1 + 1 steps, no accuracy
    python benchmarks/reward_vs_trl.py --worker trl --setting k9   # one worker run: one JSON line
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import GPT2ForSequenceClassification, TrainerCallback

from lit_instruct.data.rankings import RankedCollator, RewardDataModule
from lit_instruct.models.causal_lm import disable_dropout
from lit_instruct.objectives import ranking_loss
from lit_instruct.stages.reward import RewardModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_grouped_vs_pairs import comparisons, load_groups


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Clock:
    """Per optimizer step: begin/end times and what the batch held."""

    def __init__(self) -> None:
        self.begin, self.end, self.comparisons, self.rows, self.tokens = [], [], [], [], []

    def add_batch(self, comparisons: int, input_ids, attention_mask) -> None:
        self.comparisons.append(int(comparisons))
        self.rows.append(int(input_ids.shape[0]))
        self.tokens.append(int(attention_mask.sum()))

    def window(self, warmup: int) -> dict:
        start = self.end[warmup - 1] if warmup else self.begin[0]
        n = self.comparisons[warmup:]
        seconds = self.end[-1] - start
        return {"steps": len(self.end), "timed_steps": len(n), "comparisons": sum(n), "seconds": seconds,
                "comparisons_per_s": sum(n) / seconds, "rows_per_step": sum(self.rows) / len(self.rows),
                "tokens_total": sum(self.tokens)}


def build_module(args):
    """The lit side's RewardModule; seeded, so both workers start from the same weights."""

    class BenchRewardModule(RewardModule):
        def on_fit_end(self) -> None:  # no normalisation, no export
            pass

    torch.manual_seed(0)
    module = BenchRewardModule(args.model, min_lr_ratio=args.min_lr_ratio, warmup_steps=0,
                               optimizer=partial(torch.optim.AdamW, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0))
    disable_dropout(module.reward_model.backbone)  # as TRL's disable_dropout=True
    return module


def trl_model(rm, tokenizer):
    """GPT2ForSequenceClassification with ``rm``'s backbone and head weight."""
    assert rm.backbone.config.model_type == "gpt2", "the TRL side is built as GPT2ForSequenceClassification"
    config = copy.deepcopy(rm.backbone.config)
    config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
    model = GPT2ForSequenceClassification(config)
    model.transformer.load_state_dict(rm.backbone.state_dict())
    with torch.no_grad():
        model.score.weight.copy_(rm.head.weight)
    return model


def expand(groups: list[dict]) -> list[tuple[list[int], list[int]]]:
    return [(g["input_ids"][i], g["input_ids"][j]) for g in groups for i, j in comparisons(g)]


def fit_lit(module, groups, args, shuffle: bool) -> Clock:
    clock = Clock()

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.begin.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.end.append(time.perf_counter())
            clock.add_batch(batch["comparisons"], batch["input_ids"], batch["attention_mask"])

    loader = DataLoader(groups, batch_size=args.prompts_per_step, shuffle=shuffle,
                        collate_fn=RankedCollator(module.tokenizer.pad_token_id))
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, callbacks=[Timer()])
    trainer.fit(module, train_dataloaders=loader)
    return clock


def fit_trl(model, tokenizer, pairs, batch_size: int, args, out_dir: str):
    # imported here, so that the lit worker's memory does not include TRL's imports
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    clock = Clock()

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            clock.begin.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            clock.end.append(time.perf_counter())

    class TimedRewardTrainer(RewardTrainer):
        def compute_loss(self, model, inputs, *a, **kw):
            if model.training:
                clock.add_batch(inputs["input_ids"].shape[0] // 2, inputs["input_ids"], inputs["attention_mask"])
            return super().compute_loss(model, inputs, *a, **kw)

    # --trl-micro-pairs: forward at most that many pairs at once, accumulating gradients to about the same pairs per
    # optimizer step (one huge batch of 2 x pairs rows is slow on a CPU; micro-batches are what a TRL user would run).
    accumulate = math.ceil(batch_size / args.trl_micro_pairs) if args.trl_micro_pairs else 1
    config = RewardConfig(
        output_dir=out_dir, num_train_epochs=1, per_device_train_batch_size=math.ceil(batch_size / accumulate),
        gradient_accumulation_steps=accumulate,
        learning_rate=args.lr, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
        weight_decay=0.0, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": args.min_lr_ratio},
        warmup_steps=0, max_grad_norm=1.0, max_length=args.max_length, center_rewards_coefficient=None,
        disable_dropout=True, use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    data = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})
    trainer = TimedRewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                 callbacks=[Timer()])
    kept = len(trainer.train_dataset)
    trainer.train()
    return clock, kept


def held_out_accuracy(score, groups, pad_id: int) -> tuple[float, int]:
    """Share of held-out non-tied pairs whose better completion scores higher (``score``: ids, mask -> (n,))."""
    collate, correct, total = RankedCollator(pad_id), 0, 0
    with torch.no_grad():
        for start in range(0, len(groups), 8):
            b = collate(groups[start : start + 8])
            flat = score(b["input_ids"], b["attention_mask"]).float()
            grid = flat.new_zeros(b["mask"].shape).index_put((b["group"], b["slot"]), flat)
            margin = ranking_loss(grid, b["ranks"], b["mask"])["pair_margin"]
            correct, total = correct + int((margin > 0).sum()), total + margin.numel()
    return correct / total, total


def worker(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    module = build_module(args)
    tokenizer, eos = module.tokenizer, module.tokenizer.eos_token_id
    heldout = args.setting == "heldout"
    if heldout:  # RewardDataModule's own split: 10% of prompts held out, seed 0
        data = RewardDataModule(max_length=args.max_length, val_fraction=0.1, split_seed=0, demonstrations_file=None,
                                tokenizer_name_or_path=args.model)
        data.prepare()
        groups, val_groups = data.train_groups, data.val_groups
    else:
        pool = load_groups(args.setting, tokenizer, args.max_length)
        groups = [pool[i % len(pool)] for i in range((args.warmup + args.steps) * args.prompts_per_step)]
    lit_steps = math.ceil(len(groups) / args.prompts_per_step)
    warmup = 0 if heldout else args.warmup
    out = {"side": args.worker, "setting": args.setting, "prompts": len(groups), "rss_setup_mb": rss_mb(),
           "init_checksum": float(sum(p.detach().double().abs().sum() for p in module.reward_model.parameters())),
           "head_bias": module.reward_model.head.bias is not None}
    start = time.perf_counter()
    if args.worker == "lit":
        clock = fit_lit(module, groups, args, shuffle=heldout)
        out["tokens_expected"] = sum(len(ids) for g in groups for ids in g["input_ids"])  # each completion once
        score, model = module.reward_model, module.reward_model
    else:
        pairs = expand(groups)
        model = trl_model(module.reward_model, tokenizer)
        b = RankedCollator(tokenizer.pad_token_id)(groups[:2])  # same init: per-token rewards agree
        ids, mask = b["input_ids"], b["attention_mask"]
        with torch.no_grad():
            trl_values = model.score(model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state).squeeze(-1)
            out["init_max_abs_diff"] = float(((module.reward_model.values(ids, mask) - trl_values).abs() * mask).max())
        seqs = [s for pair in pairs for s in pair]
        out["ends_with_eos"] = sum(s[-1] == eos for s in seqs) / len(seqs)  # TRL reads these one token early
        out["text_path_same_ids"], out["text_path_dropped_pairs"] = text_path_check(tokenizer, pairs)
        batch_size = math.ceil(len(pairs) / lit_steps)
        with tempfile.TemporaryDirectory() as tmp:
            clock, kept = fit_trl(model, tokenizer, pairs, batch_size, args, tmp)
        out.update(batch_size=batch_size, pairs_fed=len(pairs), pairs_kept=kept,
                   tokens_expected=sum(len(c) + len(r) for c, r in pairs))
        score = lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    out["fit_seconds"] = time.perf_counter() - start
    out.update(clock.window(warmup), peak_rss_mb=rss_mb())
    out["tokens_match"] = out["tokens_total"] == out["tokens_expected"]
    if heldout:
        model.eval()
        out["accuracy"], out["heldout_pairs"] = held_out_accuracy(score, val_groups, tokenizer.pad_token_id)
    return out


def text_path_check(tokenizer, pairs) -> tuple[float | None, float]:
    """What TRL's text path (prompt + completion + EOS as one string) would do with these sequences: the share of
    uncut ones it would tokenize to the same ids, and the share of pairs it would drop (over-long: it filters,
    never truncates)."""
    eos = tokenizer.eos_token_id
    whole = [s for pair in pairs for s in pair if s[-1] == eos]
    same = sum(tokenizer(tokenizer.decode(s[:-1], clean_up_tokenization_spaces=False) + tokenizer.eos_token,
                         add_special_tokens=False)["input_ids"] == s for s in whole)
    dropped = sum(c[-1] != eos or r[-1] != eos for c, r in pairs)  # cut at max_length by encode_pair
    return (same / len(whole) if whole else None), dropped / len(pairs)


def run_worker(side: str, setting: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--setting", setting, "--model", args.model,
           "--prompts-per-step", str(args.prompts_per_step), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--max-length", str(args.max_length), "--trl-micro-pairs", str(args.trl_micro_pairs), "--threads", str(args.threads), "--lr", str(args.lr),
           "--min-lr-ratio", str(args.min_lr_ratio)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {side} {setting} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(setting: str, runs: list[dict]) -> dict:
    by = {s: [r for r in runs if r["side"] == s] for s in ("lit", "trl")}
    med = {s: statistics.median(r["comparisons_per_s"] for r in by[s]) for s in by}
    lit, trl = by["lit"][0], by["trl"][0]
    assert lit["init_checksum"] == trl["init_checksum"], "the two sides did not start from the same weights"
    return {"setting": setting, "comparisons_per_step": lit["comparisons"] / lit["timed_steps"],
            "lit_rows_per_step": lit["rows_per_step"], "trl_rows_per_step": trl["rows_per_step"],
            "trl_batch_size": trl["batch_size"], "lit_comparisons_per_s": med["lit"], "trl_comparisons_per_s": med["trl"],
            "speedup": med["lit"] / med["trl"], "lit_peak_rss_mb": max(r["peak_rss_mb"] for r in by["lit"]),
            "trl_peak_rss_mb": max(r["peak_rss_mb"] for r in by["trl"]), "rounds": len(by["lit"]),
            "tokens_match": all(r["tokens_match"] for r in runs), "trl_pairs_dropped": trl["pairs_fed"] - trl["pairs_kept"],
            "init_max_abs_diff": trl["init_max_abs_diff"], "trl_reads_before_eos": trl["ends_with_eos"],
            "text_path_same_ids": trl["text_path_same_ids"], "text_path_dropped_pairs": trl["text_path_dropped_pairs"],
            "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", help="comma-separated, as in reward_grouped_vs_pairs.py (default: k4,k9,asis,k9strict; "
                        "with --tiny: k4,k9strict)")
    parser.add_argument("--model", default="embedded", help="GPT-2-type causal LM to start from (embedded, hub name, dir)")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--trl-micro-pairs", type=int, default=36,
                        help="TRL forwards at most this many pairs at once (gradient accumulation); 0: all of a step's pairs")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="worker runs per side and setting")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per prompt + completion")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak LR (configs/reward/tiny.yaml)")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: leave as is)")
    parser.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=None,
                        help="held-out accuracy after one epoch (default: on, off with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: 1 round, 1 + 1 steps, 2 prompts, 32 tokens")
    parser.add_argument("--worker", choices=("lit", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    if args.tiny:
        args.rounds, args.steps, args.warmup, args.prompts_per_step, args.max_length = 1, 1, 1, 2, 32
    accuracy = (not args.tiny) if args.accuracy is None else args.accuracy
    settings = (args.settings or ("k4,k9strict" if args.tiny else "k4,k9,asis,k9strict")).split(",")
    runs: dict[str, list] = {s: [] for s in settings}
    for rnd in range(args.rounds):
        for s in settings:
            for side in (("lit", "trl") if rnd % 2 == 0 else ("trl", "lit")):
                runs[s].append(run_worker(side, s, args))
    results = [summarize(s, runs[s]) for s in settings]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, model {args.model}, "
          f"{args.prompts_per_step} prompts/step, {args.warmup} + {args.steps} steps, {args.rounds} rounds, max_length {args.max_length}")
    print("\n| setting | cmp/step | lit rows/step | TRL rows/forward | lit cmp/s | TRL cmp/s | lit/TRL | lit peak RSS | TRL peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['setting']} | {r['comparisons_per_step']:.1f} | {r['lit_rows_per_step']:.1f} | {r['trl_rows_per_step']:.1f} | "
              f"{r['lit_comparisons_per_s']:.1f} | {r['trl_comparisons_per_s']:.1f} | {r['speedup']:.2f}x | "
              f"{r['lit_peak_rss_mb']:.0f} MB | {r['trl_peak_rss_mb']:.0f} MB |")
    pct = lambda x: "n/a" if x is None else f"{x:.0%}"
    print("\n| setting | token counts match | TRL pairs dropped | init reward diff | TRL reads before EOS "
          "| TRL text path: same ids | TRL text path: pairs dropped |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['setting']} | {r['tokens_match']} | {r['trl_pairs_dropped']} | {r['init_max_abs_diff']:.1e} | "
              f"{pct(r['trl_reads_before_eos'])} | {pct(r['text_path_same_ids'])} | {pct(r['text_path_dropped_pairs'])} |")
    quality = None
    if accuracy:
        q = {side: run_worker(side, "heldout", args) for side in ("lit", "trl")}
        quality = {side: {k: q[side][k] for k in ("accuracy", "heldout_pairs", "comparisons", "steps", "fit_seconds",
                                                  "comparisons_per_s", "peak_rss_mb", "tokens_match")} for side in q}
        quality["trl"]["batch_size"] = q["trl"]["batch_size"]
        print(f"\nheld-out (RewardDataModule split, one epoch, lr {args.lr}):\n")
        print("| side | train comparisons | steps | fit s | cmp/s | held-out accuracy | held-out pairs |")
        print("|---|---|---|---|---|---|---|")
        for side, v in quality.items():
            print(f"| {side} | {v['comparisons']} | {v['steps']} | {v['fit_seconds']:.1f} | {v['comparisons_per_s']:.1f} | "
                  f"{v['accuracy']:.4f} | {v['heldout_pairs']} |")
    by = {r["setting"]: r for r in results}
    target = {}
    for s in ("k9", "k9strict"):  # k9: rank.jsonl's K = 9 rows with their ties; k9strict: all 36 pairs count
        target[f"{s}_speedup"] = by[s]["speedup"] if s in by else None
        target[f"speed_met_{s}"] = by[s]["speedup"] >= 5 if s in by else None
    target["accuracy_met"] = quality["lit"]["accuracy"] >= quality["trl"]["accuracy"] if quality else None
    print(f"\ntarget (lit >= 5x TRL comparisons/s at K = 9, held-out accuracy >= TRL's): {target}")
    summary = {"benchmark": "reward_vs_trl", "results": results, "accuracy": quality, "target": target,
               "settings": {k: getattr(args, k) for k in ("model", "prompts_per_step", "steps", "warmup", "rounds", "max_length", "lr", "min_lr_ratio", "threads")}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
