"""PPO's old log-probs: the logits kept while sampling vs one recompute pass, in fp32 and under bf16 autocast.

``score_rollout(policy=None)`` turns the logits that ``generate`` kept into the old log-probs (no extra forward
pass); ``score_rollout(policy=model, chunks=...)`` recomputes them with one policy pass per first-epoch minibatch,
trimmed as the update trims it. ``PPOPtxModule(rollout_logprobs="auto")`` picks the first in ``32-true`` and the
second under any other precision. This script measures both, side by side, in fp32 and ``bf16-mixed``:

* accuracy: |old log-prob - the update's log-prob| per response token, where the update's log-prob is what
  ``ppo_update`` computes before any optimizer step (``logprobs_from_logits(response_logits(policy, minibatch))``,
  train mode, grad on, each first-epoch minibatch selected and trimmed as ``ppo_update`` does); and the first
  minibatch's ``approxkl`` and max |ratio - 1| as the real update logs them (``policy/first_minibatch_*``);
* cost: wall time of one PPO iteration split into generation, scoring (reference, critic, reward model, and the
  policy's recompute pass when on) and update (advantages + the minibatch loop), one PPO epoch, no ptx term.

One process; the models are the embedded GPT-2 (random init: the policy, its copy as the reference, a reward
model and critic with the policy's body), at the tiny configs' size (2 x 128, vocab 4096) and a larger one
(4 x 256). Each repeat draws 16 prompts from the bundled prompts.jsonl (default template, at most 128 prompt tokens)
and runs all four sides (fp32 / bf16 x sampling / recompute) from the same starting weights and the same sampling
seed, in a rotating order; figures are medians over repeats. ``bf16-mixed`` is ``torch.autocast("cpu",
torch.bfloat16, cache_enabled=False)`` around the whole iteration, as Lightning's plugin wraps ``training_step``
(with the autocast weight cache on, forwards after an ``optimizer.step`` in the same context would use stale
bf16 copies of the weights).

    python benchmarks/ppo_logprobs.py            # 2 sizes x 4 sides x 5 repeats (after 1 warm-up each)
    python benchmarks/ppo_logprobs.py --tiny     # smoke setting: one small size, 1 repeat, short responses

Prints a markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import random
import statistics
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIDES = [("fp32", "sampling"), ("fp32", "recompute"), ("bf16", "sampling"), ("bf16", "recompute")]


def precision_context(precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)  # as Lightning's bf16-mixed
    return contextlib.nullcontext()


def load_prompts(tokenizer, max_prompt_tokens: int) -> list[list[int]]:
    from lit_instruct.prompts import DEFAULT_TEMPLATE, PromptFormat, check_prompt_field
    from lit_instruct.records import read_rows

    fmt = PromptFormat.from_tokenizer(tokenizer, DEFAULT_TEMPLATE, "auto")
    prompts = []
    for _, row in read_rows("bundled:prompts.jsonl", check_prompt_field):
        ids = tokenizer(fmt.prompt(row["prompt"]), add_special_tokens=False)["input_ids"]
        if len(ids) <= max_prompt_tokens:
            prompts.append(ids)
    return prompts


class Models:
    """Policy, reference, reward model and critic at one size, with the trained ones' starting weights."""

    def __init__(self, tokenizer, n_layer: int, n_embd: int, n_head: int, seed: int) -> None:
        import torch

        from lit_instruct.models import TinyConfig, disable_dropout, load_causal_lm
        from lit_instruct.reward import RewardModel

        torch.manual_seed(seed)
        tiny = TinyConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
        self.policy = load_causal_lm("embedded", tokenizer, tiny=tiny)
        self.ref = load_causal_lm("embedded", tokenizer, tiny=tiny, trainable=False)
        self.ref.load_state_dict(self.policy.state_dict())
        self.rm = RewardModel.from_causal_lm("embedded", tokenizer, tiny=tiny)
        self.rm.backbone.load_state_dict(self.policy.transformer.state_dict())
        self.critic = RewardModel(copy.deepcopy(self.rm.backbone), tokenizer, head=copy.deepcopy(self.rm.head), head_bias=True)
        for model in (self.ref, self.rm):
            model.eval()
            model.requires_grad_(False)
        for model in (self.policy, self.ref, self.rm.backbone, self.critic.backbone):
            disable_dropout(model)
        self.start = {"policy": copy.deepcopy(self.policy.state_dict()), "critic": copy.deepcopy(self.critic.state_dict())}
        self.parameters = sum(p.numel() for p in self.policy.parameters())

    def reset(self):
        """Back to the starting weights, with a fresh optimizer (as ``ppo_ptx.ppo_optimizer``: Adam, lr 1e-5, eps 1e-5;
        not imported from there, which would import Lightning for nothing)."""
        import torch

        self.policy.load_state_dict(self.start["policy"])
        self.critic.load_state_dict(self.start["critic"])
        groups = [{"params": list(self.policy.parameters())}, {"params": list(self.critic.parameters())}]
        return torch.optim.Adam(groups, lr=1e-5, eps=1e-5)


