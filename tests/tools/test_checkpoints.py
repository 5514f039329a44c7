"""Checkpoint -> export (`lit-instruct export`): checkpoints load with weights_only and never run code, damaged or
missing ones are named in one line, old ones still export, and the export never lands on a folder of user files."""

import functools
import os
import pathlib
import sys

import pytest
import torch
from helpers import quiet_trainer, run_cli, tree, user_folder
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from lit_instruct import SFTDataModule, SFTModule, TinyConfig
from lit_instruct.models.export import read_metadata
from lit_instruct.tools.checkpoints import (
    CheckpointError,
    _weights_only_everywhere,
    export_checkpoint,
)

TINY = TinyConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SFT run from the Python API (its hyper-parameters hold an optimizer factory: code, not data), with
    its fit export and last.ckpt."""
    tmp = tmp_path_factory.mktemp("export_safety")
    torch.manual_seed(0)
    module = SFTModule(tiny=TINY, num_sample_prompts=0, export_dir=str(tmp / "export"),
                       optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    quiet_trainer(max_steps=2, limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=tmp / "checkpoints", save_last=True)],
                  default_root_dir=tmp).fit(module, SFTDataModule(batch_size=4, max_length=64))
    return tmp


# ------------------------------------------------------------------------------------------- never over user files
def test_cli_export_into_a_folder_of_user_files_is_refused(trained, tmp_path):
    out = user_folder(tmp_path / "mine")
    before = tree(out)
    done = run_cli("export", str(trained / "checkpoints" / "last.ckpt"), "--out", str(out))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out}: exists and is not a lit-instruct export" in lines[0], done.stderr[-3000:]
    assert tree(out) == before


# ------------------------------------------------------------------------------------------------ safe loading
class Payload:
    """What an attacker would put in a checkpoint: unpickling it runs ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: pathlib.Path) -> dict:
    return {
        "exec": Payload(exec, f"open({str(marker)!r}, 'w').write('ran')"),
        "os.system": Payload(os.system, f"touch '{marker}'"),
    }


def evil_checkpoint(tmp_path: pathlib.Path, payload) -> pathlib.Path:
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"lit_instruct": {"class_path": "lit_instruct.stages.sft.SFTModule", "stage": "sft"}, "state_dict": {},
                "hyper_parameters": {}, "callbacks": {"x": payload}}, ckpt)
    return ckpt


def test_cli_export_of_a_pickled_payload_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    ckpt = evil_checkpoint(tmp_path, payloads(marker)["exec"])
    done = run_cli("export", str(ckpt), "--out", str(tmp_path / "out"))
    assert not marker.exists()
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert f"refusing to load {ckpt}: not a plain checkpoint (it refers to code in callbacks.x: builtins.exec)" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["exec", "os.system"])
def test_export_of_a_pickled_payload_runs_nothing(tmp_path, kind):
    marker = tmp_path / "marker"
    ckpt = evil_checkpoint(tmp_path, payloads(marker)[kind])
    with pytest.raises(CheckpointError, match=rf"^refusing to load {ckpt}: not a plain checkpoint"):
        export_checkpoint(ckpt, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_payload_in_the_hyper_parameters_is_never_called(trained, tmp_path):
    """Code a checkpoint names where Lightning records constructor arguments is replaced by an inert stand-in: the
    export goes on with the optimizer default, recording the name."""
    marker = tmp_path / "marker"
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)  # our own file
    ckpt["hyper_parameters"]["optimizer"] = payloads(marker)["exec"]
    torch.save(ckpt, tmp_path / "tampered.ckpt")
    export_checkpoint(tmp_path / "tampered.ckpt", tmp_path / "out")
    assert not marker.exists()
    assert read_metadata(tmp_path / "out")["hparams"]["optimizer"] == "builtins.exec (not loaded)"


