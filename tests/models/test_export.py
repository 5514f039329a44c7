"""Exports never destroy what is not an export: refused over a user's folder or file, an earlier export replaced
whole, the old one left whole by a crash or a failed swap."""

import pathlib

import pytest
import torch
from helpers import tree, user_folder

from lit_instruct import SFTModule, TinyConfig
from lit_instruct.models.export import ExportError, read_metadata, save_export

TINY = TinyConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64)


@pytest.fixture(scope="module")
def model_and_tokenizer(tokenizer):
    torch.manual_seed(0)
    return SFTModule(tiny=TINY, num_sample_prompts=0).model, tokenizer


@pytest.mark.parametrize("kind", ["user-files", "metadata-without-stage", "a-file"])
def test_export_over_something_not_an_export_is_refused(model_and_tokenizer, tmp_path, kind):
    model, tokenizer = model_and_tokenizer
    out = tmp_path / "target"
    if kind == "user-files":
        user_folder(out)
    elif kind == "metadata-without-stage":
        user_folder(out)
        (out / "lit_instruct.json").write_text("{}\n")
    else:
        out.write_text("a file of mine\n")
    before = tree(tmp_path)
    with pytest.raises(ExportError, match=rf"{out}: exists and is not"):
        save_export(model, tokenizer, out, {"stage": "sft"})
    assert tree(tmp_path) == before  # nothing touched, nothing written beside it


def test_empty_directory_is_used(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    (tmp_path / "export").mkdir()
    save_export(model, tokenizer, tmp_path / "export", {"stage": "sft"})
    assert read_metadata(tmp_path / "export")["stage"] == "sft"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_an_earlier_export_is_replaced(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    save_export(model, tokenizer, tmp_path / "export", {"stage": "sft", "run": 1})
    (tmp_path / "export" / "stale.txt").write_text("from the first export\n")
    save_export(model, tokenizer, tmp_path / "export", {"stage": "sft", "run": 2})
    assert read_metadata(tmp_path / "export")["run"] == 2
    assert not (tmp_path / "export" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_crash_while_writing_leaves_the_old_export_whole(model_and_tokenizer, tmp_path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    save_export(model, tokenizer, tmp_path / "export", {"stage": "sft", "run": 1})
    before = tree(tmp_path)

    def half_written(directory, **kwargs):
        (pathlib.Path(directory) / "model.safetensors").write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model, "save_pretrained", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        save_export(model, tokenizer, tmp_path / "export", {"stage": "sft", "run": 2})
    assert tree(tmp_path) == before  # the old export as it was, no temporary directory left


def test_a_failed_swap_puts_the_old_export_back(model_and_tokenizer, tmp_path, monkeypatch):
    """The old export is renamed aside before the new one is renamed in: if that rename fails, the old comes back
    (deleting the old export first, then renaming, loses it)."""
    model, tokenizer = model_and_tokenizer
    out = tmp_path / "export"
    save_export(model, tokenizer, out, {"stage": "sft", "run": 1})
    before = tree(tmp_path)
    rename = pathlib.Path.rename

    def failing_rename(self, target):
        if pathlib.Path(target) == out and ".old-" not in self.name:  # the new export, renamed into place
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        save_export(model, tokenizer, out, {"stage": "sft", "run": 2})
    assert tree(tmp_path) == before
