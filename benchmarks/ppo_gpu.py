"""PPO on one GPU at Pythia-1.4B's shape: lit-instruct's ``PPOModule`` (ptx_coef 0) vs TRL's PPO trainer, bf16.

The GPU counterpart of ``ppo_vs_trl.py`` (same structure: one starting point written once, each side's real trainer
-- a Lightning ``Trainer.fit``; TRL ``PPOTrainer.train`` -- in a fresh process, sides alternating round by round).
Nothing is downloaded: the policy is a random-init ``GPTNeoXForCausalLM`` with Pythia-1.4B's config (hidden 2048,
24 layers, 16 heads, intermediate 8192, vocabulary 50304, rotary_pct 0.25, parallel residual, untied embeddings)
and the embedded tokenizer; its copy is the frozen reference, and a ``GPTNeoXForSequenceClassification`` on the
same body (lit-instruct's reward export, which TRL reads as it is) is the reward model and each side's critic
start. Weights are written in bf16.

Work per iteration is fixed: every prompt is exactly ``--prompt-length`` tokens (formatted with the prompt
template, same ids on both sides) and every response exactly ``--response-length`` tokens (EOS is masked out until
then on both sides: ``min_new_tokens = max_new_tokens``), so when a sampled EOS would stop a row does not change
the work. Same rollout batch, minibatch, PPO epochs, temperature 1, kl_coef 0.02, no EOS penalty, no ptx, AdamW
(lr 3e-6, eps 1e-5, no weight decay, foreach), one optimizer step per minibatch on both sides.

Precision (``--precision``):
  bf16-mixed  trained models (policy, critic) in fp32 with bf16 autocast, frozen ones (reference, reward) in bf16:
              lit-instruct's GPU configs (``configs/ppo/pythia-1.4b.yaml`` + ``precision: bf16-mixed``); TRL with
              ``bf16=True`` and the same dtypes.
  bf16-true   all four models in bf16 weights, the optimizer on bf16 (lit ``precision: bf16-true``, ``load_dtype:
              bfloat16``; TRL with the four models loaded in bf16 and ``bf16=True``).

Per iteration the wall time is split into generation, scoring (the no-grad forward passes over the rollout) and the
rest (advantages and the update); a CUDA synchronize closes each timed part on both sides. Peak GPU memory is
``torch.cuda.max_memory_allocated`` over the worker's whole run (model loading included).

    python benchmarks/ppo_gpu.py --tiny                                   # CPU or GPU smoke: a tiny GPT-NeoX
    python benchmarks/ppo_gpu.py --batch 32 --minibatch 8 --gradient-checkpointing --precision bf16-mixed
    python benchmarks/ppo_gpu.py --batch 32 --minibatch 8 --precision bf16-true --models /tmp/ppo-gpu-models
    python benchmarks/ppo_gpu.py --batch 32 --minibatch 8 --gradient-checkpointing --lora 16 --tag lora16   # LoRA

Each side's worker spent 40-55 s beyond its iterations (warm-up included) at this shape on an H100 (imports,
loading four models, data and trainer set-up): keep ``--side-timeout`` well above that plus the iterations.

Prints a table, then one JSON line (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

PYTHIA_1_4B = {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 8192,
               "vocab_size": 50304, "max_position_embeddings": 2048}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": 4352,
        "max_position_embeddings": 256}
LR, EPS, KL_COEF = 3e-6, 1e-5, 0.02


def device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------- start
def prepare(folder: Path, args) -> dict:
    """Write the random-init policy, the reward model (also each critic's start) and the prompts, all in bf16."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from lit_instruct.data.prompt_format import format_prompt
    from lit_instruct.models.causal_lm import load_tokenizer
    from lit_instruct.models.reward_model import RewardModel

    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded")
    shape = TINY if args.tiny else PYTHIA_1_4B
    config = GPTNeoXConfig(**shape, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
                           tie_word_embeddings=False, hidden_act="gelu", layer_norm_eps=1e-5, initializer_range=0.02,
                           attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    start = time.perf_counter()
    with torch.device(device_type()):  # random init on the GPU: seconds, not minutes
        policy = GPTNeoXForCausalLM._from_config(config, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in policy.parameters())
    policy.save_pretrained(folder / "policy")
    tokenizer.save_pretrained(folder / "policy")
    rm = RewardModel(policy.gpt_neox, tokenizer)  # the reward model and the critics start from the policy's body
    rm.save_pretrained(folder / "reward")
    tokenizer.save_pretrained(folder / "reward")
    (folder / "reward" / "lit_instruct.json").write_text(json.dumps({"stage": "reward", "normalization": {"shift": 0.0, "note": "benchmark"}}))
    del policy, rm

    # Prompts of exactly prompt_length tokens once formatted: runs of words from the bundled pretraining text.
    words = (Path(__file__).resolve().parent.parent / "lit_instruct" / "bundled" / "pretrain.txt").read_text().split()
    def length(text: str) -> int:
        return len(tokenizer(format_prompt(text), add_special_tokens=False)["input_ids"])

    texts, ids, at, n = [], [], 0, args.prompt_length // 2
    while len(texts) < args.num_prompts:
        if at + 4 * args.prompt_length > len(words):
            raise RuntimeError("the bundled text ran out before enough prompts were cut")
        while length(" ".join(words[at : at + n])) < args.prompt_length:
            n += 1
        while n > 1 and length(" ".join(words[at : at + n])) > args.prompt_length:
            n -= 1
        text = " ".join(words[at : at + n])
        encoded = tokenizer(format_prompt(text), add_special_tokens=False)["input_ids"]
        if len(encoded) == args.prompt_length and tokenizer.pad_token_id not in encoded and tokenizer.eos_token_id not in encoded:
            texts.append(text)
            ids.append(encoded)
        at += max(n // 3, 1)
    with (folder / "prompts.jsonl").open("w") as f:
        for text in texts:
            f.write(json.dumps({"prompt": text}) + "\n")
    (folder / "prompt_ids.json").write_text(json.dumps(ids))
    info = {"parameters": parameters, "config": config.to_diff_dict(), "prepare_s": time.perf_counter() - start,
            "prompts": len(texts)}
    (folder / "prepared.json").write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------------------------------------------------- lit-instruct
def worker_lit(folder: Path, args) -> dict:
    import lightning as L
    import torch

    import lit_instruct.rollout as rollout_lib
    from lit_instruct.data.prompts import PPODataModule
    from lit_instruct.stages.ppo import PPOModule
    from lit_instruct.stages.ppo_settings import KLPenalty, PPOUpdate, PtxMix, Sampling

    # A synchronize closes generation and scoring (make_rollout reads the clock right after each).
    def synced(fn):
        def wrapper(*a, **k):
            out = fn(*a, **k)
            sync()
            return out
        return wrapper

    rollout_lib.generate, rollout_lib.score_rollout = synced(rollout_lib.generate), synced(rollout_lib.score_rollout)

    iterations = args.warmup + args.iterations
    times, splits, metrics = [], [], []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync()
            self.start = time.perf_counter()
            self.prompt_lengths = sorted({len(p) for p in batch})

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync()
            times.append(time.perf_counter() - self.start)
            splits.append(dict(getattr(module, "rollout_timing", {})))
            m = trainer.callback_metrics
            metrics.append({"response_length": float(m["rollout/response_length"]), "eos_fraction": float(m["rollout/eos_fraction"]),
                            "prompt_lengths": self.prompt_lengths, "batch": len(batch)})

    L.seed_everything(args.seed, verbose=False)
    true_bf16 = args.precision == "bf16-true"
    module = PPOModule(
        policy_name_or_path=str(folder / "policy"), reward_model_path=str(folder / "reward"),
        total_episodes=iterations * args.batch, kl=KLPenalty(kl_coef=KL_COEF), ptx=PtxMix(ptx_coef=0.0),
        ppo=PPOUpdate(ppo_epochs=args.ppo_epochs, minibatch_size=args.minibatch),
        sampling=Sampling(max_new_tokens=args.response_length, temperature=1.0), missing_eos_penalty=None,
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR, eps=EPS, weight_decay=0.0), critic_lr=LR, warmup_steps=0,
        load_dtype="bfloat16" if true_bf16 else "float32", frozen_dtype="bfloat16", export_dtype="bfloat16",
        gradient_checkpointing=args.gradient_checkpointing, num_sample_prompts=0,
        export_dir=str(folder / f"lit-export-{os.getpid()}"),
        lora=lora_settings(args),
    )
    module.policy.generation_config.min_new_tokens = args.response_length  # no EOS before the last token: fixed work
    module.on_fit_end = lambda: None  # no export of the weights at the end (not timed either way; saves device time)
    data = PPODataModule(prompts_file=str(folder / "prompts.jsonl"), rollout_batch_size=args.batch, val_fraction=0.1,
                         max_prompt_tokens=args.prompt_length, max_val_prompts=1, max_val_pretrain_blocks=1)
    trainer = L.Trainer(accelerator="gpu" if device_type() == "cuda" else "cpu", devices=1, precision=args.precision,
                        max_epochs=-1, logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timer()],
                        default_root_dir=str(folder / "lit-run"))
    trainer.fit(module, data)
    return {"times": times, "splits": splits, "metrics": metrics}


def lora_settings(args):
    """lit-instruct's LoRA for ``--lora R``: adapters of rank R (alpha 2R, no dropout) on every linear layer of the
    policy and of the critic (its value head in full); the reference is the policy with its adapters off."""
    if not args.lora:
        return None
    from lit_instruct.models.lora import LoraSettings

    return LoraSettings(r=args.lora, alpha=2 * args.lora, dropout=0.0)


# ------------------------------------------------------------------------------------------------------------------ TRL
def worker_trl(folder: Path, args) -> dict:
    import torch
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        GenerationConfig,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder / "policy", padding_side="left")
    ids = json.loads((folder / "prompt_ids.json").read_text())
    dataset = Dataset.from_dict({"input_ids": ids})
    iterations = args.warmup + args.iterations
    cuda = device_type() == "cuda"
    # per_device_train_batch_size = the rollout batch and no gradient accumulation: TRL's loop then takes
    # batch / minibatch optimizer steps of `minibatch` episodes each, as lit-instruct does.
    config = PPOConfig(
        output_dir=str(folder / "trl-run"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        num_mini_batches=args.batch // args.minibatch, num_ppo_epochs=args.ppo_epochs, response_length=args.response_length,
        total_episodes=iterations * args.batch, kl_coef=KL_COEF, missing_eos_penalty=None, stop_token="eos", temperature=1.0,
        learning_rate=LR, adam_epsilon=EPS, weight_decay=0.0, optim="adamw_torch", lr_scheduler_type="constant",
        local_rollout_forward_batch_size=args.batch, num_sample_generations=0, report_to="none", use_cpu=not cuda,
        bf16=True, save_strategy="no", logging_steps=1, seed=args.seed, disable_tqdm=True,
    )
    # No EOS before the last token (fixed work): TRL builds its GenerationConfig inside train().
    ppo_module.GenerationConfig = lambda **kw: GenerationConfig(**kw, min_new_tokens=args.response_length,
                                                                 eos_token_id=tokenizer.eos_token_id,
                                                                 pad_token_id=tokenizer.pad_token_id)
    # Time split: wrap the functions TRL's loop calls; no-grad forwards are rollout scoring, the rest is the update.
    split = {"generation": 0.0, "scoring": 0.0}

    def timed(name, fn, only_no_grad=False):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if not only_no_grad or not torch.is_grad_enabled():
                    sync()
                    split[name] += time.perf_counter() - start
        return wrapper

    ppo_module.batch_generation = timed("generation", ppo_module.batch_generation)
    ppo_module.forward = timed("scoring", ppo_module.forward, only_no_grad=True)
    ppo_module.get_reward = timed("scoring", ppo_module.get_reward, only_no_grad=True)
    times, splits, metrics = [], [], []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync()
            self.last = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            now = time.perf_counter()
            times.append(now - self.last)
            splits.append(dict(split))
            split.update(generation=0.0, scoring=0.0)
            self.last = now

        def on_log(self, args_, state, control, logs=None, **k):
            if logs and "val/num_eos_tokens" in logs:
                metrics.append({"num_eos_tokens": logs["val/num_eos_tokens"]})

    train_dtype = torch.bfloat16 if args.precision == "bf16-true" else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(folder / "policy", dtype=train_dtype)
    value = AutoModelForSequenceClassification.from_pretrained(folder / "reward", dtype=train_dtype)
    if args.gradient_checkpointing:
        for model in (policy, value):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        # TRL 0.29.1 turns checkpointing off around generation through methods its PolicyAndValueWrapper lacks
        # (AttributeError: huggingface/trl#4954); this is the fix merged after the release (trl#5245), applied here.
        class PolicyAndValueWrapper(ppo_module.PolicyAndValueWrapper):
            def gradient_checkpointing_enable(self, **kwargs):
                kwargs.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
                self.policy.gradient_checkpointing_enable(**kwargs)
                self.is_gradient_checkpointing = True

            def gradient_checkpointing_disable(self):
                self.policy.gradient_checkpointing_disable()
                self.is_gradient_checkpointing = False

        ppo_module.PolicyAndValueWrapper = PolicyAndValueWrapper
    peft_config = None
    if args.lora:  # TRL: adapters on the policy, the reference is the policy with them off; its critic trains in full
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, peft_config=peft_config,
        ref_model=None if args.lora else AutoModelForCausalLM.from_pretrained(folder / "policy", dtype=torch.bfloat16),
        reward_model=AutoModelForSequenceClassification.from_pretrained(folder / "reward", dtype=torch.bfloat16),
        value_model=value, train_dataset=dataset, callbacks=[Timer()],
    )
    trainer.train()
    return {"times": times, "splits": splits, "metrics": metrics}


