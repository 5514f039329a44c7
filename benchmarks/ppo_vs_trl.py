"""PPO throughput: lit-instruct's ``PPOModule`` (ptx_coef 0) vs TRL's PPO trainer, matched settings.

Both sides start from the same tiny models, written once by this script: a GPT-2 policy (the embedded 2 x 128
config, random weights; its copy is the frozen reference) and a reward model whose backbone and head are the same
weights in both formats (lit-instruct's reward export; ``GPT2ForSequenceClassification`` for TRL), which is also
where each side's critic starts. Same prompts (bundled prompts.jsonl, formatted and cut the same way), same
rollout batch, minibatch, PPO epochs, response length, sampling temperature, KL coefficient, no EOS penalty, no
pretraining mix (TRL has none). Each side runs its real trainer (a Lightning ``Trainer.fit``; TRL
``PPOTrainer.train``) in a fresh process; rounds alternate lit, TRL, lit, TRL ... so machine noise hits both; the
figure is the ratio of medians. Per PPO iteration the wall time is split into generation, scoring (the no-grad
forward passes of policy / reference / critic / reward model) and the rest (advantages + the update).

    python benchmarks/ppo_vs_trl.py                       # 16 prompts x 32 new tokens, minibatch 8, 3 rounds
    python benchmarks/ppo_vs_trl.py --tiny                # smoke setting
    python benchmarks/ppo_vs_trl.py --also-lit /path/to/older/checkout:before   # a third side: another lit-instruct

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prepare(folder: Path, args) -> None:
    """Write the shared starting point: policy, reward model in both formats, prompts."""
    import torch
    from transformers import GPT2ForSequenceClassification

    from lit_instruct.data.prompt_format import format_prompt
    from lit_instruct.data.records import read_rows
    from lit_instruct.models.causal_lm import load_causal_lm, load_tokenizer
    from lit_instruct.models.reward_model import RewardModel

    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded")
    policy = load_causal_lm("embedded", tokenizer)
    policy.save_pretrained(folder / "policy")
    tokenizer.save_pretrained(folder / "policy")
    rm = RewardModel.from_causal_lm("embedded", tokenizer)
    rm.backbone.load_state_dict(policy.transformer.state_dict())  # the critic / RM start from the policy's body
    rm.save_pretrained(folder / "reward")
    tokenizer.save_pretrained(folder / "reward")
    (folder / "reward" / "lit_instruct.json").write_text(json.dumps({"stage": "reward", "normalization": {"shift": 0.0, "note": "benchmark"}}))
    config = {k: v for k, v in rm.backbone.config.to_dict().items() if k not in ("id2label", "label2id")}
    config |= {"num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
    trl_rm = GPT2ForSequenceClassification(type(rm.backbone.config).from_dict(config))
    trl_rm.transformer.load_state_dict(rm.backbone.state_dict())
    with torch.no_grad():
        trl_rm.score.weight.copy_(rm.head.weight)  # the lit head's bias is 0 at init: same scores
    trl_rm.save_pretrained(folder / "trl_reward")
    tokenizer.save_pretrained(folder / "trl_reward")
    prompts = []
    for _, row in read_rows("bundled:prompts.jsonl", lambda row: None):
        ids = tokenizer(format_prompt(row["prompt"]), add_special_tokens=False)["input_ids"]
        if len(ids) <= args.max_prompt_tokens:
            prompts.append(row["prompt"])
    with (folder / "prompts.jsonl").open("w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")


def worker_lit(folder: Path, args) -> dict:
    import lightning as L
    import torch

    from lit_instruct.data.prompts import PPODataModule
    from lit_instruct.stages.ppo import PPOModule
    from lit_instruct.stages.ppo_settings import KLPenalty, PPOUpdate, PtxMix, Sampling

    iterations = args.warmup + args.iterations
    times, splits, lengths = [], [], []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.start)
            splits.append(dict(getattr(module, "rollout_timing", {})))
            lengths.append(float(trainer.callback_metrics.get("rollout/response_length", torch.tensor(0.0))))

    L.seed_everything(args.seed, verbose=False)
    module = PPOModule(
        policy_name_or_path=str(folder / "policy"), reward_model_path=str(folder / "reward"),
        total_episodes=iterations * args.batch, kl=KLPenalty(kl_coef=0.02), ptx=PtxMix(ptx_coef=0.0),
        ppo=PPOUpdate(ppo_epochs=args.ppo_epochs, minibatch_size=args.minibatch),
        sampling=Sampling(max_new_tokens=args.response_length, temperature=1.0), missing_eos_penalty=None,
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-6, eps=1e-5), critic_lr=3e-6, warmup_steps=0,
        num_sample_prompts=0, export_dir=str(folder / f"lit-export-{os.getpid()}"),
    )
    data = PPODataModule(prompts_file=str(folder / "prompts.jsonl"), rollout_batch_size=args.batch, val_fraction=0.01,
                            max_prompt_tokens=args.max_prompt_tokens, max_val_prompts=1, max_val_pretrain_blocks=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                        limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Timer()], default_root_dir=str(folder / "lit-run"))
    rss_before = peak_rss_mib()
    trainer.fit(module, data)
    return {"times": times, "splits": splits, "response_length": lengths, "rss_before_mib": rss_before}


def worker_trl(folder: Path, args) -> dict:
    import torch
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from lit_instruct.data.prompt_format import format_prompt

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder / "policy", padding_side="left")
    prompts = [json.loads(line)["prompt"] for line in (folder / "prompts.jsonl").read_text().splitlines()]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(format_prompt(p), add_special_tokens=False)["input_ids"] for p in prompts]})
    iterations = args.warmup + args.iterations
    config = PPOConfig(
        output_dir=str(folder / "trl-run"), per_device_train_batch_size=args.minibatch,
        gradient_accumulation_steps=args.batch // args.minibatch, num_mini_batches=args.batch // args.minibatch,
        num_ppo_epochs=args.ppo_epochs, response_length=args.response_length, total_episodes=iterations * args.batch,
        kl_coef=0.02, missing_eos_penalty=None, stop_token="eos", temperature=1.0, learning_rate=3e-6,
        local_rollout_forward_batch_size=args.batch, num_sample_generations=0, report_to="none", use_cpu=True,
        save_strategy="no", logging_steps=1, seed=args.seed, disable_tqdm=True,
    )
    # Time split: wrap the functions TRL's loop calls; no-grad forwards are rollout scoring, the rest is the update.
    split = {"generation": 0.0, "scoring": 0.0}

    def timed(name, fn, only_no_grad=False):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if not only_no_grad or not torch.is_grad_enabled():
                    split[name] += time.perf_counter() - start
        return wrapper

    ppo_module.batch_generation = timed("generation", ppo_module.batch_generation)
    ppo_module.forward = timed("scoring", ppo_module.forward, only_no_grad=True)
    ppo_module.get_reward = timed("scoring", ppo_module.get_reward, only_no_grad=True)
    times, splits = [], []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.last = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            times.append(now - self.last)
            splits.append(dict(split))
            split.update(generation=0.0, scoring=0.0)
            self.last = now

    trainer = PPOTrainer(
        args=config, processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(folder / "policy"),
        ref_model=AutoModelForCausalLM.from_pretrained(folder / "policy"),
        reward_model=AutoModelForSequenceClassification.from_pretrained(folder / "trl_reward"),
        value_model=AutoModelForSequenceClassification.from_pretrained(folder / "trl_reward"),
        train_dataset=dataset, callbacks=[Timer()],
    )
    rss_before = peak_rss_mib()
    trainer.train()
    return {"times": times, "splits": splits, "response_length": [], "rss_before_mib": rss_before}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarise(result: dict, args) -> dict:
    keep = slice(args.warmup, None)
    times, splits = result["times"][keep], result["splits"][keep]
    total = sum(times)
    gen = sum(s.get("generation", 0.0) for s in splits)
    score = sum(s.get("scoring", 0.0) for s in splits)
    return {"episodes_per_s": len(times) * args.batch / total, "iteration_s": total / len(times),
            "generation_s": gen / len(times), "scoring_s": score / len(times), "update_s": (total - gen - score) / len(times),
            "peak_rss_mib": result["peak_rss_mib"], "timed_iterations": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="episodes (prompts) per PPO iteration")
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--max-prompt-tokens", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=8, help="timed PPO iterations per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations at the start of each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--also-lit", action="append", default=[], metavar="PATH[:LABEL]",
                        help="another lit-instruct checkout to measure in the same rounds (e.g. before a change)")
    parser.add_argument("--no-trl", dest="trl", action="store_false", help="lit-instruct sides only (with --also-lit)")
    parser.add_argument("--tiny", action="store_true", help="smoke setting: 1 round, 2 iterations, short responses")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.minibatch, args.response_length, args.iterations, args.warmup, args.rounds = 8, 4, 8, 2, 1, 1
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        folder = Path(args.folder)
        result = worker_lit(folder, args) if args.worker == "lit" else worker_trl(folder, args)
        result["peak_rss_mib"] = peak_rss_mib()
        print("RESULT " + json.dumps(result))
        return

    sides = [("lit", "lit", None)] + ([("trl", "trl", None)] if args.trl else [])
    for spec in args.also_lit:
        path, _, label = spec.partition(":")
        sides.append((label or f"lit@{path}", "lit", str(Path(path).resolve())))
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in sides}
    passthrough = [f"--batch={args.batch}", f"--minibatch={args.minibatch}", f"--ppo-epochs={args.ppo_epochs}",
                   f"--response-length={args.response_length}", f"--max-prompt-tokens={args.max_prompt_tokens}",
                   f"--iterations={args.iterations}", f"--warmup={args.warmup}", f"--threads={args.threads}", f"--seed={args.seed}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, args)
        for round_ in range(args.rounds):
            for label, kind, path in sides:
                env = dict(os.environ, PYTHONWARNINGS="ignore")
                if path:
                    env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
                done = subprocess.run([sys.executable, __file__, "--worker", kind, "--folder", tmp, *passthrough],
                                      capture_output=True, text=True, env=env)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode != 0 or not lines:
                    sys.exit(f"{label} worker failed:\n{done.stderr[-4000:]}")
                runs[label].append(summarise(json.loads(lines[-1][len("RESULT "):]), args))
                print(f"round {round_ + 1} {label}: {runs[label][-1]['episodes_per_s']:.2f} episodes/s", file=sys.stderr, flush=True)
    results = {}
    for label, rounds in runs.items():
        med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
        results[label] = {key: med(key) for key in ("episodes_per_s", "iteration_s", "generation_s", "scoring_s", "update_s")}
        results[label]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rounds)
        results[label]["rounds"] = [round(r["episodes_per_s"], 3) for r in rounds]
    print("| side | episodes/s | s/iteration | generation | scoring | update | peak RSS MiB | rounds |\n|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['episodes_per_s']:.2f} | {r['iteration_s']:.3f} | {r['generation_s']:.3f} | {r['scoring_s']:.3f} "
              f"| {r['update_s']:.3f} | {r['peak_rss_mib']:.0f} | {r['rounds']} |")
    ratio = results["lit"]["episodes_per_s"] / results["trl"]["episodes_per_s"] if "trl" in results else None
    for label in results:
        if label != "lit":
            print(f"\nlit-instruct / {label} episodes per second: {results['lit']['episodes_per_s'] / results[label]['episodes_per_s']:.2f}x")
    print(json.dumps({"benchmark": "ppo_vs_trl", "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "folder")},
                      "results": results, "episodes_per_s_ratio": ratio,
                      "machine": {"platform": platform.platform(), "processor": platform.machine(), "torch": torch.__version__,
                                  "threads": args.threads}}))


if __name__ == "__main__":
    main()
