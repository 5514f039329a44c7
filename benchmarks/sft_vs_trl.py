"""SFT training throughput: lit-instruct (a Lightning fit of SFTModule) vs TRL's SFTTrainer, as a ratio.

Both sides train the embedded tiny GPT-2 from the same saved weights on the same token sequences in the same order:
the bundled demonstrations encoded once by SFTDataModule (prompt template + response + EOS, loss on the response),
shuffled once (seed 0), then read in order. Same batch, AdamW (lr, betas 0.9/0.95, eps 1e-8, no weight decay),
cosine decay to 10% without warm-up, no clipping, fp32, no accumulation, eval, checkpoints or loggers. TRL gets a
pre-tokenized dataset (input_ids + completion_mask) with packing, padding-free and shuffling off.

Each side runs in its own process (its peak RSS is its own), alternating lit, trl, lit, trl... for --rounds rounds.
A callback on each side times each optimizer step (forward, backward, optimizer and scheduler step, on a batch
already collated), leaving out the first --warmup steps; tokens/s counts non-padding tokens. "loop" tokens/s divides
by the wall time from the first timed step's start to the last one's end, so it also counts data loading and each
framework's work between steps. Prints a table, then one JSON line.

    python benchmarks/sft_vs_trl.py                     # 3 rounds, 40 steps (5 warm-up), batch 8, max_length 256
    python benchmarks/sft_vs_trl.py --tiny              # smoke test: 1 round, 3 steps, batch 2, max_length 64
    python benchmarks/sft_vs_trl.py --worker trl --model-dir DIR --steps 10   # one side (DIR written by a driver)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

for _key, _value in {"TRL_EXPERIMENTAL_SILENCE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
                     "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                     "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}.items():
    os.environ.setdefault(_key, _value)

import torch  # (lit_instruct, lightning and trl are imported only by the side that needs them)

EXAMPLES = "train_examples.json"  # the encoded, ordered training rows, written next to the model by the driver


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def data_module(args):
    """SFTDataModule with its train rows shuffled once (seed 0) and then read in order, so TRL can get the same order."""
    from lit_instruct.data.demonstrations import SFTDataModule

    class FixedOrder(SFTDataModule):
        def load(self) -> None:
            super().load()
            random.Random(0).shuffle(self.train_examples)

        def train_dataloader(self):
            return self.loader(self.train_examples, shuffle=False)

    return FixedOrder(train_file="bundled:sft.jsonl", max_length=args.max_length, batch_size=args.batch_size,
                      min_response_tokens=8, overlong="skip", num_workers=0, tokenizer_name_or_path=args.model_dir)


class Steps:
    """Per-step wall times, token counts and losses, shared by both sides' callbacks."""

    def __init__(self, cuda: bool) -> None:
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.starts, self.ends, self.tokens, self.labels, self.losses = [], [], [], [], []

    def begin(self) -> None:
        self.sync()
        self.starts.append(time.perf_counter())

    def end(self) -> None:
        self.sync()
        self.ends.append(time.perf_counter())

    def count(self, batch) -> None:
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.labels.append(int((batch["labels"][:, 1:] != -100).sum()))  # tokens the loss is taken on

    def summary(self, warmup: int) -> dict:
        n = len(self.ends)
        tokens = sum(self.tokens[warmup:n])
        step_s = sum(e - s for s, e in zip(self.starts[warmup:n], self.ends[warmup:n]))
        return {"steps": n, "tokens_per_step": self.tokens[:n], "label_tokens_per_step": self.labels[:n],
                "seconds_per_step": step_s / (n - warmup), "tokens_per_s": tokens / step_s,
                "loop_tokens_per_s": tokens / (self.ends[-1] - self.starts[warmup])}


