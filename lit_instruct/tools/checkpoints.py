"""Lightning checkpoints: loaded safely (``weights_only``), and converted into a Hugging Face export."""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from lit_instruct.models.export import check_export_target


# ------------------------------------------------------------------------------------------------ safe loading
class CheckpointError(ValueError):
    """A checkpoint that is damaged, not a checkpoint, or not safe to load (the message names the file)."""


def safe_checkpoint_types() -> list[type]:
    """The classes (beyond tensors, containers and scalars, which ``weights_only`` loads by default) that
    lit-instruct checkpoints hold and that are loaded as themselves: found by loading real checkpoints of every stage,
    written by the CLI and by the Python API, and DeepSpeed ZeRO-2/3 folders. Each is data only."""
    from lit_instruct.models.causal_lm import TinyConfig
    from lit_instruct.stages.ppo_settings import GROUPS

    types: list[type] = [TinyConfig, *GROUPS.values()]  # model.tiny and PPO's settings, when built in Python
    try:  # DeepSpeed's ZeRO optimizer shards: the stage (an int enum), the loss scale, partition offsets
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        types += [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    except ImportError:
        pass
    return types


class CodeReference:
    """Stands in for a function or class that a checkpoint names in its hyper-parameters (an optimizer factory given
    in Python, such as ``functools.partial(torch.optim.AdamW, lr=...)``): the name is never imported, and calling
    or building it does nothing. Exporting needs no optimizer; the export records the name."""

    name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.name}: not loaded>"


def _code_reference(name: str) -> type:
    return type("CodeReference", (CodeReference,), {"name": name})


def _is_code_reference(value) -> bool:
    return isinstance(value, CodeReference) or (isinstance(value, type) and issubclass(value, CodeReference))


