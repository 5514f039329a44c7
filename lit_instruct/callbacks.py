"""Callbacks shared by the stages."""

from __future__ import annotations

import time

import lightning as L

from lit_instruct.models.reward_model import RewardModel
from lit_instruct.strategies import is_zero3


class TokenThroughput(L.Callback):
    """Logs ``throughput/tokens_per_s``: non-padding tokens trained on per second, over all processes.

    Time is measured from the start to the end of each training batch (forward, backward, optimizer step),
    so validation and checkpointing are not counted. ``total_tokens`` and ``total_seconds`` sum over the fit.
    A batch with a ``comparisons`` entry (the reward stage) also gives ``throughput/comparisons_per_s``.
    """

    def __init__(self) -> None:
        self.total_comparisons = 0
        self.total_tokens = 0
        self.total_seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._start
        tokens = int(batch["attention_mask"].sum()) * trainer.world_size
        self.total_tokens += tokens
        self.total_seconds += seconds
        pl_module.log("throughput/tokens_per_s", tokens / max(seconds, 1e-9), on_step=True, on_epoch=False)
        if "comparisons" in batch:
            comparisons = int(batch["comparisons"]) * trainer.world_size
            self.total_comparisons += comparisons
            pl_module.log("throughput/comparisons_per_s", comparisons / max(seconds, 1e-9), on_step=True, on_epoch=False)

    @property
    def tokens_per_s(self) -> float:
        return self.total_tokens / self.total_seconds if self.total_seconds else 0.0

    @property
    def comparisons_per_s(self) -> float:
        return self.total_comparisons / self.total_seconds if self.total_seconds else 0.0


class RewardModelSelection(L.Callback):
    """Select the SFT model by reward-model score, as the paper did, instead of by validation loss.

    After each validation, generates responses to the first ``num_prompts`` validation prompts (greedy), scores them
    with the reward model at ``reward_model_path`` (a normalised export from an earlier run), and logs
    ``val/reward_model_score``. The weights with the best score are kept (on CPU) and put back at the end of fit, so the stage's
    export is the selected model. Use ``ModelCheckpoint(monitor="val/reward_model_score", mode="max")`` to keep the checkpoint
    too. Not for ZeRO-3 (sharded weights).

    Args:
        reward_model_path: A reward-model export whose tokenizer matches the model's.
        num_prompts: Validation prompts scored each time.
        max_new_tokens: Tokens generated per response.
    """

    def __init__(self, reward_model_path: str, num_prompts: int = 32, max_new_tokens: int = 48) -> None:
        self.reward_model_path = reward_model_path
        self.num_prompts = num_prompts
        self.max_new_tokens = max_new_tokens
        self.reward_model = None
        self.best_score = float("-inf")
        self.best_state: dict | None = None
        self.scores: list[float] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        if is_zero3(trainer.strategy):
            raise ValueError("RewardModelSelection does not support ZeRO-3")
        self.reward_model = RewardModel.from_pretrained(self.reward_model_path).to(pl_module.device)
        if self.reward_model.tokenizer.get_vocab() != pl_module.tokenizer.get_vocab():
            raise ValueError(f"{self.reward_model_path}: the reward model's tokenizer does not match the model's")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        prompts = datamodule.sample_prompts(self.num_prompts)
        responses = pl_module.generate(prompts, self.max_new_tokens)
        score = float(self.reward_model.score(prompts, responses, prompts_are_formatted=True).mean())
        self.scores.append(score)
        pl_module.log("val/reward_model_score", score, sync_dist=True)
        if score > self.best_score:
            self.best_score = score
            self.best_state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.best_state is not None:
            pl_module.model.load_state_dict(self.best_state)
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"[reward-model selection] exporting the weights with the best val/reward_model_score {self.best_score:.4f} (of {len(self.scores)} validations)")
