"""What PPO's validation measures of a policy on held-out prompts and held-out pretraining text, and the held-apart
judge that scores its responses beside the reward model it optimises.

Every number is a mean over held-out episodes (or tokens, for the pretraining loss):

- ``val/score``: the reward PPO optimises (the reward model's score, ``missing_eos_penalty`` where a response never
  ended); ``val/reward_model_score``: the reward model's own score, no penalty;
- ``val/judge_score``: a second reward model's score, one PPO never optimises (``judge_path``): when the optimised
  score rises and the judge's does not, the policy is exploiting the reward model;
- ``val/gold_score``: the gold reward model's score (``gold_path``), in Gao et al.'s synthetic set-up the model whose
  labels the optimised (proxy) reward model was trained on; the pair (``val/score``, ``val/gold_score``) against
  ``val/sqrt_kl`` is their over-optimisation curve (``lit-instruct study`` draws and fits it);
- ``val/kl``: KL to the reference in nats per response; ``val/sqrt_kl``: its square root ``d`` (Gao et al.'s
  distance, of the mean KL); ``val/response_length``: tokens per response, EOS included;
  ``val/eos_fraction``: the share of responses that ended (emitted EOS) within the length limit;
- ``val/pretrain_loss``: the LM loss on held-out pretraining text (the alignment tax).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchmetrics import MeanMetric

from lit_instruct.models.reward_model import RewardModel
from lit_instruct.rollout import Rollout

#: Per-episode measures of a rollout, by metric name (after ``val/``).
EPISODE_METRICS = ("score", "reward_model_score", "judge_score", "gold_score", "kl", "response_length", "eos_fraction")

#: The held-apart reward models PPO may be given besides the one it optimises (``<name>_path``), each scoring every
#: validation response as ``val/<name>_score``.
HELD_APART = ("judge", "gold")


def load_judge(judge_path: Optional[str], reward_model_path: str, dtype, role: str = "judge") -> Optional[RewardModel]:
    """A held-apart reward model (``role``: ``judge`` or ``gold``; frozen, eval mode), or ``None``. Refuses the reward
    model PPO optimises: a held-apart model must be one the policy never sees the gradient of."""
    if not judge_path:
        return None
    if Path(judge_path).resolve() == Path(reward_model_path).resolve():
        raise ValueError(f"{role}_path {judge_path} is the reward model PPO optimises; a {role} must be held apart "
                         "(a reward model trained differently, or on other data)")
    judge = RewardModel.from_pretrained(judge_path, dtype=dtype, require_normalization=False).eval()
    judge.requires_grad_(False)
    return judge


@contextmanager
def validation_stream(seed: int, device: torch.device):
    """Validation samples from its own random stream, the same at every validation (seeded by the batch): two
    validations of one policy give the same responses, and training's stream is left as it was, so a resumed run
    trains exactly as an uninterrupted one whatever validations ran in between."""
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def sample_rows(rollout: Rollout, tokenizer, k: int, step: int) -> list[list]:
    """The first ``k`` validation responses as table rows ``[step, prompt, response, score]``."""
    texts = tokenizer.batch_decode(rollout.query[:k], skip_special_tokens=True)
    responses = tokenizer.batch_decode(rollout.response[:k], skip_special_tokens=True)
    return [[step, p, r, float(s)] for p, r, s in zip(texts, responses, rollout.scores[:k])]


def held_apart_scores(models: dict[str, Optional[RewardModel]], rollout: Rollout, tokenizer) -> dict[str, torch.Tensor]:
    """``{"<name>_score": (b,) scores}`` of a rollout's responses by every held-apart model that is set."""
    return {f"{name}_score": judge_scores(model, rollout, tokenizer) for name, model in models.items() if model is not None}


@torch.no_grad()
def judge_scores(judge: RewardModel, rollout: Rollout, tokenizer) -> torch.Tensor:
    """The judge's scores of a rollout's responses, (b,) on the rollout's device. A judge with the policy's
    tokenizer reads the rollout's tokens, as the reward model does; another reads the decoded text (the prompt as
    the policy saw it, formatted; the response up to EOS)."""
    if judge.tokenizer.get_vocab() == tokenizer.get_vocab():
        return judge(rollout.input_ids, rollout.attention_mask)
    prompts = [tokenizer.decode(q[m.bool()], skip_special_tokens=True) for q, m in zip(rollout.query, rollout.query_mask)]
    responses = [tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(rollout.response, rollout.response_mask)]
    return judge.score(prompts, responses, prompts_are_formatted=True).to(rollout.response.device)


class HeldOutMeasures(nn.Module):
    """Running means of PPO validation's measures (see the module docstring); a submodule, so it follows the
    LightningModule's device."""

    def __init__(self) -> None:
        super().__init__()
        self.episode = nn.ModuleDict({name: MeanMetric() for name in EPISODE_METRICS})
        self.pretrain_loss = MeanMetric()

    def update_rollout(self, rollout: Rollout, held_apart: Optional[dict[str, torch.Tensor]] = None) -> None:
        """One validation rollout's episodes; ``held_apart``: ``{"judge_score": (b,), "gold_score": (b,)}``, those set."""
        mask = rollout.response_mask.float()
        values = {"score": rollout.scores, "reward_model_score": rollout.reward_model_scores,
                  "kl": ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1), "response_length": mask.sum(1),
                  "eos_fraction": rollout.ended.float()}
        values.update(held_apart or {})
        for name, value in values.items():
            self.episode[name].update(value)

    def update_pretrain(self, loss: torch.Tensor, tokens: int) -> None:
        self.pretrain_loss.update(loss, weight=tokens)

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        """``{"val/...": mean}`` for every measure that saw data (a held-apart model's only when there is one), and
        ``val/sqrt_kl``, then reset."""
        out = {f"val/{name}": metric.compute() for name, metric in self.episode.items()
               if name.removesuffix("_score") not in HELD_APART or metric.update_called}
        out["val/sqrt_kl"] = out["val/kl"].clamp(min=0).sqrt()  # of the mean KL, as Gao et al.'s d
        out["val/pretrain_loss"] = self.pretrain_loss.compute()
        for metric in [*self.episode.values(), self.pretrain_loss]:
            metric.reset()
        return out
