"""How a pipeline's reward models score the SFT policy's responses that end (EOS) against those cut at the length
limit: the measurement behind ``missing_eos_penalty`` in ``configs/ppo/tiny.yaml`` (docs/configs.md#ppo).

    python benchmarks/eos_scores.py runs/pipeline [--prompts 256] [--max-new-tokens 32]

Samples the SFT export's responses to a fixed subset of the PPO prompts (the reward stage's normalisation prompts)
and prints, for the optimised reward model and the judge, the mean score of all, of the ended and of the cut ones.
A penalty above the ended responses' typical score pays a policy never to end.
"""

from __future__ import annotations

import argparse

import torch

from lit_instruct import PPOModule, RewardDataModule
from lit_instruct.stages.ppo_validation import judge_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a pipeline run folder (sft/, reward/, judge/ exports)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = args.run
    module = PPOModule(policy_name_or_path=f"{run}/sft/export", reward_model_path=f"{run}/reward/export",
                       judge_path=f"{run}/judge/export", missing_eos_penalty=None)
    data = RewardDataModule(normalization_rows=args.prompts)
    data.connect(module.tokenizer, module.context_length)
    fmt, room = module.reward_model.format(), module.context_length - args.max_new_tokens
    ids = [module.tokenizer(fmt.prompt(p), add_special_tokens=False)["input_ids"][-room:] for p in data.policy_prompts()]
    torch.manual_seed(args.seed)
    scores = {"reward model": [], "judge": []}
    ended, length = [], []
    for start in range(0, len(ids), 32):
        rollout = module.rollout(ids[start:start + 32], args.max_new_tokens, values=False)
        scores["reward model"].append(rollout.reward_model_scores)
        scores["judge"].append(judge_scores(module.judge, rollout, module.tokenizer))
        ended.append(rollout.ended)
        length.append(rollout.response_mask.sum(1).float())
    ended, length = torch.cat(ended), torch.cat(length)
    print(f"SFT samples ({run}/sft/export), {args.max_new_tokens} new tokens: n={len(ended)}, EOS fraction "
          f"{ended.float().mean():.3f}, mean length {length.mean():.1f}")
    for name, parts in scores.items():
        s = torch.cat(parts)
        print(f"{name}: all {s.mean():+.3f} (sd {s.std():.3f}); ended {s[ended].mean():+.3f} (sd {s[ended].std():.3f}, "
              f"10th percentile {s[ended].quantile(0.1):+.3f}); cut {s[~ended].mean():+.3f}")


if __name__ == "__main__":
    main()