def run_lit(args, steps: Steps, cuda: bool) -> float:
    import functools

    import lightning as L

    from lit_instruct.stages.sft import SFTModule
    from lit_instruct.stages.stage import default_optimizer

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            steps.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.end()
            steps.count(batch)
            steps.losses.append(float(outputs["loss"]))

    module = SFTModule(model_name_or_path=args.model_dir, optimizer=functools.partial(default_optimizer, lr=args.lr),
                       warmup_steps=0, min_lr_ratio=0.1, num_sample_prompts=0, export_dir=os.path.join(args.out, "export"))
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision="32-true", max_steps=args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Timer()], default_root_dir=args.out)
    trainer.fit(module, datamodule=data_module(args))  # also writes the export at the end (after the timed steps)
    return statistics.fmean(steps.losses)


def run_trl(args, steps: Steps, cuda: bool) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Timer(TrainerCallback):  # on_step_begin comes after the step's batch is fetched, on_step_end after zero_grad
        def on_step_begin(self, *args, **kwargs):
            steps.begin()

        def on_step_end(self, *args, **kwargs):
            steps.end()

    with open(os.path.join(args.model_dir, EXAMPLES)) as f:
        rows = json.load(f)
    # completion_mask = 1 where lit-instruct has a label, i.e. the response tokens and EOS.
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": [int(x != -100) for x in r["labels"]]}
                                 for r in rows])
    tokenizer, model = AutoTokenizer.from_pretrained(args.model_dir), AutoModelForCausalLM.from_pretrained(args.model_dir)
    config = SFTConfig(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, learning_rate=args.lr, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
        weight_decay=0.0, optim="adamw_torch",  # plain torch AdamW as ours (the default here would be the fused one)
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0,
        max_grad_norm=0.0,  # no clipping, as ours (the Trainer still computes the gradient norm every step)
        max_length=args.max_length, packing=False, padding_free=False, shuffle_dataset=False,
        completion_only_loss=True,  # None would mean False for a pre-tokenized dataset: loss on the prompt too
        train_sampling_strategy="sequential", dataloader_num_workers=0, dataloader_pin_memory=False,
        use_cpu=not cuda, bf16=False, fp16=False, gradient_checkpointing=False, eval_strategy="no",
        save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()])
    collate = trainer.data_collator

    def counting_collate(examples):  # counts each batch as it is built, in order (the loader may run one batch ahead)
        batch = collate(examples)
        steps.count(batch)
        return batch

    trainer.data_collator = counting_collate  # read by get_train_dataloader() in train()
    return trainer.train().training_loss


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available() and not args.cpu
    steps = Steps(cuda)
    if args.worker == "lit":  # import first, so that the RSS increase is that of the model, data and training
        from lit_instruct.stages.sft import SFTModule  # noqa: F401
    else:
        from trl import SFTConfig, SFTTrainer  # noqa: F401
    rss_before = rss_mib()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"sft_vs_trl-{args.worker}-") as args.out:
        mean_loss = (run_lit if args.worker == "lit" else run_trl)(args, steps, cuda)
    result = {"side": args.worker, "fit_seconds": time.perf_counter() - start, "mean_loss": mean_loss,
              **steps.summary(args.warmup), "rss_before_mib": rss_before,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # ru_maxrss: KiB on Linux
    result["rss_increase_mib"] = result["peak_rss_mib"] - rss_before
    if cuda:
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def prepare(args, model_dir: str) -> int:
    """Build the embedded tiny GPT-2 once, save it and its tokenizer, and write the encoded training rows."""
    from lit_instruct.models.causal_lm import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded")
    model = load_causal_lm("embedded", tokenizer)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = data_module(args)
    data.prepare()
    with open(os.path.join(model_dir, EXAMPLES), "w") as f:
        json.dump([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in data.train_examples], f)
    return sum(p.numel() for p in model.parameters())


def drive(args) -> dict:
    import transformers
    import trl

    with tempfile.TemporaryDirectory(prefix="sft_vs_trl-") as model_dir:
        args.model_dir = model_dir
        n_params = prepare(args, model_dir)
        runs = {"lit": [], "trl": []}
        flags = ["--model-dir", model_dir, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
                 str(args.batch_size), "--max-length", str(args.max_length), "--lr", str(args.lr), "--threads",
                 str(args.threads)] + (["--cpu"] if args.cpu else [])
        for _ in range(args.rounds):
            for side in ("lit", "trl"):
                done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", side, *flags],
                                      capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{side} worker failed:\n{done.stderr[-3000:]}")
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    sides = {}  # per side: medians over rounds of the speeds and times, the largest memory figures
    for side, rs in runs.items():
        sides[side] = {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "loop_tokens_per_s", "seconds_per_step", "fit_seconds")}
        sides[side].update({k: max(r[k] for r in rs) for k in ("peak_rss_mib", "rss_increase_mib", "cuda_peak_mib") if k in rs[0]})
        sides[side].update({k: rs[0][k] for k in ("mean_loss", "tokens_per_step", "label_tokens_per_step")})
        sides[side]["tokens_per_s_rounds"] = [r["tokens_per_s"] for r in rs]
    all_runs = runs["lit"] + runs["trl"]
    match = all(r["tokens_per_step"] == all_runs[0]["tokens_per_step"] and
                r["label_tokens_per_step"] == all_runs[0]["label_tokens_per_step"] for r in all_runs)
    if not match:
        print("WARNING: the two sides did not train on the same tokens per step", file=sys.stderr)
    lit, trl_ = sides["lit"], sides["trl"]
    out = {
        "benchmark": "sft_vs_trl",
        "settings": {"model": "embedded tiny GPT-2", "parameters": n_params, "train_file": "bundled:sft.jsonl",
                     "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps,
                     "warmup": args.warmup, "rounds": args.rounds, "lr": args.lr, "precision": "fp32",
                     "device": "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"},
        "lit": lit, "trl": trl_,
        "tokens_per_step_match": match,
        "tokens_per_s_ratio": lit["tokens_per_s"] / trl_["tokens_per_s"],
        "loop_tokens_per_s_ratio": lit["loop_tokens_per_s"] / trl_["loop_tokens_per_s"],
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                    "lightning": __import__("lightning").__version__},
    }
    timed = lit["tokens_per_step"][args.warmup:]
    print(f"{args.rounds} rounds x {args.steps} steps ({args.warmup} warm-up) per side, batch {args.batch_size}, "
          f"max_length {args.max_length}, {n_params} parameters, {args.threads} threads, {out['settings']['device']}")
    print(f"non-padding tokens per step, same on both sides: {match} (timed steps: mean {statistics.fmean(timed):.0f}, "
          f"min {min(timed)}, max {max(timed)}); mean loss lit {lit['mean_loss']:.4f}, trl {trl_['mean_loss']:.4f}")
    print("| side | tokens/s | loop tokens/s | ms/step | peak RSS MiB | RSS increase MiB | process s |")
    print("|---|---|---|---|---|---|---|")
    for name, s in (("lit-instruct", lit), ("TRL SFTTrainer", trl_)):
        print(f"| {name} | {s['tokens_per_s']:.0f} | {s['loop_tokens_per_s']:.0f} | {1000 * s['seconds_per_step']:.1f} | "
              f"{s['peak_rss_mib']:.0f} | {s['rss_increase_mib']:.0f} | {s['fit_seconds']:.1f} |")
    print(f"| **lit / TRL** | **{out['tokens_per_s_ratio']:.2f}x** | {out['loop_tokens_per_s_ratio']:.2f}x | | | | |")
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per side and round")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=3, help="processes per side (alternating lit, trl)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per demonstration (longer responses are cut)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each worker")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    parser.add_argument("--tiny", action="store_true", help="smoke-test size: 1 round, 3 steps, batch 2, max_length 64")
    parser.add_argument("--worker", choices=("lit", "trl"), help="run one side in this process; print one JSON line")
    parser.add_argument("--model-dir", help="(worker) the saved model, tokenizer and encoded rows of a driver")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.rounds, args.batch_size, args.max_length = 3, 1, 1, 2, 64
    if args.warmup >= args.steps or (args.worker and not args.model_dir):
        parser.error("--warmup must be below --steps, and --worker needs --model-dir")
    if args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
