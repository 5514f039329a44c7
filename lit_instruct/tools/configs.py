"""Stage configs as every tool reads them: a YAML file plus the fragments it composes, and the overlay that the
pipeline and a sweep lay over a stage config for a run folder they own.

A stage config names shared fragments under ``compose:`` (paths relative to the file, applied in order, each of
which may compose others); the file's own keys then override them::

    compose: [../shared/lm.yaml, ../trainer/cpu.yaml]
    trainer:
      default_root_dir: runs/sft-tiny

The merge is jsonargparse's for several ``--config`` files: mappings merge key by key, and a list or a scalar
replaces the earlier value. One difference: an entry whose ``class_path`` differs from the earlier one replaces it
whole (jsonargparse would keep those earlier ``init_args`` the new class accepts). The command line (:class:`~lit_instruct.tools.cli.LitInstructCLI`), the pipeline and the study all read
stage configs through :func:`load_config`, so they see the same settings.
"""

from __future__ import annotations

from pathlib import Path

COMPOSE_KEY = "compose"
CONFIG_FLAGS = ("--config", "-c")


class ConfigError(ValueError):
    """A stage config that cannot be composed (the message names the file)."""


def merge(base: dict, extra: dict) -> dict:
    """``extra`` laid over ``base`` (neither is changed): see the module docstring for the rules."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        out[key] = merge(old, value) if _mergeable(old, value) else value
    return out


def _mergeable(old, new) -> bool:
    """Both mappings, and not two different ``class_path``s."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return False
    return "class_path" not in old or "class_path" not in new or old["class_path"] == new["class_path"]


def _read(path: Path) -> dict:
    from jsonargparse import (
        get_loader,  # the YAML reading jsonargparse applies to config files (1e-3 is a float)
    )

    try:
        data = get_loader("yaml")(path.read_text(encoding="utf-8"))
    except Exception as error:  # yaml's errors carry the line
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys to settings, got {type(data).__name__}")
    return data


def _load(path: Path, chain: tuple[Path, ...]) -> dict:
    if path.resolve() in chain:
        raise ConfigError(f"{path}: composes itself ({' -> '.join(str(p) for p in (*chain, path.resolve()))})")
    data = _read(path)
    fragments = data.pop(COMPOSE_KEY, None) or []
    if isinstance(fragments, str):
        fragments = [fragments]
    if not isinstance(fragments, list) or not all(isinstance(f, str) for f in fragments):
        raise ConfigError(f"{path}: {COMPOSE_KEY}: a list of config files (relative to this one), got {fragments!r}")
    config: dict = {}
    for fragment in fragments:
        file = path.parent / fragment
        if not file.is_file():
            raise ConfigError(f"{path}: {COMPOSE_KEY}: {fragment} does not exist (looked for {file})")
        config = merge(config, _load(file, (*chain, path.resolve())))
    return merge(config, data)


def load_config(*files: str | Path) -> dict:
    """The settings ``lit-instruct fit --config FILE [--config FILE ...]`` reads from these files: each with its
    composed fragments, the files merged left to right."""
    config: dict = {}
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        config = merge(config, _load(path, ()))
    return config


def composes(file: str | Path) -> bool:
    """Whether ``file`` is a config file that composes fragments (a plain one is left to jsonargparse as it is)."""
    path = Path(file)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        return COMPOSE_KEY in _read(path)
    except ConfigError:
        return False  # jsonargparse reports it


def expand_config_args(args: list[str]) -> list[str]:
    """Command-line arguments with each ``--config FILE`` that composes fragments replaced by its resolved settings
    (a YAML string, which jsonargparse's ``--config`` accepts), so ``--print_config`` and every later flag see them."""
    import yaml

    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        flag, equals, value = arg.partition("=")
        if flag not in CONFIG_FLAGS or not (equals or rest):
            out.append(arg)
            continue
        if not equals:
            value = rest.pop(0)
        out += [flag, yaml.safe_dump(load_config(value), sort_keys=False) if composes(value) else value]
    return out


def run_overlay(folder: str | Path, project: str = "lit-instruct", **wandb_args) -> dict:
    """The settings the pipeline and a sweep lay over a stage config for a run folder they own: the folder, its
    export, its checkpoints (``last.ckpt``), a W&B run (``wandb_args``: name, group, tags, ...) and a CSV log beside
    it, and ``overwrite`` (a run they start again starts over)."""
    folder = str(folder)
    return {
        "overwrite": True,
        "trainer": {
            "default_root_dir": folder,
            "logger": [
                {"class_path": "lightning.pytorch.loggers.WandbLogger",
                 "init_args": {"project": project, **wandb_args, "save_dir": folder}},
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": folder, "name": "csv"}},
            ],
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(Path(folder) / "checkpoints"), "save_last": True}}],
        },
        "model": {"init_args": {"export_dir": str(Path(folder) / "export")}},
    }
