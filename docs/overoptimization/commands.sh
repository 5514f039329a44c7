#!/usr/bin/env bash
# Regenerates docs/overoptimization/ on the embedded default (CPU). Run from the repository root after the main job
# (`lit-instruct pipeline`, which writes runs/pipeline/{sft,judge}/export). Every step is seeded.
set -euo pipefail
export WANDB_MODE=disabled
out=runs/overopt
sft=runs/pipeline/sft/export
gold=runs/pipeline/judge/export      # the gold model: the pipeline's held-apart judge (trained on the bundled human rankings)

# 1. the SFT policy's samples on PPO's training prompts, labelled by the gold model
lit-instruct sample $sft --prompts bundled:prompts.jsonl --split train --limit 600 --k 4 --max-new-tokens 32 --seed 1 \
  --out $out/sft_samples_train.jsonl
lit-instruct label $out/sft_samples_train.jsonl --judge $gold --out $out/gold_labels.jsonl

# 2. proxy reward models on the first 150, 300 and all 595 labelled prompts (from SFT, normalised as the pipeline's)
for n in 150 300 595; do
  head -n $n $out/gold_labels.jsonl > $out/gold_labels_$n.jsonl
  lit-instruct fit --config configs/reward/tiny.yaml --data.train_file $out/gold_labels_$n.jsonl \
    --model.model_name_or_path $sft --model.gain.policy $sft --trainer.default_root_dir $out/proxy-$n \
    --trainer.logger lightning.pytorch.loggers.CSVLogger --trainer.logger.save_dir $out/proxy-$n --overwrite true
done

# 3. best-of-n: 32 samples per held-out prompt (PPO validation's prompts), picked by each proxy, scored by gold
lit-instruct sample $sft --prompts bundled:prompts.jsonl --split val --k 32 --max-new-tokens 32 --seed 2 \
  --out $out/bon/sft_samples_val.jsonl
lit-instruct best-of-n $out/bon/sft_samples_val.jsonl --gold $gold --proxy $out/proxy-150/export \
  --proxy $out/proxy-300/export --proxy $out/proxy-595/export --out $out/bon/best_of_n.json

# 4. RL: plain PPO, no KL penalty, against each proxy, the gold model scoring every validation; 2 seeds; the proxy alone (no EOS penalty)
lit-instruct sweep sweeps/overoptimization_tiny.yaml --out $out/rl

# 5. the study: gold and proxy vs sqrt(KL), Gao et al.'s fits, the KL at the fitted gold peak
lit-instruct study $out --out docs/overoptimization