def test_python_api_checkpoint_exports_the_fit_weights(trained, tmp_path):
    """Its optimizer factory (functools.partial of a class) is not loaded; the weights are those of the fit export."""
    out = export_checkpoint(trained / "checkpoints" / "last.ckpt", tmp_path / "converted")
    a, b = load_file(trained / "export" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = read_metadata(out)
    assert meta["stage"] == "sft" and meta["hparams"]["optimizer"] == "functools.partial (not loaded)"
    assert meta["hparams"]["tiny"] == str(TINY) or meta["hparams"]["tiny"] == vars(TINY)


def test_a_checkpoint_naming_a_foreign_class_is_refused(tmp_path):
    torch.save({"lit_instruct": {"class_path": "antigravity.Fly", "stage": "sft"}, "state_dict": {}}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match=r"c.ckpt: names the class 'antigravity.Fly', which is not a lit-instruct stage"):
        export_checkpoint(tmp_path / "c.ckpt", tmp_path / "out")
    assert "antigravity" not in sys.modules


def zero_folder(root: pathlib.Path, optim_payload=None) -> pathlib.Path:
    """A DeepSpeed ZeRO-3 checkpoint folder's layout (two ranks), with ``optim_payload`` in rank 1's optimizer shard."""
    shards = root / "last.ckpt" / "checkpoint"
    shards.mkdir(parents=True)
    (root / "last.ckpt" / "latest").write_text("checkpoint")
    for rank in (0, 1):
        torch.save({"buffer_names": [], "param_shapes": [{}], "shared_params": {}, "module": {},
                    "lit_instruct": {"class_path": "lit_instruct.stages.sft.SFTModule", "stage": "sft"}},
                   shards / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
        optim = {"optimizer_state_dict": {"zero_stage": 3, "partition_count": 2, "fp32_flat_groups": [torch.zeros(1)]}}
        if rank == 1 and optim_payload is not None:
            optim["payload"] = optim_payload
        torch.save(optim, shards / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    return root / "last.ckpt"


@pytest.mark.parametrize("kind", ["exec", "os.system"])
def test_zero_folder_with_a_payload_runs_nothing(tmp_path, kind):
    pytest.importorskip("deepspeed")
    marker = tmp_path / "marker"
    folder = zero_folder(tmp_path, payloads(marker)[kind])
    with pytest.raises(CheckpointError, match=r"refusing to load .*zero_pp_rank_1_mp_rank_00_optim_states.pt: not a plain checkpoint"):
        export_checkpoint(folder, tmp_path / "out")
    assert not marker.exists()


def test_deepspeeds_own_loads_are_forced_to_weights_only(tmp_path):
    """DeepSpeed's ZeRO consolidation calls ``torch.load(..., weights_only=False)``: within the conversion those
    calls load with weights_only all the same."""
    marker = tmp_path / "marker"
    torch.save({"x": payloads(marker)["exec"]}, tmp_path / "shard.pt")
    with _weights_only_everywhere(), pytest.raises(Exception, match="exec"):
        torch.load(tmp_path / "shard.pt", weights_only=False)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# ------------------------------------------------------------------------------------------- damaged checkpoints
def damaged(tmp_path: pathlib.Path, trained: pathlib.Path, kind: str) -> pathlib.Path:
    path = tmp_path / f"{kind}.ckpt"
    data = (trained / "checkpoints" / "last.ckpt").read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "text": b"not a checkpoint\n",
                      "corrupt": data[:200] + bytes(len(data) - 400) + data[-200:]}[kind])
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "corrupt"])
def test_damaged_checkpoint_is_named(trained, tmp_path, kind):
    path = damaged(tmp_path, trained, kind)
    with pytest.raises(CheckpointError, match=rf"^{path}: damaged or not a checkpoint \("):
        export_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_damaged_checkpoint_is_one_line_naming_it(trained, tmp_path):
    path = damaged(tmp_path, trained, "truncated")
    done = run_cli("export", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: damaged or not a checkpoint" in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "EOFError" not in done.stderr


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'nope.ckpt'}: checkpoint not found"):
        export_checkpoint(tmp_path / "nope.ckpt", tmp_path / "out")


def test_a_checkpoint_written_before_the_redesign_still_exports(tmp_path):
    """Old class paths (``lit_instruct.reward.RewardModule``) and attribute names (``rm.``) of checkpoints written
    before the package was reorganised map onto today's; a foreign class is still refused (test above)."""
    from lit_instruct import RewardModule

    module = RewardModule(tiny=TINY)
    state = {("rm." + k[len("reward_model."):] if k.startswith("reward_model.") else k): v for k, v in module.state_dict().items()}
    assert any(k.startswith("rm.backbone.") for k in state)
    torch.save({"lit_instruct": {"class_path": "lit_instruct.reward.RewardModule", "stage": "reward"}, "state_dict": state,
                "hyper_parameters": {"tiny": vars(TINY)}}, tmp_path / "old.ckpt")
    out = export_checkpoint(tmp_path / "old.ckpt", tmp_path / "out")
    exported = load_file(out / "model.safetensors")
    assert torch.equal(exported["score.weight"], module.reward_model.head.weight)
    assert read_metadata(out)["stage"] == "reward"
