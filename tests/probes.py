"""A callback that watches a stage from inside its training steps (used by the conformance suite through the CLI).

It records, for every training step: the mode of every trained and frozen module during the forward passes that
build gradients; whether dropout is live (two train-mode forwards of the trained model on the same batch differ);
how many times the first transformer layer of the trained model runs inside backward (gradient checkpointing
recomputes it there, nothing else does); and PPO's first-minibatch and KL metrics.
"""

from __future__ import annotations

import lightning as L
import torch


def first_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The first submodule of the first transformer block of a Hugging Face model. Gradient checkpointing wraps the
    block and recomputes its ``forward`` in backward without going through the block's own hooks, so the probe
    watches a module the block calls."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            return next(module.children())
    raise AssertionError(f"no transformer layer found in {type(model).__name__}")


class StageProbe(L.Callback):
    """Records what each training step looked like; the test asserts on ``probe.record``."""

    def __init__(self) -> None:
        self.record: dict = {"trained_modes": set(), "frozen_modes": set(), "recomputed_layer_calls": 0,
                             "backward_passes": 0, "dropout_live": None, "ratio_error": [], "approxkl": [], "kl": [],
                             "steps": 0}
        self._in_backward = False
        self._handles = []

    # ------------------------------------------------------------------ hooks on the modules
    def on_train_start(self, trainer, pl_module) -> None:
        for module in pl_module.trained_modules():
            self._handles.append(module.register_forward_pre_hook(self._trained_forward))
            layer = first_layer(module)
            self._handles.append(layer.register_forward_pre_hook(self._layer_forward))
        for module in pl_module.frozen_modules():
            self._handles.append(module.register_forward_pre_hook(self._frozen_forward))

    def _trained_forward(self, module, args) -> None:
        if torch.is_grad_enabled():  # a forward pass that trains (rollouts run under no_grad, in eval mode)
            self.record["trained_modes"].update(m.training for m in module.modules())

    def _frozen_forward(self, module, args) -> None:
        self.record["frozen_modes"].update(m.training for m in module.modules())

    def _layer_forward(self, module, args) -> None:
        if self._in_backward:
            self.record["recomputed_layer_calls"] += 1

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._in_backward = True
        self.record["backward_passes"] += 1

    def on_after_backward(self, trainer, pl_module) -> None:
        self._in_backward = False

    # ------------------------------------------------------------------ per step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.record["dropout_live"] is None and isinstance(batch, dict) and "input_ids" in batch:
            model = pl_module.trained_module()
            with torch.no_grad():
                ids, mask = batch["input_ids"][:2], batch["attention_mask"][:2]
                outputs = [pl_module(ids, mask) if hasattr(pl_module, "model") else pl_module.reward_model(ids, mask) for _ in range(2)]
            self.record["dropout_live"] = not torch.equal(outputs[0], outputs[1])
            assert model.training

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["steps"] += 1
        metrics = trainer.callback_metrics
        if "policy/first_minibatch_ratio_error" in metrics:
            self.record["ratio_error"].append(float(metrics["policy/first_minibatch_ratio_error"]))
            self.record["approxkl"].append(float(metrics["policy/first_minibatch_approxkl"]))
            self.record["kl"].append(float(metrics["objective/kl"]))

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self._handles:
            handle.remove()


class KillAt(L.Callback):
    """SIGKILL this process at the start of the PPO iteration that would begin past ``episodes`` episodes: a run
    dies as a pre-empted job does, with no chance to save anything."""

    def __init__(self, episodes: int) -> None:
        self.episodes = episodes

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.episodes >= self.episodes:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class GatheredGeneration(L.Callback):
    """PPO under ZeRO-3: before the first iteration, samples the same prompts from the same seed with the policy
    gathered once for generation (``rollout.gather_for_generation``) and with per-layer gathering, and writes to
    ``out`` (rank 0) whether both gave the same tokens on every process and whether the policy's parameters were
    whole (gathered) when its forward pass started, each way."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module) -> None:
        import json

        rank = trainer.global_rank
        prompts = [[10 + rank, 20, 30, 40][: 2 + i % 3] for i in range(4)]
        whole: list[bool] = []
        hook = pl_module.policy.register_forward_pre_hook(lambda m, a: whole.append(all(p.numel() > 0 for p in m.parameters())))
        responses, record = {}, {}
        gather = pl_module.rollout_settings.gather_for_generation
        for mode in (True, False):
            pl_module.rollout_settings.gather_for_generation = mode
            whole.clear()
            torch.manual_seed(1234 + rank)
            responses[mode] = pl_module.rollout(prompts, 8, values=False).response
            record["whole_when_gathered" if mode else "whole_per_layer"] = bool(whole) and all(whole)
        hook.remove()
        pl_module.rollout_settings.gather_for_generation = gather
        a, b = responses[True], responses[False]
        same = torch.tensor(float(a.shape == b.shape and torch.equal(a, b)))
        record["same_tokens"] = bool(pl_module.all_gather(same).min() == 1)
        record["response_tokens"] = int(a.numel())
        if rank == 0:
            with open(self.out, "w") as f:
                json.dump(record, f)


class StreamRecorder(L.Callback):
    """Writes ``<out>/rank<global rank>.json``: the prompts (token ids) of each PPO iteration and the ptx blocks of each
    minibatch this process took, and PPO's state when training started (after any resume), as
    ``{"prompts": [[prompt, ...], ...], "ptx": [[block, ...], ...], "start": {"episodes": ..., "kl_coef": ...}}``."""

    def __init__(self, out: str) -> None:
        self.out, self.record = out, {"prompts": [], "ptx": []}

    def on_train_start(self, trainer, pl_module) -> None:
        self.record["start"] = {"episodes": pl_module.episodes, "kl_coef": pl_module.kl_controller.value}
        datamodule, ptx_batch = trainer.datamodule, trainer.datamodule.ptx_batch

        def recorded(n):
            batch = ptx_batch(n)
            self.record["ptx"].append(batch["input_ids"].tolist())
            return batch

        datamodule.ptx_batch = recorded

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not pl_module._done():
            self.record["prompts"].append([list(p) for p in batch])

    def on_train_end(self, trainer, pl_module) -> None:
        import json
        from pathlib import Path

        Path(self.out).mkdir(parents=True, exist_ok=True)
        (Path(self.out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))
