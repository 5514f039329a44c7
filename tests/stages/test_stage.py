"""What every stage shares (stages/stage.py): the export folder is checked at setup, before any training step."""

import lightning as L
import pytest
import torch
from helpers import quiet_trainer

from lit_instruct import SFTDataModule, SFTModule, TinyConfig
from lit_instruct.models.export import ExportError


def test_fit_refuses_a_foreign_export_directory_before_training(tmp_path):
    """The export is written at the end of fit; a directory it may not replace is refused at setup, before any step."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own files")
    steps = []

    class Count(L.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    module = SFTModule(tiny=TinyConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64), num_sample_prompts=0, export_dir=str(mine))
    with pytest.raises(ExportError, match="not a lit-instruct export"):
        quiet_trainer(max_steps=1, enable_checkpointing=False, callbacks=[Count()],
                      default_root_dir=tmp_path).fit(module, SFTDataModule(batch_size=2, max_length=32))
    assert not steps and (mine / "notes.txt").read_text() == "my own files"


def test_each_process_resumes_with_its_own_random_states():
    """Checkpoints hold every rank's random-number states; a rank resumes with its own, on more processes than the
    run had with saved rank ``r mod W``'s, and an older checkpoint's single state serves every rank."""
    from lit_instruct.stages.stage import all_rng_states, rank_rng_states

    saved = all_rng_states()
    assert len(saved) == 1 and torch.equal(saved[0]["torch"], torch.get_rng_state())  # one process: its own
    checkpoint = {"rng_states_per_rank": ["rank0", "rank1"], "rng_states": "old"}
    assert [rank_rng_states(checkpoint, r) for r in range(4)] == ["rank0", "rank1", "rank0", "rank1"]
    assert rank_rng_states({"rng_states": "old"}, 3) == "old" and rank_rng_states({}, 0) is None
