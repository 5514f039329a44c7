"""Callbacks shared by the stages."""

from __future__ import annotations

import contextlib
import resource
import sys
import time

import lightning as L
import torch

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


def peak_memory_gib(device: torch.device | None = None) -> float:
    """Peak memory of this process in GiB: the most CUDA memory its tensors held on ``device`` (since the last
    reset of the peak) when it is a CUDA device, else the process's peak resident set size (RSS, since it started)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


class PeakMemory(L.Callback):
    """Logs ``memory/peak_gib`` after every training batch: the peak memory of the stage so far on this process
    (:func:`peak_memory_gib`: CUDA memory allocated when the stage runs on a CUDA device, counted from the start of
    fit, else the process's peak RSS). Every stage adds it; the stage's export records the largest over processes.
    """

    def __init__(self) -> None:
        self.peak_gib = 0.0

    def measure(self, pl_module) -> float:
        self.peak_gib = max(self.peak_gib, peak_memory_gib(pl_module.device))
        return self.peak_gib

    def on_fit_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("memory/peak_gib", self.measure(pl_module), on_step=True, on_epoch=False)


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


class AlignmentTax(L.Callback):
    """The alignment tax as a curve: public-NLP benchmarks (lm-evaluation-harness) on the policy being trained, at
    validation, logged as ``tax/<task>/<metric>`` (``tax/instructgpt_squadv2/f1``, ...).

    The model measured is the one the stage exports (PPO: the policy, or its EMA), in memory, through the harness's
    wrapper of a loaded model (:func:`lit_instruct.evaluation.harness.evaluate`): the same numbers as ``lit-instruct
    eval`` on the export of the same weights with the same settings (under ``bf16-mixed`` the callback runs in the
    validation's autocast, like ``eval --dtype`` of the weights it casts to). Every process runs every task (the
    harness's wrapper of an in-memory model does not shard); under ZeRO-3 each gathers the whole model once for the
    measurement (DeepSpeed's ``GatheredParameters``), so it must fit one device. Needs the ``tax`` extra.

    Args:
        tasks: Bundled task names (``instructgpt_squadv2``, ``instructgpt_drop``, ``instructgpt_fr_to_en``,
            ``instructgpt_references``), task ``.yaml`` files, or harness task names.
        data_file: The bundled tasks' JSON Lines file (``task``, ``prompt``, ``refs``).
        limit: Only the first N items of each task (None: all).
        batch_size: Generation / scoring batch size.
        max_gen_toks: Tokens generated per answer (None: each task's own).
        prompt_format: ``raw`` (the paper's prompts as they are) or ``policy`` (wrapped in the stage's prompt format).
        every_n_validations: Run at every N-th validation (and never in the sanity check).
    """

    def __init__(self, tasks: list[str] | None = None, data_file: str = "bundled:eval_instructgpt_nlp.jsonl",
                 limit: int | None = None, batch_size: int = 16, max_gen_toks: int | None = None,
                 prompt_format: str = "raw", every_n_validations: int = 1) -> None:
        from lit_instruct.evaluation import harness

        if prompt_format not in ("raw", "policy"):
            raise ValueError(f"prompt_format must be 'raw' or 'policy', got {prompt_format!r}")
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.tasks = list(tasks) if tasks else list(harness.BUNDLED_TASKS)
        self.data_file, self.limit, self.batch_size, self.max_gen_toks = data_file, limit, batch_size, max_gen_toks
        self.prompt_format, self.every_n_validations = prompt_format, every_n_validations
        self.configs: list | None = None
        self.validations = 0
        self.history: list[tuple[int, dict]] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Check the tasks and the data file before training starts."""
        from lit_instruct.evaluation import harness

        fmt = None
        if self.prompt_format == "policy":
            from lit_instruct.data.prompt_format import PromptFormat

            datamodule = trainer.datamodule
            fmt = datamodule.prompt_format() if hasattr(datamodule, "prompt_format") else PromptFormat()
        self.configs = harness.task_configs(self.tasks, self.data_file, self.max_gen_toks, fmt)

    def measure(self, pl_module) -> dict[str, dict[str, float]]:
        from lit_instruct.evaluation import harness

        model, tokenizer = pl_module.export_target()
        gathered = contextlib.nullcontext()
        if is_zero3(pl_module.trainer.strategy):  # every rank runs the same requests: gather once, not per layer per token
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
        with gathered, pl_module.trainer.precision_plugin.forward_context():
            return harness.evaluate(model, tokenizer, self.tasks, limit=self.limit, batch_size=self.batch_size,
                                    configs=self.configs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        from lit_instruct.evaluation import harness

        if trainer.sanity_checking:
            return
        self.validations += 1
        if (self.validations - 1) % self.every_n_validations:
            return
        results = self.measure(pl_module)
        self.history.append((trainer.global_step, results))
        pl_module.log_dict(harness.flat_metrics(results), sync_dist=True)  # the same on every process
