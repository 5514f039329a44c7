"""Hugging Face exports: the directory every stage leaves, and conversion of (ZeRO) checkpoints into one.

An export holds the model (``config.json``, safetensors weights), the tokenizer, and ``lit_instruct.json``
(stage, metrics, the config that trained it). ``transformers.AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from lit_instruct.strategies import is_zero3

METADATA_FILE = "lit_instruct.json"


def full_state_dict(model: torch.nn.Module, strategy=None) -> dict[str, torch.Tensor] | None:
    """The model's full state dict on CPU, gathering ZeRO-3 partitions (a collective: call on every rank).

    Returns ``None`` on ranks other than 0 under ZeRO-3; elsewhere the model's own state dict.
    """
    if strategy is not None and is_zero3(strategy):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if strategy.global_rank != 0:
                return None
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return owning_storage({k: v.detach().cpu() for k, v in model.state_dict().items()})


def owning_storage(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors that are views into a larger buffer (DeepSpeed ZeRO-1/2 parameters live in one flat buffer, which
    safetensors refuses to write) copied out; views of the same region (tied weights) stay one tensor."""
    copies: dict[tuple, torch.Tensor] = {}
    out = {}
    for key, value in state_dict.items():
        if value.untyped_storage().nbytes() == value.numel() * value.element_size():
            out[key] = value
            continue
        region = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()), value.dtype)
        if region not in copies:
            copies[region] = value.clone()
        out[key] = copies[region]
    return out


def cast_state_dict(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating-point tensors in ``dtype``; integer buffers and quantized weights as they are."""
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}


def set_config_dtype(out_dir: Path, dtype: str) -> None:
    """Make ``config.json`` state the dtype the weights were written in (``save_pretrained`` writes the in-memory
    model's dtype, which differs when the state dict was cast)."""
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class ExportError(ValueError):
    """An export that would overwrite something that is not an export (the message names the directory)."""


def is_export(directory: str | Path) -> bool:
    """Whether ``directory`` holds an export of ours: a ``lit_instruct.json`` object with a ``stage``."""
    path = Path(directory) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(metadata, dict) and "stage" in metadata


def check_export_target(out_dir: str | Path) -> bool:
    """Refuse (:class:`ExportError`) a target an export may not replace; return whether there is an export to replace.

    Missing or an empty directory: fine. An earlier export of ours (``lit_instruct.json`` with a ``stage``): it will
    be replaced. Anything else (a file, a symbolic link, a directory of other files) is refused and left as it is."""
    out = Path(out_dir)
    if out.is_symlink():
        raise ExportError(f"{out}: is a symbolic link; refusing to write an export through it (give the real directory)")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory; refusing to replace it with an export")
    if is_export(out):
        return True
    if any(out.iterdir()):
        raise ExportError(
            f"{out}: exists and is not a lit-instruct export (no {METADATA_FILE} with a 'stage'); refusing to write "
            "an export over it, nothing in it was touched. Choose another directory, or empty or remove it yourself."
        )
    return False


def save_export(model, tokenizer, out_dir: str | Path, metadata: dict, state_dict: dict | None = None,
                dtype: str = "float32") -> Path:
    """Write an HF directory without ever destroying anything that is not an earlier export.

    The export is written into a temporary sibling of ``out_dir``; a directory that is not an export of ours (see
    :func:`check_export_target`) is refused before anything is written; an earlier export is replaced by renaming it
    aside, renaming the new one in, then deleting the old one, so a failure part-way leaves the old export whole.

    Floating-point weights are written in ``dtype`` (``"float32"``, ``"bfloat16"`` or ``"float16"``), whatever
    dtype they have in memory, and ``config.json`` says so."""
    from lit_instruct.models.causal_lm import as_dtype

    out = Path(out_dir)
    check_export_target(out)
    state_dict = state_dict if state_dict is not None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state_dict = cast_state_dict(state_dict, as_dtype(dtype))
    with export_folder(out, tokenizer, metadata) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        set_config_dtype(tmp, dtype)
    return out


@contextmanager
def export_folder(out: Path, tokenizer, metadata: dict):
    """A temporary sibling of ``out`` for the block to write weights into; then the tokenizer and ``metadata`` go in
    and it replaces ``out`` (:func:`_swap_in`). If anything fails, the temporary folder is removed and ``out`` is left
    as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        yield tmp
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, out: Path) -> None:
    """Put the finished directory ``new`` at ``out``. An earlier export there (checked again) is renamed aside,
    ``new`` renamed in, then the old one deleted: each step is an atomic rename, and if the second fails the old export
    is put back. (Killed between the two renames, the old export is left whole as ``.NAME.old-*`` beside ``out``.)"""
    replacing = check_export_target(out)
    if not out.exists():
        new.rename(out)
        return
    aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(aside)
    try:
        new.rename(out)
    except BaseException:
        aside.rename(out)
        raise
    if replacing:
        shutil.rmtree(aside, ignore_errors=True)
    else:
        try:
            aside.rmdir()  # it was empty; should anything have appeared in it since, it is kept
        except OSError:
            pass


def read_metadata(export_dir: str | Path) -> dict:
    """The ``lit_instruct.json`` of an export (empty for a plain Hugging Face directory)."""
    path = Path(export_dir) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
