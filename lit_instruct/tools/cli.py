"""The ``lit-instruct`` command.

``lit-instruct fit|validate --config FILE [--config FILE ...]`` is LightningCLI: the stage's LightningModule and
LightningDataModule are chosen by ``class_path`` in the YAML, and every constructor argument is a config key and a
command-line flag (``--model.kl.kl_coef 0.05``). A config may compose shared fragments (``compose:``, read by
:mod:`lit_instruct.tools.configs`). ``export``, ``pipeline``, ``sweep``, ``study``, ``eval``, ``interpolate``, ``sample``, ``label`` and ``best-of-n`` are the tools
around the stages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from lit_instruct.loggers import configure_wandb_env
from lit_instruct.tools.configs import expand_config_args
from lit_instruct.utils import import_object

TOOLS = {
    "export": "convert a checkpoint (file or DeepSpeed ZeRO folder) into a Hugging Face export",
    "pipeline": "pretrain -> SFT -> reward model -> PPO-ptx and a plain-PPO control, with a report",
    "sweep": "run a W&B sweep file offline with W&B's own sweep engine",
    "study": "the alignment-tax plots and table from a sweep's runs; gold vs proxy over-optimisation curves and fits",
    "eval": "the alignment tax on public NLP benchmarks (lm-evaluation-harness): SQuADv2, DROP, FR->EN, any harness task",
    "interpolate": "the weight-interpolation baseline: SFT and PPO weights mixed at several ratios, reward and tax each",
    "sample": "K sampled responses per prompt from a policy export (the iterated loop's first step; best-of-n)",
    "label": "rank sampled responses with a judge reward model into the reward stage's ranking format",
    "best-of-n": "best-of-n against proxy reward models, scored by a gold one (over-optimisation, Gao et al.)",
}

#: The tools that read finished runs or exports (no W&B run of their own): their modules, each with a ``main(argv)``.
OFFLINE_TOOLS = {"study": "study", "eval": "tax", "interpolate": "interpolate", "sample": "sample", "label": "label",
                 "best-of-n": "best_of_n"}


#: The Trainer entry points the stages implement (none has a test or predict step).
LIGHTNING_SUBCOMMANDS = {
    "fit": "train a stage (--config configs/<stage>/<size>.yaml)",
    "validate": "the validation metrics of a stage's config or checkpoint",
}
CHECKPOINT_CALLBACK = "lightning.pytorch.callbacks.ModelCheckpoint"


class LitInstructCLI(LightningCLI):
    """LightningCLI with any LightningModule / LightningDataModule selectable by ``class_path``, ``fit`` and
    ``validate`` only, and rules of its own:

    - **Configs compose.** A ``--config`` file with ``compose:`` is read with its fragments by
      :func:`~lit_instruct.tools.configs.load_config`, the loader the pipeline and the study use too.
    - **Run folders follow ``trainer.default_root_dir``.** A ``ModelCheckpoint`` without a ``dirpath`` writes to
      ``<default_root_dir>/checkpoints``, a logger without a ``save_dir`` to ``<default_root_dir>``, and the export
      (``model.export_dir`` unset) to ``<default_root_dir>/export``. A W&B run without a name is named after the
      folder, and one without tags is tagged with the stage and the rest of that name (``runs/sft-tiny``:
      ``sft-tiny``, tags ``sft``, ``tiny``).
    - **One run per folder.** ``fit`` into a folder whose checkpoints folder already holds checkpoints stops with a
      message, unless it resumes one (``--ckpt_path``) or is told to start over (``--overwrite true``: the earlier
      checkpoints are deleted). Lightning would otherwise write ``last-v1.ckpt`` beside the first run's.
    - **On resume, what you say now wins.** With ``--ckpt_path``, the model is rebuilt from the configs and flags
      given now and the checkpoint's weights and training state; LightningCLI's default of laying the checkpoint's
      saved hyper-parameters over them is off. Settings that differ from the checkpoint's are printed.
    """

    def __init__(self, *args, **kwargs) -> None:
        import jsonargparse

        # The documentation of dataclass fields (TinyConfig, PPO's settings groups) is the string under each field.
        jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"} if _has_omegaconf() else {})
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in LIGHTNING_SUBCOMMANDS}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit into a run folder that holds an earlier run's checkpoints: delete them first")

    def parse_arguments(self, parser, args) -> None:
        """Parse the command line (``sys.argv`` when ``args`` is None) with composed configs resolved first."""
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(expand_config_args(list(sys.argv[1:] if args is None else args)))

    # ------------------------------------------------------------------ resume: the user's settings win
    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        saved = checkpoint_hyperparameters(ckpt_path)
        current = _plain(self.config[subcommand].get("model"))
        current = current.get("init_args", current) if isinstance(current, dict) else {}
        differ = [f"model.{k}: {saved[k]!r} (checkpoint) -> {current[k]!r} (now)"
                  for k in sorted(set(saved) & set(current)) if not _same(saved[k], current[k])]
        if differ:
            print(f"[resume] {ckpt_path}: settings that differ from the checkpoint's (yours are used):\n  "
                  + "\n  ".join(differ), file=sys.stderr, flush=True)

    def instantiate_classes(self) -> None:
        """Build the classes; an error in a constructor (a missing model directory, bad data settings) comes out as
        itself, not wrapped by jsonargparse in a dump of the whole namespace."""
        try:
            super().instantiate_classes()
        except Exception as error:
            raise _root_cause(error) from None

    # ------------------------------------------------------------------ run folders
    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        trainer = config.get("trainer")
        if trainer is None:
            return
        root = Path(trainer.get("default_root_dir") or os.getcwd())
        checkpoint_dirs = []
        for callback in _as_list(trainer.get("callbacks")):
            if _class_path(callback) == CHECKPOINT_CALLBACK:
                if callback.init_args.get("dirpath") is None:
                    callback.init_args.dirpath = str(root / "checkpoints")
                checkpoint_dirs.append(Path(callback.init_args.dirpath))
        for logger in _as_list(trainer.get("logger")):
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and "save_dir" in init_args and init_args.get("save_dir") in (None, "", "."):
                init_args.save_dir = str(root)
            if init_args is not None and (_class_path(logger) or "").endswith(".WandbLogger") and trainer.get("default_root_dir"):
                name, tags = wandb_name_and_tags(root, _stage_name(config.get("model")))
                if init_args.get("name") is None:
                    init_args.name = name
                if init_args.get("tags") is None:
                    init_args.tags = tags
        if subcommand == "fit" and trainer.get("enable_checkpointing", True) is not False:
            self._one_run_per_folder(checkpoint_dirs, config)

    def _one_run_per_folder(self, checkpoint_dirs: list[Path], config) -> None:
        if config.get("ckpt_path"):
            return
        for folder in checkpoint_dirs:
            earlier = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
            if not earlier:
                continue
            if config.get("overwrite"):
                for path in earlier:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()  # ZeRO checkpoints are folders
                print(f"[run folder] --overwrite: deleted {len(earlier)} earlier checkpoint(s) in {folder}", file=sys.stderr)
                continue
            last = folder / "last.ckpt"
            raise RunFolderError(
                f"{folder} already holds checkpoints of an earlier run ({', '.join(p.name for p in earlier[:3])}"
                f"{', ...' if len(earlier) > 3 else ''}). Resume it with --ckpt_path {last if last.exists() else earlier[-1]}, "
                "start a new run in another folder with --trainer.default_root_dir DIR, or start over here with "
                "--overwrite true (deletes those checkpoints)"
            )


def _root_cause(error: BaseException) -> BaseException:
    """The first exception on ``error``'s chain that is not jsonargparse's wrapping (or ``error`` itself)."""
    seen, cause = {id(error)}, error
    while True:
        inner = cause.__cause__ or cause.__context__
        if inner is None or id(inner) in seen:
            return cause
        seen.add(id(inner))
        cause = inner
        if not type(cause).__module__.startswith("jsonargparse") and "validate against" not in str(cause):
            return cause


def wandb_name_and_tags(root: str | Path, stage: str | None) -> tuple[str, list[str]]:
    """A run folder's W&B name and tags: ``runs/sft-tiny`` of stage ``sft`` is ``sft-tiny``, tagged ``sft``, ``tiny``."""
    name = Path(root).name
    rest = name.removeprefix(f"{stage}-") if stage else name
    return name, list(dict.fromkeys(tag for tag in (stage, rest) if tag))