def _code_references(obj, path: str = "", seen: set | None = None) -> list[tuple[str, str]]:
    """``(where, name)`` of every code reference in a loaded object (containers, and the attributes of allow-listed
    data objects, walked once each)."""
    if _is_code_reference(obj):
        return [(path or "(top level)", obj.name)]
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (torch.Tensor, str, bytes, int, float, type(None))):
        return []
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = [(f"{path}.{key}" if path else str(key), value) for key, value in obj.items()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = [(f"{path}[{i}]", value) for i, value in enumerate(obj)]
    else:
        items = [(f"{path}.{key}", value) for key, value in getattr(obj, "__dict__", {}).items()]
    return [found for where, value in items for found in _code_references(value, where, seen)]


HYPER_PARAMETER_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


def _damaged(path: Path, err: BaseException | None = None, why: str | None = None) -> CheckpointError:
    if why is None:
        text = str(err).strip().split(". ")[0].splitlines()[0] if err is not None and str(err).strip() else type(err).__name__
        why = f"unreadable: {text}"
    return CheckpointError(f"{path}: damaged or not a checkpoint ({why})")


def unsafe_globals(path: Path) -> list[str]:
    """Names of the functions and classes a ``torch.save`` file refers to beyond what ``weights_only`` loads by
    default, read from its pickle without running it. Damaged or foreign files raise :class:`CheckpointError`."""
    try:
        if path.stat().st_size == 0:
            raise _damaged(path, why="the file is empty")
        with open(path, "rb") as f:
            if not zipfile.is_zipfile(f):
                raise _damaged(path, why="not a PyTorch checkpoint archive; truncated, or some other file")
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except CheckpointError:
        raise
    except Exception as err:  # the zip reader's errors, a missing data.pkl, a malformed pickle
        raise _damaged(path, err) from None


def _refused(path: Path, names: list[str], where: str = "") -> CheckpointError:
    return CheckpointError(
        f"refusing to load {path}: not a plain checkpoint (it refers to code{where}: {', '.join(names)}); lit-instruct "
        "loads checkpoints with weights_only and never runs code from one"
    )


def _allowed(path: Path, code_references: bool = True) -> list:
    """The ``safe_globals`` list for ``path``: our data types, and an inert :class:`CodeReference` for every other
    name it refers to (with ``code_references`` false, a file naming any other is refused)."""
    types = safe_checkpoint_types()
    known = {f"{t.__module__}.{t.__qualname__}" for t in types}
    others = [name for name in unsafe_globals(path) if name not in known]
    if others and not code_references:
        raise _refused(path, others)
    return [*types, *((_code_reference(name), name) for name in others)]


def safe_load(path: str | Path, allowed: list | None = None) -> dict:
    """``torch.load(path, weights_only=True)`` of a Lightning checkpoint file, on CPU.

    Only tensors, containers, scalars and :func:`safe_checkpoint_types` are built; a function or class the file names
    becomes an inert :class:`CodeReference`, accepted only inside the saved hyper-parameters (where Lightning records
    constructor arguments such as an optimizer factory). Anything else is refused; damaged files are named in a
    :class:`CheckpointError`."""
    path = Path(path)
    allowed = _allowed(path) if allowed is None else allowed
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        named = re.findall(r"GLOBAL (\S+)", text)  # a blocked module (os, sys, ...) or a name found only when run
        if named or re.search(r"reduce|Can only (build|create)|allowed global", text):
            raise _refused(path, sorted(set(named)) or ["a call it may not make"]) from None
        raise _damaged(path, err) from None
    except Exception as err:  # EOFError, the zip reader's RuntimeError, a malformed pickle
        raise _damaged(path, err) from None
    if not isinstance(ckpt, dict):
        raise _damaged(path, why=f"holds a {type(ckpt).__name__}, not a checkpoint's dictionary")
    outside = [found for key, value in ckpt.items() if key not in HYPER_PARAMETER_KEYS
               for found in _code_references(value, str(key))]
    if outside:
        raise _refused(path, sorted({name for _, name in outside}), where=f" in {outside[0][0]}")
    return ckpt


@contextlib.contextmanager
def _weights_only_everywhere():
    """Every ``torch.load`` in the block loads with ``weights_only=True``, even where the caller (DeepSpeed's ZeRO
    conversion, which passes ``weights_only=False``) asks otherwise."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_zero_checkpoint(folder: str | Path) -> dict:
    """A DeepSpeed ZeRO checkpoint folder (as Lightning writes it) as one Lightning checkpoint dictionary with the
    consolidated fp32 ``state_dict``, loaded safely: DeepSpeed's own consolidation (whose ``torch.load`` calls pass
    ``weights_only=False``) runs with every ``torch.load`` forced to ``weights_only`` and the same allow-list as
    :func:`safe_load`; Lightning's part of the rank-0 model-state file is read by :func:`safe_load` itself."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        raise CheckpointError(f"{folder}: not a DeepSpeed ZeRO checkpoint folder (no 'latest' file)")
    tag = latest.read_text().strip()
    shards = folder / tag
    if not tag or Path(tag).name != tag or not shards.is_dir():
        raise CheckpointError(f"{latest}: names {tag!r}, which is not a checkpoint folder beside it")
    model_files = sorted(shards.glob("*_model_states.pt"))
    optim_files = sorted(shards.glob("*_optim_states.pt"))
    if not model_files or not optim_files:
        raise CheckpointError(f"{shards}: damaged ZeRO checkpoint (no model-state or optimizer-state files)")
    # Optimizer shards hold tensors and DeepSpeed's data only; Lightning's state (hyper-parameters, which may name an
    # optimizer factory) sits in the model-state files.
    allowed = [entry for file in optim_files for entry in _allowed(file, code_references=False)]
    allowed += [entry for file in model_files for entry in _allowed(file)]
    client = next((f for f in model_files if f.name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")),
                  model_files[0])
    ckpt = safe_load(client, allowed)  # Lightning's checkpoint, beside DeepSpeed's entries
    for key in ("module", "optimizer", "lr_scheduler", "csr_tensor_module_names", "skipped_steps", "global_steps",
                "dp_world_size", "mp_world_size"):
        ckpt.pop(key, None)
    try:
        with _weights_only_everywhere(), torch.serialization.safe_globals(allowed):
            state_dict = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag)
    except pickle.UnpicklingError as err:
        raise _refused(shards, sorted(set(re.findall(r"GLOBAL (\S+)", str(err)))) or ["a call it may not make"]) from None
    except Exception as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{shards}: damaged ZeRO checkpoint ({type(err).__name__}: {text})") from None
    ckpt["state_dict"] = {k.removeprefix("_forward_module."): v for k, v in state_dict.items()}
    return ckpt