# --------------------------------------------------------------------------------------------------------------- driver
def worker(args) -> None:
    import torch

    folder = Path(args.folder)
    if args.worker == "prepare":
        print("RESULT " + json.dumps(prepare(folder, args)), flush=True)
        return
    start = time.perf_counter()
    try:
        result = worker_lit(folder, args) if args.worker == "lit" else worker_trl(folder, args)
    except torch.OutOfMemoryError as error:
        result = {"error": f"CUDA out of memory: {str(error).splitlines()[0]}"}
    result["worker_s"] = time.perf_counter() - start
    if torch.cuda.is_available():
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    print("RESULT " + json.dumps(result), flush=True)


def summarise(result: dict, args) -> dict:
    if "error" in result:
        return {"error": result["error"], "peak_allocated_gib": result.get("peak_allocated_gib")}
    keep = slice(args.warmup, None)
    times, splits = result["times"][keep], result["splits"][keep]
    total = sum(times)
    gen = sum(s.get("generation", 0.0) for s in splits)
    score = sum(s.get("scoring", 0.0) for s in splits)
    return {"episodes_per_s": len(times) * args.batch / total, "iteration_s": total / len(times),
            "generation_s": gen / len(times), "scoring_s": score / len(times), "update_s": (total - gen - score) / len(times),
            "iterations_s": [round(t, 3) for t in result["times"]], "timed_iterations": len(times),
            "peak_allocated_gib": result.get("peak_allocated_gib"), "peak_reserved_gib": result.get("peak_reserved_gib"),
            "worker_s": result.get("worker_s"), "checks": result["metrics"]}


