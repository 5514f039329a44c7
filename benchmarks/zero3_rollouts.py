"""PPO rollouts under ZeRO-3 on 2 CPU processes: generation with per-layer gathering (each layer's parameters
all-gathered for every generated token, the processes stepping together) vs the policy gathered once per rollout
(``model.rollout.gather_for_generation``, DeepSpeed's ``GatheredParameters``).

One Lightning fit of the PPO stage with ``CPUDeepSpeedStrategy(stage=3)`` on 2 CPU processes (as
``configs/trainer/cpu_zero3.yaml`` and the DeepSpeed tests run), with a callback that, once DeepSpeed has sharded the
four models, times ``PPOModule.rollout`` both ways on the same prompts (each process its own) from the same seed,
alternating which goes first, then stops the fit. The policy is the embedded GPT-2 at a small size (default 4 layers
x 256, vocab 4096, random init: it rarely ends early, so responses run to ``--max-new-tokens``), the reference its copy,
the reward model and critic with its body. Reported: generation time (the slower process's), whole-rollout time
(scoring per-layer both ways), their ratios, and whether both ways sampled the same tokens on both processes.

    python benchmarks/zero3_rollouts.py              # 3 rounds of 16 prompts x 32 new tokens per process
    python benchmarks/zero3_rollouts.py --tiny       # smoke setting

Prints a markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
MODES = ("per-layer", "gathered")


def prepare(folder: Path, args) -> None:
    """The policy (an SFT-like export) and a reward-model export with the policy's body."""
    import torch

    from lit_instruct.models.causal_lm import TinyConfig, load_causal_lm, load_tokenizer
    from lit_instruct.models.reward_model import RewardModel

    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded")
    tiny = TinyConfig(n_layer=args.layers, n_embd=args.width, n_head=max(args.width // 64, 1), n_positions=256)
    policy = load_causal_lm("embedded", tokenizer, tiny=tiny)
    policy.save_pretrained(folder / "policy")
    tokenizer.save_pretrained(folder / "policy")
    rm = RewardModel.from_causal_lm(str(folder / "policy"), tokenizer)
    rm.save_pretrained(folder / "reward")
    tokenizer.save_pretrained(folder / "reward")
    (folder / "reward" / "lit_instruct.json").write_text(json.dumps({"stage": "reward", "normalization": {"shift": 0.0}}))


def worker(folder: Path, args) -> None:
    """Runs in both processes (Lightning starts the second with this command line)."""
    import lightning as L
    import torch

    from lit_instruct import CPUDeepSpeedStrategy
    from lit_instruct.data.prompt_format import format_prompt
    from lit_instruct.data.prompts import PPODataModule
    from lit_instruct.data.records import read_rows
    from lit_instruct.stages.ppo import PPOModule
    from lit_instruct.stages.ppo_settings import (
        PPOUpdate,
        PtxMix,
        RolloutSettings,
        Sampling,
    )

    class Measure(L.Callback):
        def on_train_start(self, trainer, module) -> None:
            rank, tokenizer = trainer.global_rank, module.tokenizer
            texts = [row["prompt"] for _, row in read_rows("bundled:prompts.jsonl", lambda row: None)]
            texts = texts[rank * args.prompts : (rank + 1) * args.prompts]  # each process its own prompts
            prompts = [tokenizer(format_prompt(t), add_special_tokens=False)["input_ids"][-48:] for t in texts]
            times = {mode: {"generation": [], "rollout": []} for mode in MODES}
            same = True
            for round_ in range(args.rounds + 1):  # round 0: warm-up (not timed)
                responses = {}
                for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                    module.rollout_settings.gather_for_generation = mode == "gathered"
                    torch.manual_seed(args.seed + rank)
                    trainer.strategy.barrier()
                    start = time.perf_counter()
                    rollout = module.rollout(prompts, args.max_new_tokens)
                    seconds = torch.tensor([module.rollout_timing["generation"], time.perf_counter() - start])
                    slowest = module.all_gather(seconds).reshape(-1, 2).max(0).values  # the slower process's
                    if round_:
                        times[mode]["generation"].append(float(slowest[0]))
                        times[mode]["rollout"].append(float(slowest[1]))
                    responses[mode] = rollout.response
                a, b = responses["per-layer"], responses["gathered"]
                equal = torch.tensor(float(a.shape == b.shape and torch.equal(a, b)))
                same = same and bool(module.all_gather(equal).min() == 1)
            if rank == 0:
                result = {mode: {k: statistics.median(v) for k, v in t.items()} for mode, t in times.items()}
                result["rounds"] = {mode: t["generation"] for mode, t in times.items()}
                result["same_tokens"] = same
                result["response_length"] = float(rollout.response_mask.sum(1).float().mean())
                print("RESULT " + json.dumps(result), flush=True)
            module.episodes = module.hparams.total_episodes  # done: the fit ends before its first iteration

    L.seed_everything(args.seed, verbose=False)
    module = PPOModule(
        policy_name_or_path=str(folder / "policy"), reward_model_path=str(folder / "reward"), total_episodes=1,
        sampling=Sampling(max_new_tokens=args.max_new_tokens), ppo=PPOUpdate(minibatch_size=args.prompts),
        ptx=PtxMix(ptx_coef=0.0), rollout=RolloutSettings(generation_batch_size=args.generation_batch_size),
        missing_eos_penalty=None, num_sample_prompts=0, warmup_steps=0, export_dir=str(folder / "export"),
    )
    data = PPODataModule(rollout_batch_size=args.prompts, max_val_prompts=1, max_val_pretrain_blocks=1)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=CPUDeepSpeedStrategy(stage=3), precision="32-true",
                        max_epochs=-1, logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Measure()],
                        default_root_dir=str(folder / "run"))
    trainer.fit(module, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per process per rollout")
    parser.add_argument("--generation-batch-size", type=int, default=None, help="rollout.generation_batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="smoke setting: 2 layers x 64, 4 prompts x 4 tokens, 1 round")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.layers, args.width, args.prompts, args.max_new_tokens, args.rounds = 2, 64, 4, 4, 1
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        worker(Path(args.worker), args)
        return
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp), args)
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", tmp], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"worker failed:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    per_layer, gathered = result["per-layer"], result["gathered"]
    result["generation_speedup"] = per_layer["generation"] / gathered["generation"]
    result["rollout_speedup"] = per_layer["rollout"] / gathered["rollout"]
    result["settings"] = {k: v for k, v in vars(args).items() if k != "worker"}
    print(f"GPT-2 {args.layers} x {args.width}, {args.prompts} prompts x {args.max_new_tokens} new tokens per process, "
          f"2 CPU processes, ZeRO-3; medians of {args.rounds} rounds (the slower process's seconds)\n")
    print("| generation | generation s | rollout s (with scoring) |\n|---|---|---|")
    for mode in MODES:
        print(f"| {mode} | {result[mode]['generation']:.2f} | {result[mode]['rollout']:.2f} |")
    print(f"\nratio per-layer / gathered: generation {result['generation_speedup']:.2f}x, rollout {result['rollout_speedup']:.2f}x; "
          f"same tokens: {result['same_tokens']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
