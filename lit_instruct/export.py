"""Hugging Face exports: the directory every stage leaves, and conversion of (ZeRO) checkpoints into one.

An export holds the model (``config.json``, safetensors weights), the tokenizer, and ``lit_instruct.json``
(stage, metrics, the config that trained it). ``transformers.AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

METADATA_FILE = "lit_instruct.json"


def _is_zero3(strategy) -> bool:
    return bool(getattr(strategy, "zero_stage_3", False))


def full_state_dict(model: torch.nn.Module, strategy=None) -> dict[str, torch.Tensor] | None:
    """The model's full state dict on CPU, gathering ZeRO-3 partitions (a collective: call on every rank).

    Returns ``None`` on ranks other than 0 under ZeRO-3; elsewhere the model's own state dict.
    """
    if strategy is not None and _is_zero3(strategy):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if strategy.global_rank != 0:
                return None
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


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


def save_export(model, tokenizer, out_dir: str | Path, metadata: dict, state_dict: dict | None = None,
                dtype: str = "float32") -> Path:
    """Write an HF directory atomically (into a temporary sibling, then renamed), replacing any old one.

    Floating-point weights are written in ``dtype`` (``"float32"``, ``"bfloat16"`` or ``"float16"``), whatever
    dtype they have in memory, and ``config.json`` says so."""
    from lit_instruct.models import as_dtype

    state_dict = state_dict if state_dict is not None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state_dict = cast_state_dict(state_dict, as_dtype(dtype))
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        set_config_dtype(tmp, dtype)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_metadata(export_dir: str | Path) -> dict:
    """The ``lit_instruct.json`` of an export (empty for a plain Hugging Face directory)."""
    path = Path(export_dir) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_checkpoint_file(checkpoint: str | Path) -> Path:
    """A single-file Lightning checkpoint for ``checkpoint``: a ZeRO checkpoint folder is consolidated first."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found")
    if path.is_dir():
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        single = Path(tempfile.mkdtemp(prefix="lit-instruct-ckpt-")) / "consolidated.ckpt"
        convert_zero_checkpoint_to_fp32_state_dict(str(path), str(single))
        return single
    return path


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Convert a Lightning checkpoint (a file, or a DeepSpeed ZeRO folder) of any lit-instruct stage to an export."""

    from lit_instruct.utils import import_object

    single = load_checkpoint_file(checkpoint)
    ckpt = torch.load(single, map_location="cpu", weights_only=False)
    info = ckpt.get("lit_instruct")
    if not info:
        raise ValueError(f"{checkpoint}: not a lit-instruct checkpoint (no 'lit_instruct' entry)")
    cls = import_object(info["class_path"])
    module = cls.load_from_checkpoint(single, map_location="cpu")
    module.prepare_export_from_checkpoint(ckpt)
    return module.export(out_dir, extra={"source_checkpoint": str(checkpoint)})
