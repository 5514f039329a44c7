"""Measuring a policy export on held-out data, as PPO's validation does: the pipeline's report and the study use it."""

from __future__ import annotations

from typing import Optional

import lightning as L

from lit_instruct.data.prompts import PPODataModule
from lit_instruct.stages.ppo import PPOModule

#: The held-out measurements of a policy, by the name reports use (see :mod:`lit_instruct.stages.ppo_validation`).
HELD_OUT_METRICS = {"score": "val/score", "kl": "val/kl", "pretrain_loss": "val/pretrain_loss",
                    "response_length": "val/response_length"}
#: Measurements that runs from before they existed lack, and the judge's score only a run with a judge has.
OPTIONAL_METRICS = {"reward_model_score": "val/reward_model_score", "eos_fraction": "val/eos_fraction",
                    "judge_score": "val/judge_score", "gold_score": "val/gold_score", "sqrt_kl": "val/sqrt_kl"}


def measure_policy(model_args: dict, data_args: dict, *, policy: str, reference: str, reward_model: Optional[str] = None,
                   judge: Optional[str] = None, samples: int = 0, seed: int = 1234, root: Optional[str] = None) -> dict:
    """One policy export through PPO-ptx validation: its RM score on held-out prompts, KL to ``reference``, held-out
    pretraining loss and response length (``HELD_OUT_METRICS``), the reward model's score without the EOS penalty,
    the EOS fraction and, with a ``judge`` (or the run's own ``judge_path``), the judge's score
    (``OPTIONAL_METRICS``), plus up to ``samples`` sample responses.

    ``model_args`` / ``data_args``: a PPO run's ``PPOModule`` / ``PPODataModule`` arguments (what its config
    gave; a config from before PPO's settings were grouped is read too), so every policy is measured with the same
    settings and on the same held-out data."""
    args = {k: v for k, v in PPOModule.upgrade_hparams(model_args).items() if k not in ("optimizer", "export_dir")}
    args.update(policy_name_or_path=policy, reference_name_or_path=reference, num_sample_prompts=samples)
    if reward_model is not None:
        args["reward_model_path"] = reward_model
    if judge is not None:
        args["judge_path"] = judge
    L.seed_everything(seed, verbose=False)
    module = PPOModule(**args)
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    metrics = trainer.validate(module, PPODataModule(**data_args), verbose=False)[0]
    result = {name: float(metrics[key]) for name, key in {**HELD_OUT_METRICS, **OPTIONAL_METRICS}.items() if key in metrics}
    result["samples"] = [{"prompt": p, "response": r, "score": s} for _, p, r, s in module._val_samples]
    return result
