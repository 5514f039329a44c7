"""Logging helpers: W&B offline when there is no API key, and sample tables for any logger."""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
        hosts = netrc.netrc(path).hosts if path.is_file() else {}
    except (netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def configure_wandb_env() -> str:
    """Make W&B run offline (a folder ``wandb sync`` uploads later) when no API key is set, instead of prompting.

    An explicit ``WANDB_MODE`` is respected. Returns the mode in force.
    """
    if "WANDB_MODE" not in os.environ and not _wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
        rank_zero_info("W&B: no API key found, logging offline (upload later with `wandb sync <run folder>`).")
    os.environ.setdefault("WANDB_SILENT", "true")
    return os.environ.get("WANDB_MODE", "online")


def log_table(trainer, key: str, columns: list[str], rows: list[list]) -> None:
    """Log a table of text (for example sample generations) to every logger of ``trainer`` that can show one.

    W&B gets a ``wandb.Table``, TensorBoard a markdown text; every logger with a folder also gets
    ``<log_dir>/<key>.jsonl`` (one line per logging step), so samples survive whatever the logger.
    """
    folder = trainer.log_dir or trainer.default_root_dir  # a collective (broadcast): every rank must ask
    if not trainer.is_global_zero:
        return
    step = trainer.global_step
    for logger in trainer.loggers:
        name = type(logger).__name__
        if name == "WandbLogger":
            logger.log_text(key=key, columns=columns, data=rows, step=step)
        elif name == "TensorBoardLogger":
            header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            body = "".join("| " + " | ".join(str(c).replace("\n", " ").replace("|", "\\|") for c in r) + " |\n" for r in rows)
            logger.experiment.add_text(key, header + body, global_step=step)
    if folder:
        path = Path(folder) / (key.replace("/", "_") + ".jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "rows": [dict(zip(columns, r)) for r in rows]}) + "\n")