def _stage_name(model) -> str | None:
    """The ``stage`` of the config's LightningModule class (``sft``, ``ppo``...), or None for another class."""
    try:
        stage = getattr(import_object(_class_path(model) or ""), "stage", None)
    except (ImportError, AttributeError, ValueError):
        return None
    return stage if isinstance(stage, str) else None


class RunFolderError(ValueError):
    """A run would overwrite or collide with an earlier run's files."""


def checkpoint_hyperparameters(path: str | Path) -> dict:
    """The model hyper-parameters a Lightning checkpoint saved (loaded without unpickling code)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable here: the trainer's own load reports it
        return {}
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    return {k: _plain(v) for k, v in hparams.items() if not k.startswith("_")}


def _plain(value):
    """Namespaces and dataclasses as plain dicts, for comparing settings."""
    import dataclasses

    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _same(a, b) -> bool:
    if callable(a) or callable(b):  # an optimizer factory saved as a function: compare what the config says instead
        return True
    return a == b


def _as_list(value) -> list:
    if value is None or value is False or value is True:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _class_path(value) -> str | None:
    return getattr(value, "class_path", None) if not isinstance(value, dict) else value.get("class_path")


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


def export_main(argv: list[str]) -> None:
    """``lit-instruct export CHECKPOINT --out DIR``. A damaged, unsafe or foreign checkpoint, or an ``--out`` that
    is not an earlier export, ends with one line on stderr and exit status 1 (``LIT_INSTRUCT_DEBUG=1``: traceback)."""
    from lit_instruct.models.export import ExportError
    from lit_instruct.tools.checkpoints import CheckpointError, export_checkpoint

    parser = argparse.ArgumentParser(prog="lit-instruct export", description=TOOLS["export"])
    parser.add_argument("checkpoint", help="a .ckpt file, or the folder DeepSpeed ZeRO writes")
    parser.add_argument("--out", required=True, help="directory of the Hugging Face export: new, empty, or an earlier export")
    args = parser.parse_args(argv)
    try:
        print(export_checkpoint(args.checkpoint, args.out))
    except (CheckpointError, ExportError) as err:
        if os.environ.get("LIT_INSTRUCT_DEBUG"):
            raise
        print(f"lit-instruct export: error: {err} (LIT_INSTRUCT_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def print_help() -> None:
    print("usage: lit-instruct SUBCOMMAND [options]   (lit-instruct SUBCOMMAND --help for its options)\n")
    print("Stages (LightningCLI):")
    for name, text in LIGHTNING_SUBCOMMANDS.items():
        print(f"  {name:<12} {text}")
    print("\nTools:")
    for name, text in TOOLS.items():
        print(f"  {name:<12} {text}")
    print("\nErrors in data, configs and checkpoints print as one message; LIT_INSTRUCT_DEBUG=1 shows the traceback.")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        return print_help()
    if os.environ.get("LIT_INSTRUCT_DEBUG"):
        return _main(args)
    from lit_instruct.data.records import DataError

    try:
        return _main(args)
    except (DataError, RunFolderError, FileNotFoundError, ValueError, OSError, ImportError) as error:
        # Bad data, configs, paths or checkpoints: the message says what and where; the traceback only hides it.
        print(f"lit-instruct: error: {error}\n(set LIT_INSTRUCT_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _main(args: list[str]) -> None:
    command, rest = args[0], args[1:]
    if command == "export":
        return export_main(rest)
    if command in OFFLINE_TOOLS:
        return importlib.import_module(f"lit_instruct.tools.{OFFLINE_TOOLS[command]}").main(rest)
    configure_wandb_env()
    if command == "pipeline":
        from lit_instruct.tools.pipeline import main as pipeline_main

        return pipeline_main(rest)
    if command == "sweep":
        from lit_instruct.tools.sweep import main as sweep_main

        return sweep_main(rest)
    LitInstructCLI(args=args)


if __name__ == "__main__":
    main()
