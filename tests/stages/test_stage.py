"""What every stage shares (stages/stage.py): the export folder is checked at setup, before any training step."""

import lightning as L
import pytest
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
