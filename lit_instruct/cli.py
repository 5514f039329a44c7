"""The ``lit-instruct`` command.

``lit-instruct fit|validate|test --config FILE [--config FILE ...]`` is LightningCLI: the stage's
LightningModule and LightningDataModule are chosen by ``class_path`` in the YAML, and every constructor
argument is a config key and a command-line flag (``--model.kl_coef 0.05``). ``lit-instruct export`` turns a
checkpoint (a ZeRO folder included) into a Hugging Face directory.
"""

from __future__ import annotations

import argparse
import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lit_instruct.loggers import configure_wandb_env

TOOLS = {
    "export": "convert a checkpoint (file or DeepSpeed ZeRO folder) into a Hugging Face export",
    "pipeline": "base -> SFT -> reward model -> PPO-ptx and a plain-PPO control, with a report",
    "sweep": "run a W&B sweep file offline with W&B's own sweep engine",
    "study": "the alignment-tax plots and table from a sweep's runs",
}


class LitInstructCLI(LightningCLI):
    """LightningCLI with any LightningModule / LightningDataModule selectable by ``class_path``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"} if _has_omegaconf() else {})
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


def export_main(argv: list[str]) -> None:
    """``lit-instruct export CHECKPOINT --out DIR``. A damaged, unsafe or foreign checkpoint, or an ``--out`` that
    is not an earlier export, ends with one line on stderr and exit status 1 (``LIT_INSTRUCT_DEBUG=1``: traceback)."""
    import os

    from lit_instruct.export import CheckpointError, ExportError, export_checkpoint

    parser = argparse.ArgumentParser(prog="lit-instruct export", description=TOOLS["export"])
    parser.add_argument("checkpoint", help="a .ckpt file, or the folder DeepSpeed ZeRO writes")
    parser.add_argument("--out", required=True, help="directory of the Hugging Face export: new, empty, or an earlier export")
    args = parser.parse_args(argv)
    try:
        print(export_checkpoint(args.checkpoint, args.out))
    except (CheckpointError, ExportError) as err:
        if os.environ.get("LIT_INSTRUCT_DEBUG"):
            raise
        print(f"lit-instruct export: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "export":
        return export_main(args[1:])
    if args and args[0] == "pipeline":
        from lit_instruct.pipeline import main as pipeline_main

        configure_wandb_env()
        return pipeline_main(args[1:])
    if args and args[0] == "sweep":
        from lit_instruct.sweep import main as sweep_main

        configure_wandb_env()
        return sweep_main(args[1:])
    if args and args[0] == "study":
        from lit_instruct.study import main as study_main

        return study_main(args[1:])
    configure_wandb_env()
    LitInstructCLI(args=argv)


if __name__ == "__main__":
    main()
