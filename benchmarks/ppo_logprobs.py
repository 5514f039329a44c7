"""PPO's old log-probs: the logits kept while sampling vs one recompute pass, in fp32 and under bf16 autocast.

``score_rollout(policy=None)`` turns the logits that ``generate`` kept into the old log-probs (no extra forward
pass); ``score_rollout(policy=model, chunks=...)`` recomputes them with one policy pass per first-epoch minibatch,
trimmed as the update trims it. ``PPOModule(ppo=PPOUpdate(rollout_logprobs="auto"))`` picks the first in ``32-true`` and the
second under any other precision. This script measures both, side by side, in fp32 and ``bf16-mixed``:

* accuracy: |old log-prob - the update's log-prob| per response token of the first PPO minibatch, where the
  update's log-prob is what ``ppo_update`` computes there before any optimizer step
  (``logprobs_from_logits(response_logits(policy, minibatch))``, train mode, grad on, the minibatch selected and
  trimmed as ``ppo_update`` does), and that minibatch's ``approxkl`` and max |ratio - 1| (what the module logs as
  ``policy/first_minibatch_approxkl`` / ``policy/first_minibatch_ratio_error``); 0 means the first ratio is exactly 1;
* cost: wall time of one PPO iteration split into generation, scoring (reference, critic, reward model, and the
  policy's recompute pass when on) and update (advantages + the minibatch loop), one PPO epoch, no ptx term.

One process; the models are the embedded GPT-2 (random init: the policy, its copy as the reference, a reward
model and critic with the policy's body), at the tiny configs' size (2 x 128, vocab 4096) and a larger one
(4 x 256). Each round draws 16 prompts from the bundled prompts.jsonl (default template, at most 128 prompt tokens)
and runs both precisions (which goes first alternates), each from the same starting weights and sampling seed: one
generation, then the scoring step both ways on that same rollout, back to back (which goes first alternates), then
one update. The update's work does not depend on where the old log-probs came from (same weights, minibatches and
shapes; only values in the loss differ), so it runs once and both modes are compared with its first minibatch.
Figures are medians over rounds; the recompute pass's cost is the median over rounds of the paired difference in
scoring time (and of its share of that round's iteration with the recompute). ``bf16-mixed`` is
``torch.autocast("cpu", torch.bfloat16, cache_enabled=False)`` around the whole iteration, as Lightning's plugin
wraps ``training_step`` (with the autocast weight cache on, forwards after an ``optimizer.step`` in the same context
would use stale bf16 copies of the weights).

    python benchmarks/ppo_logprobs.py            # 2 sizes x 2 precisions x 2 modes, 3 rounds (after a small warm-up)
    python benchmarks/ppo_logprobs.py --tiny     # smoke setting: one small size, 1 round, short responses

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

PRECISIONS = ("fp32", "bf16")
MODES = ("sampling", "recompute")


def precision_context(precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)  # as Lightning's bf16-mixed
    return contextlib.nullcontext()


def load_prompts(tokenizer, max_prompt_tokens: int) -> list[list[int]]:
    from lit_instruct.data.prompt_format import (
        DEFAULT_TEMPLATE,
        PromptFormat,
        check_prompt_field,
    )
    from lit_instruct.data.records import read_rows

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

        from lit_instruct.models.causal_lm import (
            TinyConfig,
            disable_dropout,
            load_causal_lm,
        )
        from lit_instruct.models.reward_model import RewardModel

        torch.manual_seed(seed)
        tiny = TinyConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
        self.policy = load_causal_lm("embedded", tokenizer, tiny=tiny)
        self.reference = load_causal_lm("embedded", tokenizer, tiny=tiny, trainable=False)
        self.reference.load_state_dict(self.policy.state_dict())
        self.reward_model = RewardModel.from_causal_lm("embedded", tokenizer, tiny=tiny)
        self.reward_model.backbone.load_state_dict(self.policy.transformer.state_dict())
        self.critic = RewardModel(copy.deepcopy(self.reward_model.backbone), tokenizer, head=copy.deepcopy(self.reward_model.head), head_bias=True)
        for model in (self.reference, self.reward_model):
            model.eval()
            model.requires_grad_(False)
        for model in (self.policy, self.reference, self.reward_model.backbone, self.critic.backbone):
            disable_dropout(model)
        self.start = {"policy": copy.deepcopy(self.policy.state_dict()), "critic": copy.deepcopy(self.critic.state_dict())}
        self.parameters = sum(p.numel() for p in self.policy.parameters())

    def reset(self):
        """Back to the starting weights, with a fresh optimizer (as ``stages.ppo_models.ppo_optimizer``: Adam, lr 1e-5, eps 1e-5;
        not imported from there, which would import Lightning for nothing)."""
        import torch

        self.policy.load_state_dict(self.start["policy"])
        self.critic.load_state_dict(self.start["critic"])
        groups = [{"params": list(self.policy.parameters())}, {"params": list(self.critic.parameters())}]
        return torch.optim.Adam(groups, lr=1e-5, eps=1e-5)


def iteration(models: Models, tokenizer, prompts: list[list[int]], first_epoch: list, *, precision: str, modes: list[str],
              sample_seed: int, args) -> dict:
    """One rollout and one PPO update as ``PPOModule.training_step`` runs them (ptx off, one epoch), with the
    scoring step run once per mode on the same rollout (``modes``, in that order).

    The update does not depend on where the old log-probs came from (same weights, same minibatches, same shapes: only
    the values in the loss differ), so it runs once, on the first mode's old log-probs; its first minibatch's
    log-probs, computed before any optimizer step, are compared with each mode's old log-probs. Returns the times
    (generation, update, and scoring per mode) and the accuracy figures per mode."""
    import torch

    from lit_instruct.data.batching import pad_with_mask
    from lit_instruct.objectives import (
        clipped_policy_loss,
        clipped_value_loss,
        gae,
        kl_penalized_rewards,
        masked_whiten,
    )
    from lit_instruct.rollout import (
        critic_values,
        generate,
        logprobs_from_logits,
        response_logits,
        score_rollout,
    )

    optimizer = models.reset()
    policy, critic = models.policy, models.critic
    query, query_mask = pad_with_mask(prompts, tokenizer.pad_token_id, left=True)
    out = {"scoring": {}}
    with precision_context(precision):
        # ------------------------------------------------------------------ rollout (PPOModule.rollout)
        policy.eval()
        critic.eval()
        torch.manual_seed(sample_seed)
        start = time.perf_counter()
        sampled = generate(policy, query, query_mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           max_new_tokens=args.response_length, temperature=args.temperature, top_k=0, top_p=1.0)
        out["generation"] = time.perf_counter() - start
        scored = {}
        for mode in modes:
            rollout = copy.copy(sampled)  # score_rollout sets fields (and frees generation_logits) on its argument
            start = time.perf_counter()
            scored[mode] = score_rollout(rollout, reference=models.reference, critic=critic, reward_model=models.reward_model,
                                         temperature=args.temperature, missing_eos_penalty=-1.0,
                                         policy=policy if mode == "recompute" else None, chunks=list(first_epoch))
            out["scoring"][mode] = time.perf_counter() - start
        rollout = scored[modes[0]]

        # ------------------------------------------------------------------ advantages + update (ppo_update)
        start = time.perf_counter()
        policy.train()
        critic.train()
        mask = rollout.response_mask.float()
        rewards, _ = kl_penalized_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, mask, args.kl_coef)
        advantages, returns = gae(rewards, rollout.values, mask, 1.0, 0.95)
        advantages = masked_whiten(advantages, mask)
        padding = rollout.padding()
        first = None
        for rows in first_epoch:
            mb, r = rollout.select(rows).trimmed(padding[:, rows])
            mb_advantages, mb_returns = advantages[rows, :r], returns[rows, :r]
            mb_mask = mb.response_mask.float()
            logits = response_logits(policy, mb)
            logprobs = logprobs_from_logits(logits, mb.response, args.temperature)
            del logits
            pol = clipped_policy_loss(logprobs, mb.logprobs, mb_advantages, mb_mask, 0.2)
            if first is None:
                first = (rows, r, logprobs.detach())  # the update's log-probs before any optimizer step
            values = critic_values(critic, mb)
            value = clipped_value_loss(values, mb.values, mb_returns, mb_mask, 0.2)
            loss = pol["loss"] + 0.1 * value["loss"]
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
        out["update"] = time.perf_counter() - start

    # ------------------------------------------------------------------ accuracy (after the timing)
    rows, r, update_logprobs = first
    out["accuracy"] = {}
    for mode, scored_rollout in scored.items():
        old = scored_rollout.logprobs[rows, :r]
        mb_mask = scored_rollout.response_mask[rows, :r].float()
        log_ratio = update_logprobs - old
        out["accuracy"][mode] = {
            "max_abs": float(log_ratio.abs()[mb_mask.bool()].max()),
            "mean_abs": float(log_ratio.abs()[mb_mask.bool()].double().mean()),
            "approxkl": float(clipped_policy_loss(update_logprobs, old, torch.zeros_like(old), mb_mask)["approxkl"]),
            "ratio_error": float(((log_ratio.exp() - 1).abs() * mb_mask).max()),
            "tokens": int(mb_mask.sum()),
        }
    out["response_length"] = float(mask.sum(1).mean())
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2x128,4x256", help="comma-separated LAYERSxWIDTH of the embedded GPT-2")
    parser.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=32, help="max new tokens")
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per size (each: both precisions, both modes)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed full rounds per size (after a small untimed one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="smoke setting: 1 x 64, 4 prompts x 4 tokens, 1 repeat, no warm-up")
    args = parser.parse_args()
    if args.tiny:
        args.sizes, args.batch, args.minibatch, args.response_length, args.repeats, args.warmup = "1x64", 4, 2, 4, 1, 0

    import torch

    from lit_instruct.models.causal_lm import load_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer("embedded")
    prompts = load_prompts(tokenizer, args.max_prompt_tokens)
    load_before = os.getloadavg()
    results = {}
    for size in args.sizes.split(","):
        n_layer, n_embd = (int(x) for x in size.lower().split("x"))
        models = Models(tokenizer, n_layer, n_embd, n_head=4, seed=args.seed)  # TinyConfig's 4 heads
        warm = argparse.Namespace(**{**vars(args), "response_length": min(8, args.response_length)})
        for precision in PRECISIONS if not args.tiny else ():  # first calls (kernel set-up, allocator) at a small shape, untimed
            iteration(models, tokenizer, prompts[: args.minibatch], [torch.arange(args.minibatch)], precision=precision,
                      modes=list(MODES), sample_seed=0, args=warm)
        runs = {(p, m): [] for p in PRECISIONS for m in MODES}
        for round_ in range(args.warmup + args.repeats):
            seed = args.seed * 1000 + round_
            batch = random.Random(seed).sample(prompts, args.batch)
            first_epoch = list(torch.randperm(args.batch, generator=torch.Generator().manual_seed(seed)).split(args.minibatch))
            precisions = PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]  # interleaved, who goes first alternates
            modes = list(MODES) if (round_ // 2) % 2 == 0 else list(MODES[::-1])
            line = []
            for precision in precisions:
                out = iteration(models, tokenizer, batch, first_epoch, precision=precision, modes=modes, sample_seed=seed, args=args)
                for mode in MODES:
                    record = {"generation": out["generation"], "scoring": out["scoring"][mode], "update": out["update"],
                              "response_length": out["response_length"], **out["accuracy"][mode]}
                    record["iteration"] = record["generation"] + record["scoring"] + record["update"]
                    if round_ >= args.warmup:
                        runs[(precision, mode)].append(record)
                line.append(f"{precision} gen {out['generation']:.2f}s, scoring " + " / ".join(
                    f"{m} {out['scoring'][m]:.2f}s" for m in MODES) + f", update {out['update']:.2f}s")
            print(f"[{size}] round {round_ + 1}/{args.warmup + args.repeats}{' (warm-up)' if round_ < args.warmup else ''}: "
                  + "; ".join(line), file=sys.stderr, flush=True)
        for (precision, mode), rounds in runs.items():
            med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            if mode == "recompute":  # paired by round: the same rollout scored both ways, back to back
                extra = [r["scoring"] - s["scoring"] for r, s in zip(rounds, runs[(precision, "sampling")])]
                med["recompute_extra_s"] = statistics.median(extra)
                med["recompute_share"] = statistics.median(e / r["iteration"] for e, r in zip(extra, rounds))
                med["recompute_extra_rounds"] = [round(e, 3) for e in extra]
            med["worst_max_abs"] = max(r["max_abs"] for r in rounds)
            med["worst_ratio_error"] = max(r["ratio_error"] for r in rounds)
            med["scoring_rounds"] = [round(r["scoring"], 3) for r in rounds]
            results[f"{size} {precision} {mode}"] = {"size": size, "precision": precision, "mode": mode,
                                                     "policy_parameters": models.parameters, **med}

    print("| size (policy params) | precision | old log-probs | max \\|Δ logp\\| | mean \\|Δ logp\\| | approxkl "
          "| max \\|ratio-1\\| | generation s | scoring s | update s | iteration s | recompute pass: + s (share of iteration) |")
    print("|" + "---|" * 12)
    for r in results.values():
        extra = ""
        if r["mode"] == "recompute":
            extra = f"{r['recompute_extra_s']:+.3f} ({100 * r['recompute_share']:.0f}%)"
        print(f"| {r['size']} ({r['policy_parameters'] / 1e6:.1f}M) | {'32-true' if r['precision'] == 'fp32' else 'bf16-mixed'} "
              f"| {r['mode']} | {r['max_abs']:.1e} | {r['mean_abs']:.1e} | {r['approxkl']:.1e} | {r['ratio_error']:.1e} "
              f"| {r['generation']:.3f} | {r['scoring']:.3f} | {r['update']:.3f} | {r['iteration']:.3f} | {extra} |")
    print(json.dumps({"benchmark": "ppo_logprobs", "settings": vars(args), "results": results,
                      "machine": {"platform": platform.platform(), "processor": platform.machine(), "torch": torch.__version__,
                                  "threads": args.threads, "cpus": os.cpu_count(),
                                  "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": cpu_model(),
                                  "loadavg_before": load_before, "loadavg_after": os.getloadavg()}}))


if __name__ == "__main__":
    main()
