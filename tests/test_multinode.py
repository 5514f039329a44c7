"""More than one machine: the SLURM and torchrun recipes (docs/multinode.md) parse and give Lightning the right cluster,
and a PPO run resumes on another number of processes, continuing its global prompt and ptx streams exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import CONFIGS, ROOT, ppo_flags, run_cli

SCRIPTS = ROOT / "scripts"


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC -m lit_instruct ARGS`` (the recipe's launch, on one machine)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "lit_instruct", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------- the recipes
def launched(script, tmp_path, launcher, env):
    """Run a recipe script with a fake ``launcher`` (srun, torchrun) on the PATH that records its arguments instead of
    launching anything; returns them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / launcher
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env})
    assert done.returncode == 0, done.stderr
    return (tmp_path / "argv").read_text().splitlines()


def parsed(args, capsys):
    """The config ``lit-instruct ARGS`` resolves (``--print_config``: parsed and checked, nothing built)."""
    from lit_instruct.tools.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_the_slurm_recipe_launches_one_task_per_gpu_and_keeps_the_global_rollout(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")  # the CLI sets both when unset
    argv = launched(SCRIPTS / "slurm/ppo_pythia-1.4b.sbatch", tmp_path, "srun",
                    {"SLURM_NNODES": "4", "SLURM_NTASKS_PER_NODE": "8", "ROOT_DIR": str(tmp_path / "run")})
    assert argv[:2] == ["lit-instruct", "fit"] and "--ckpt_path" not in argv
    config = parsed(argv[1:], capsys)
    assert config["trainer"]["num_nodes"] == 4 and str(config["trainer"]["devices"]) == "8"  # as Lightning reads it
    assert config["trainer"]["strategy"] == "deepspeed_stage_3" and config["trainer"]["accelerator"] == "gpu"
    assert config["data"]["init_args"]["rollout_batch_size"] == 16  # 512 episodes an iteration over 32 processes
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_text("")
    os.utime(tmp_path / "run" / "checkpoints" / "last.ckpt", (1, 1))
    (tmp_path / "run" / "hpc_ckpt_2.ckpt").write_text("")  # saved later, on SIGUSR1: the newest
    argv = launched(SCRIPTS / "slurm/ppo_pythia-1.4b.sbatch", tmp_path, "srun",
                    {"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8", "ROOT_DIR": str(tmp_path / "run")})
    assert argv[argv.index("--ckpt_path") + 1] == str(tmp_path / "run" / "hpc_ckpt_2.ckpt")
    assert argv[argv.index("--data.rollout_batch_size") + 1] == "32"


def test_the_torchrun_recipe_runs_the_module_on_every_node(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")  # the CLI sets both when unset
    argv = launched(SCRIPTS / "torchrun/ppo_pythia-1.4b.sh", tmp_path, "torchrun",
                    {"NNODES": "2", "NPROC": "4", "HEAD": "node0:29500"})
    module = argv.index("-m")
    assert argv[:module] == ["--nnodes", "2", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
                             "--rdzv-endpoint", "node0:29500", "--rdzv-id", "ppo-pythia-1.4b"]
    assert argv[module + 1:module + 3] == ["lit_instruct", "fit"]
    config = parsed(argv[module + 2:], capsys)
    assert (config["trainer"]["num_nodes"], str(config["trainer"]["devices"])) == (2, "4")
    assert config["data"]["init_args"]["rollout_batch_size"] == 64


def test_multinode_trainer_configs_hold_only_what_differs():
    from lit_instruct.tools.configs import load_config

    for name, base in (("gpu_zero3_multinode", "gpu_zero3"), ("gpu_ddp_multinode", "gpu_ddp")):
        own = yaml.safe_load((CONFIGS / f"trainer/{name}.yaml").read_text())
        assert own["compose"] == [f"{base}.yaml"] and set(own["trainer"]) == {"num_nodes", "devices"}
        merged, single = load_config(CONFIGS / f"trainer/{name}.yaml"), load_config(CONFIGS / f"trainer/{base}.yaml")
        assert {**single["trainer"], "num_nodes": 2, "devices": 8} == merged["trainer"]


CLUSTERS = {
    "slurm": {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
              "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NAME": "ppo", "SLURM_JOB_ID": "42",
              "SLURM_NODELIST": "gpu-[7-8]"},
    "torchrun": {"TORCHELASTIC_RUN_ID": "ppo", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "WORLD_SIZE": "4",
                 "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "gpu-7", "MASTER_PORT": "29500"},
}


@pytest.mark.parametrize("launcher", CLUSTERS)
def test_lightning_reads_ranks_and_world_from_the_launcher(launcher, monkeypatch):
    """Rank 3 of 2 nodes x 2 processes as srun and torchrun describe it: Lightning picks the cluster environment, the
    world size, the node rank, and refuses devices / num_nodes that do not match the launch."""
    import lightning as L
    from lightning.fabric.plugins.environments import (
        SLURMEnvironment,
        TorchElasticEnvironment,
    )
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
    from lightning_utilities.core.rank_zero import (
        rank_zero_only as utils_rank_zero_only,
    )

    for function in (rank_zero_only, utils_rank_zero_only):  # the trainer sets this process's rank globally: put it back
        monkeypatch.setattr(function, "rank", function.rank)
    ours = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]  # Lightning's SLURMEnvironment sets the last two
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))] + ours:
        monkeypatch.setenv(key, "")  # recorded, so that teardown removes whatever the trainer leaves here
        monkeypatch.delenv(key)
    for key, value in CLUSTERS[launcher].items():
        monkeypatch.setenv(key, value)
    trainer = L.Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp", logger=False)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, {"slurm": SLURMEnvironment, "torchrun": TorchElasticEnvironment}[launcher])
    assert (trainer.world_size, trainer.node_rank, trainer.global_rank, trainer.local_rank) == (4, 1, 3, 1)
    assert environment.main_address == "gpu-7"
    launcher = trainer.strategy.launcher  # what fit calls first; it checks the settings against the launch
    launcher.cluster_environment.validate_settings(num_devices=launcher.num_processes, num_nodes=launcher.num_nodes)
    with pytest.raises(ValueError, match="num_nodes|world size"):
        launcher.cluster_environment.validate_settings(num_devices=2, num_nodes=1)