def run_worker(kind: str, folder: Path, args, passthrough: list[str]) -> tuple[dict | None, str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", kind, "--folder", str(folder), *passthrough],
                              capture_output=True, text=True, env=env, timeout=args.side_timeout, check=False)
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else (error.stderr or "")
        return None, f"timed out after {args.side_timeout} s (--side-timeout); stderr tail:\n{stderr[-3000:]}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return None, f"exit {done.returncode}; stderr tail:\n{done.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):]), done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="episodes (prompts) per PPO iteration")
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=256)
    parser.add_argument("--response-length", type=int, default=256)
    parser.add_argument("--precision", choices=["bf16-mixed", "bf16-true"], default="bf16-mixed")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on the policy and the critic, both sides")
    parser.add_argument("--iterations", type=int, default=3, help="timed PPO iterations per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations at the start of each round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sides", default="lit,trl", help="comma-separated: lit, trl")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full fine-tuning); lit: policy and critic, "
                                                             "TRL: the policy (its critic in full); the reference is the policy, adapters off")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", help="folder for the starting point (written once, reused if present); default: a temporary one")
    parser.add_argument("--side-timeout", type=int, default=600, help="seconds before a side's worker is stopped")
    parser.add_argument("--out", help="also write the JSON line here")
    parser.add_argument("--tag", default="", help="a label for this setting in the output")
    parser.add_argument("--tiny", action="store_true", help="smoke setting: a 2 x 64 GPT-NeoX, 32 + 16 tokens, 8 prompts")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.minibatch, args.prompt_length, args.response_length = 8, 4, 32, 16
        args.iterations, args.warmup, args.num_prompts = 2, 1, 16
    if args.worker:
        worker(args)
        return

    passthrough = [f"--batch={args.batch}", f"--minibatch={args.minibatch}", f"--ppo-epochs={args.ppo_epochs}",
                   f"--prompt-length={args.prompt_length}", f"--response-length={args.response_length}",
                   f"--precision={args.precision}", f"--iterations={args.iterations}", f"--warmup={args.warmup}",
                   f"--num-prompts={args.num_prompts}", f"--seed={args.seed}"]
    passthrough += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    passthrough += ["--tiny"] if args.tiny else []
    sides = [s for s in args.sides.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.models) if args.models else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "prepared.json").is_file():
            start = time.perf_counter()
            prepared, err = run_worker("prepare", folder, args, passthrough)
            if prepared is None:
                sys.exit(f"prepare failed: {err}")
            print(f"prepared {prepared['parameters'] / 1e9:.3f}B-parameter policy and {prepared['prompts']} prompts "
                  f"in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        prepared = json.loads((folder / "prepared.json").read_text())
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        failures: dict[str, str] = {}
        for round_ in range(args.rounds):
            for side in sides:
                result, log = run_worker(side, folder, args, passthrough)
                if result is None:
                    failures[side] = log
                    print(f"round {round_ + 1} {side}: FAILED {log}", file=sys.stderr, flush=True)
                    continue
                runs[side].append(summarise(result, args))
                r = runs[side][-1]
                print(f"round {round_ + 1} {side}: " + (r["error"] if "error" in r else
                      f"{r['episodes_per_s']:.2f} episodes/s, iterations {r['iterations_s']} s, peak {r['peak_allocated_gib']} GiB, "
                      f"worker {r['worker_s']:.0f} s"),
                      file=sys.stderr, flush=True)
    import torch

    results = {}
    for side, rounds in runs.items():
        ok = [r for r in rounds if "error" not in r]
        if not ok:
            log = failures.get(side, "no result").strip().splitlines()
            error = rounds[0]["error"] if rounds else (log[0] if log[0].startswith("timed out") else log[-1])
            results[side] = {"error": error,
                             "peak_allocated_gib": rounds[0].get("peak_allocated_gib") if rounds else None}
            continue
        keys = ("episodes_per_s", "iteration_s", "generation_s", "scoring_s", "update_s")
        results[side] = {key: statistics.median(r[key] for r in ok) for key in keys}
        results[side] |= {"peak_allocated_gib": max(r["peak_allocated_gib"] or 0 for r in ok),
                          "peak_reserved_gib": max(r["peak_reserved_gib"] or 0 for r in ok),
                          "rounds": [round(r["episodes_per_s"], 3) for r in ok], "iterations_s": [r["iterations_s"] for r in ok],
                          "checks": ok[-1]["checks"]}
    label = {"lit": "lit-instruct", "trl": "TRL 0.29.1"}
    print(f"\nsetting {args.tag or ''}: {args.batch} prompts x ({args.prompt_length} + {args.response_length}) tokens, minibatch "
          f"{args.minibatch}, {args.ppo_epochs} epoch, {args.precision}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}")
    print("| side | episodes/s | s/iteration | generation | scoring | update + rest | peak GiB allocated | peak GiB reserved |\n"
          "|---|---|---|---|---|---|---|---|")
    for side, r in results.items():
        if "error" in r:
            print(f"| {label.get(side, side)} | {r['error'][:120]} | | | | | {r.get('peak_allocated_gib') or ''} | |")
            continue
        print(f"| {label.get(side, side)} | {r['episodes_per_s']:.2f} | {r['iteration_s']:.2f} | {r['generation_s']:.2f} | "
              f"{r['scoring_s']:.2f} | {r['update_s']:.2f} | {r['peak_allocated_gib']:.1f} | {r['peak_reserved_gib']:.1f} |")
    ok = all("error" not in results.get(s, {"error": 1}) for s in ("lit", "trl"))
    ratio = results["lit"]["episodes_per_s"] / results["trl"]["episodes_per_s"] if ok else None
    if ratio:
        print(f"\nlit-instruct / TRL episodes per second: {ratio:.2f}x")
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "trl", "lightning", "accelerate"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001  (a side not installed)
            versions[name] = None
    line = json.dumps({"benchmark": "ppo_gpu", "tag": args.tag,
                       "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "folder", "models", "out")},
                       "model": {"parameters": prepared["parameters"], "config": prepared["config"]},
                       "results": results, "episodes_per_s_ratio": ratio, "failures": failures,
                       "machine": {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                                   "platform": platform.platform(), **versions}})
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