def iteration(models: Models, tokenizer, prompts: list[list[int]], first_epoch: list, *, precision: str, mode: str,
              sample_seed: int, args) -> dict:
    """One PPO iteration as ``PPOPtxModule.training_step`` runs it (ptx off, one epoch), timed in three parts, with
    the accuracy probe (untimed) between scoring and update."""
    import torch

    from lit_instruct.batching import pad
    from lit_instruct.objectives import clipped_policy_loss, clipped_value_loss, gae, kl_penalized_rewards, masked_whiten
    from lit_instruct.rollout import critic_values, generate, logprobs_from_logits, response_logits, score_rollout

    optimizer = models.reset()
    policy, critic = models.policy, models.critic
    query = pad(prompts, tokenizer.pad_token_id, left=True)
    query_mask = pad([[1] * len(p) for p in prompts], 0, left=True)
    with precision_context(precision):
        # ------------------------------------------------------------------ rollout (PPOPtxModule.rollout)
        policy.eval()
        critic.eval()
        torch.manual_seed(sample_seed)
        t0 = time.perf_counter()
        rollout = generate(policy, query, query_mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           max_new_tokens=args.response_length, temperature=args.temperature, top_k=0, top_p=1.0)
        t1 = time.perf_counter()
        rollout = score_rollout(rollout, reference=models.ref, critic=critic, reward_model=models.rm, temperature=args.temperature,
                                missing_eos_penalty=-1.0, policy=policy if mode == "recompute" else None, chunks=list(first_epoch))
        t2 = time.perf_counter()
        policy.train()
        critic.train()

        # ------------------------------------------------------------------ accuracy probe (not timed)
        padding = rollout.padding()
        diffs, first_probe = [], None
        for rows in first_epoch:
            mb, r = rollout.select(rows).trimmed(padding[:, rows])
            with torch.enable_grad():
                lp = logprobs_from_logits(response_logits(policy, mb), mb.response, args.temperature).detach()
            if first_probe is None:
                first_probe = lp
            diffs.append((lp - mb.logprobs).abs()[mb.response_mask.bool()])
        diffs = torch.cat(diffs).double()

        # ------------------------------------------------------------------ advantages + update (ppo_update)
        t3 = time.perf_counter()
        mask = rollout.response_mask.float()
        rewards, _ = kl_penalized_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, mask, args.kl_coef)
        advantages, returns = gae(rewards, rollout.values, mask, 1.0, 0.95)
        advantages = masked_whiten(advantages, mask)
        padding = rollout.padding()
        first = {}
        for rows in first_epoch:
            mb, r = rollout.select(rows).trimmed(padding[:, rows])
            mb_advantages, mb_returns = advantages[rows, :r], returns[rows, :r]
            mb_mask = mb.response_mask.float()
            logits = response_logits(policy, mb)
            logprobs = logprobs_from_logits(logits, mb.response, args.temperature)
            del logits
            pol = clipped_policy_loss(logprobs, mb.logprobs, mb_advantages, mb_mask, 0.2)
            if not first:
                ratio_error = ((logprobs.detach() - mb.logprobs).exp() - 1).abs() * mb_mask
                first = {"approxkl": float(pol["approxkl"].detach()), "ratio_error": float(ratio_error.max()),
                         "probe_vs_update": float((logprobs.detach() - first_probe).abs().max())}
            values = critic_values(critic, mb)
            value = clipped_value_loss(values, mb.values, mb_returns, mb_mask, 0.2)
            loss = pol["loss"] + 0.1 * value["loss"]
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
        t4 = time.perf_counter()
    return {"generation": t1 - t0, "scoring": t2 - t1, "update": t4 - t3, "iteration": (t1 - t0) + (t2 - t1) + (t4 - t3),
            "max_abs": float(diffs.max()), "mean_abs": float(diffs.mean()), **first,
            "response_length": float(mask.sum(1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2x128,4x256", help="comma-separated LAYERSxWIDTH of the embedded GPT-2")
    parser.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=32, help="max new tokens")
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the four sides, per size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="smoke setting: 2 x 64, 8 prompts x 8 tokens, 1 repeat")
    args = parser.parse_args()
    if args.tiny:
        args.sizes, args.batch, args.minibatch, args.response_length, args.repeats, args.warmup = "2x64", 8, 4, 8, 1, 0

    import torch

    from lit_instruct.models import load_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer("embedded")
    prompts = load_prompts(tokenizer, args.max_prompt_tokens)
    results = {}
    for size in args.sizes.split(","):
        n_layer, n_embd = (int(x) for x in size.lower().split("x"))
        models = Models(tokenizer, n_layer, n_embd, n_head=4, seed=args.seed)  # TinyConfig's 4 heads
        runs = {side: [] for side in SIDES}
        for round_ in range(args.warmup + args.repeats):
            rng = random.Random(args.seed * 1000 + round_)
            batch = rng.sample(prompts, args.batch)
            first_epoch = list(torch.randperm(args.batch, generator=torch.Generator().manual_seed(round_)).split(args.minibatch))
            order = SIDES[round_ % len(SIDES):] + SIDES[: round_ % len(SIDES)]  # rotate who goes first
            for precision, mode in order:
                out = iteration(models, tokenizer, batch, first_epoch, precision=precision, mode=mode,
                                sample_seed=args.seed * 1000 + round_, args=args)
                if round_ >= args.warmup:
                    runs[(precision, mode)].append(out)
            print(f"[{size}] round {round_ + 1}/{args.warmup + args.repeats}"
                  f"{' (warm-up)' if round_ < args.warmup else ''}: "
                  + ", ".join(f"{p}/{m} {runs[(p, m)][-1]['iteration']:.2f}s" for p, m in SIDES if runs[(p, m)]),
                  file=sys.stderr, flush=True)
        for side, rounds in runs.items():
            med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            med["worst_max_abs"] = max(r["max_abs"] for r in rounds)
            med["worst_ratio_error"] = max(r["ratio_error"] for r in rounds)
            med["worst_probe_vs_update"] = max(r["probe_vs_update"] for r in rounds)
            results[f"{size} {side[0]} {side[1]}"] = {"size": size, "precision": side[0], "mode": side[1],
                                                      "policy_parameters": models.parameters, **med}

    print("| size | precision | old log-probs | max \\|Δ logp\\| | mean \\|Δ logp\\| | first-mb approxkl | first-mb max \\|ratio-1\\| "
          "| generation s | scoring s | update s | iteration s | recompute: + scoring s (share of iteration) |")
    print("|" + "---|" * 12)
    for key, r in results.items():
        extra = ""
        if r["mode"] == "recompute":
            base = results[f"{r['size']} {r['precision']} sampling"]
            delta = r["scoring"] - base["scoring"]
            extra = f"+{delta:.3f} ({100 * delta / r['iteration']:.1f}%)"
        print(f"| {r['size']} | {'32-true' if r['precision'] == 'fp32' else 'bf16-mixed'} | {r['mode']} | {r['max_abs']:.2e} "
              f"| {r['mean_abs']:.2e} | {r['approxkl']:.2e} | {r['ratio_error']:.2e} | {r['generation']:.3f} | {r['scoring']:.3f} "
              f"| {r['update']:.3f} | {r['iteration']:.3f} | {extra} |")
    print(json.dumps({"benchmark": "ppo_logprobs", "settings": vars(args), "results": results,
                      "machine": {"platform": platform.platform(), "processor": platform.machine(), "torch": torch.__version__,
                                  "threads": args.threads, "cpus": os.cpu_count()}}))


if __name__ == "__main__":
    main()