# ---------------------------------------------------------------------------------------------- elastic resume
def recorded(folder, ranks):
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]


def global_order(records, key):
    """Rank-major order of what every rank took at each step: step 0 of rank 0, of rank 1, ..., then step 1."""
    return [item for step in zip(*(r[key] for r in records)) for batch in step for item in batch]


def test_ppo_resumed_on_two_processes_continues_the_global_streams(tiny_exports, tmp_path):
    """One process: 6 iterations of 4 prompts (24 episodes), a checkpoint after iteration 2 kept. Resumed from it under
    torchrun on 2 processes (DDP, gloo): 2 iterations of 2 x 4 prompts. The prompts and ptx blocks the two ranks took,
    in the streams' global order, are exactly those the single process took after the checkpoint."""
    kl = ("--model.kl.adaptive", "true", "--model.kl.target", "0.01", "--model.kl.horizon", "100")  # a moving kl_coef
    one = run_cli("fit", *ppo_flags(tiny_exports, tmp_path / "one", *kl, "--model.total_episodes", "24",
                                    "--trainer.callbacks.save_top_k", "-1",
                                    "--trainer.callbacks+=probes.StreamRecorder", "--trainer.callbacks.out", str(tmp_path / "rec1")),
                  env={"PYTHONPATH": str(ROOT / "tests")})
    assert one.returncode == 0, one.stderr[-3000:]
    checkpoint = tmp_path / "one" / "checkpoints" / "epoch=0-step=4.ckpt"  # after iteration 2: 8 prompts, 8 ptx blocks
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["PPODataModule"]["consumed_prompts"] == 8

    two = torchrun("fit", *ppo_flags(tiny_exports, tmp_path / "two", *kl, "--config", str(CONFIGS / "trainer/cpu_ddp.yaml"),
                                     "--model.total_episodes", "24", "--ckpt_path", str(checkpoint),
                                     "--trainer.callbacks+=probes.StreamRecorder", "--trainer.callbacks.out", str(tmp_path / "rec2")))
    assert two.returncode == 0, two.stderr[-3000:]
    [single], pair = recorded(tmp_path / "rec1", 1), recorded(tmp_path / "rec2", 2)
    assert [len(r["prompts"]) for r in pair] == [2, 2] and [len(r["ptx"]) for r in pair] == [4, 4]
    after = {key: [item for batch in single[key][skip:] for item in batch] for key, skip in (("prompts", 2), ("ptx", 4))}
    assert len(after["prompts"]) == 16 and len(after["ptx"]) == 16
    assert global_order(pair, "prompts") == after["prompts"]  # no prompt repeated or skipped, in the same order
    assert global_order(pair, "ptx") == after["ptx"]
    kl_coef = saved["ppo_state"]["kl_controller"]["value"]
    assert kl_coef != 0.02 and [r["start"] for r in pair] == [{"episodes": 8, "kl_coef": kl_coef}] * 2  # PPO's state
    export = json.loads((tmp_path / "two" / "export" / "lit_instruct.json").read_text())
    assert export["episodes"] == 24  # 8 before the checkpoint, then 2 iterations x 4 prompts x 2 processes
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["PPODataModule"] == {"consumed_prompts": 24, "consumed_ptx_blocks": 24, "world_size": 2}
    assert len(state["rng_states_per_rank"]) == 2 and state["ppo_state"]["episodes"] == 24  # each rank's own states
