"""More than one machine: the SLURM and torchrun recipes (docs/multinode.md) parse and give Lightning the right cluster,
and a PPO run resumes on another number of processes, continuing its global prompt and ptx streams exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from helpers import CONFIGS, ROOT, ppo_flags, run_cli


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC -m lit_instruct ARGS`` (the recipe's launch, on one machine)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "lit_instruct", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def recorded(folder, ranks):
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]


def global_order(records, key):
    """Rank-major order of what every rank took at each step: step 0 of rank 0, of rank 1, ..., then step 1."""
    return [item for step in zip(*(r[key] for r in records)) for batch in step for item in batch]


def test_ppo_resumed_on_two_processes_continues_the_global_streams(tiny_exports, tmp_path):
    """One process: 6 iterations of 4 prompts (24 episodes), a checkpoint after iteration 2 kept. Resumed from it under
    torchrun on 2 processes (DDP, gloo): 2 iterations of 2 x 4 prompts. The prompts and ptx blocks the two ranks took,
    in the streams' global order, are exactly those the single process took after the checkpoint."""
    one = run_cli("fit", *ppo_flags(tiny_exports, tmp_path / "one", "--model.total_episodes", "24",
                                    "--trainer.callbacks.save_top_k", "-1",
                                    "--trainer.callbacks+=probes.StreamRecorder", "--trainer.callbacks.out", str(tmp_path / "rec1")),
                  env={"PYTHONPATH": str(ROOT / "tests")})
    assert one.returncode == 0, one.stderr[-3000:]
    checkpoint = tmp_path / "one" / "checkpoints" / "epoch=0-step=4.ckpt"  # after iteration 2: 8 prompts, 8 ptx blocks
    assert torch.load(checkpoint, weights_only=False)["PPODataModule"]["consumed_prompts"] == 8

    two = torchrun("fit", *ppo_flags(tiny_exports, tmp_path / "two", "--config", str(CONFIGS / "trainer/cpu_ddp.yaml"),
                                     "--model.total_episodes", "24", "--ckpt_path", str(checkpoint),
                                     "--trainer.callbacks+=probes.StreamRecorder", "--trainer.callbacks.out", str(tmp_path / "rec2")))
    assert two.returncode == 0, two.stderr[-3000:]
    [single], pair = recorded(tmp_path / "rec1", 1), recorded(tmp_path / "rec2", 2)
    assert [len(r["prompts"]) for r in pair] == [2, 2] and [len(r["ptx"]) for r in pair] == [4, 4]
    after = {key: [item for batch in single[key][skip:] for item in batch] for key, skip in (("prompts", 2), ("ptx", 4))}
    assert len(after["prompts"]) == 16 and len(after["ptx"]) == 16
    assert global_order(pair, "prompts") == after["prompts"]  # no prompt repeated or skipped, in the same order
    assert global_order(pair, "ptx") == after["ptx"]
    export = json.loads((tmp_path / "two" / "export" / "lit_instruct.json").read_text())
    assert export["episodes"] == 24  # 8 before the checkpoint, then 2 iterations x 4 prompts x 2 processes
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["PPODataModule"] == {"consumed_prompts": 24, "consumed_ptx_blocks": 24, "world_size": 2}