def load_checkpoint(checkpoint: str | Path) -> dict:
    """A Lightning checkpoint (a file, or a DeepSpeed ZeRO folder consolidated in memory), loaded safely: see
    :func:`safe_load` and :func:`load_zero_checkpoint`."""
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{checkpoint}: checkpoint not found")
    if path.is_dir():
        return load_zero_checkpoint(path)
    return safe_load(path)


def _plain_hyper_parameters(hparams) -> tuple[dict, dict]:
    """The saved hyper-parameters as constructor arguments (without LightningCLI's ``_class_path`` and
    ``_instantiator``), and those that hold code references, by name (left to the constructor's defaults)."""
    plain, references = {}, {}
    for key, value in dict(hparams or {}).items():
        if str(key).startswith("_"):
            continue
        found = _code_references(value)
        if found:
            references[key] = ", ".join(name for _, name in found)
        else:
            plain[key] = value
    return plain, references


#: Class paths of the stages before the redesign (checkpoints written then still export).
LEGACY_CLASS_PATHS = {
    "lit_instruct.base.BaseModule": "lit_instruct.stages.pretrain.PretrainModule",
    "lit_instruct.sft.SFTModule": "lit_instruct.stages.sft.SFTModule",
    "lit_instruct.reward.RewardModule": "lit_instruct.stages.reward.RewardModule",
    "lit_instruct.ppo_ptx.PPOPtxModule": "lit_instruct.stages.ppo.PPOModule",
}


def stage_class(checkpoint: str | Path, ckpt: dict) -> type:
    """The lit-instruct stage a checkpoint names: only a ``lit_instruct`` class that is a :class:`Stage` is imported."""
    from lit_instruct.stages.stage import Stage
    from lit_instruct.utils import import_object

    info = ckpt.get("lit_instruct")
    if not isinstance(info, dict) or not isinstance(info.get("class_path"), str):
        raise CheckpointError(f"{checkpoint}: not a lit-instruct checkpoint (no 'lit_instruct' entry)")
    name = LEGACY_CLASS_PATHS.get(info["class_path"], info["class_path"])
    cls = None
    if name.startswith("lit_instruct."):
        try:
            cls = import_object(name)
        except Exception:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise CheckpointError(f"{checkpoint}: names the class {name!r}, which is not a lit-instruct stage")
    return cls


def module_from_checkpoint(checkpoint: str | Path, ckpt: dict):
    """Rebuild a stage's module from a loaded checkpoint without unpickling or importing anything it names: the
    constructor gets the saved hyper-parameters (code references left to their defaults: exporting trains
    nothing; names from before a class's arguments were regrouped are mapped by its ``upgrade_hparams``), then the
    checkpoint's ``state_dict`` is loaded strictly. The module's ``hparams`` keep the saved values, code references by
    name."""
    cls = stage_class(checkpoint, ckpt)
    if not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("hyper_parameters", {}), dict):
        raise CheckpointError(f"{checkpoint}: damaged or not a checkpoint (no 'state_dict', or malformed hyper-parameters)")
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    plain, references = _plain_hyper_parameters(ckpt.get("hyper_parameters"))
    plain = cls.upgrade_hparams(plain)
    kwargs = {k: v for k, v in plain.items() if takes_any or k in params}
    module = cls(**kwargs)
    for key, names in references.items():
        module.hparams[key] = f"{names} (not loaded)"
    module.on_load_checkpoint(ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=module.strict_loading)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: its weights do not fit a {cls.__name__} built from its hyper-parameters "
                              f"({str(err).splitlines()[0]})") from None
    return module


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Convert a Lightning checkpoint (a file, or a DeepSpeed ZeRO folder) of any lit-instruct stage to an export.

    Loaded with ``weights_only`` (see :func:`load_checkpoint`), the module rebuilt by :func:`module_from_checkpoint`;
    ``out_dir`` must be new, empty, or an earlier export (see :func:`save_export`), and is checked first."""
    check_export_target(out_dir)
    ckpt = load_checkpoint(checkpoint)
    module = module_from_checkpoint(checkpoint, ckpt)
    for key in HYPER_PARAMETER_KEYS:  # what prepare_export_from_checkpoint reads: plain values only
        if isinstance(ckpt.get(key), dict):
            ckpt[key] = _plain_hyper_parameters(ckpt[key])[0]
    module.prepare_export_from_checkpoint(ckpt)
    return module.export(out_dir, extra={"source_checkpoint": str(checkpoint)})
