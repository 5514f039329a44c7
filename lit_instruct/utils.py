"""Small helpers with no better home."""

from __future__ import annotations

import importlib
from dataclasses import replace


def import_object(path: str):
    """Import ``package.module.Name``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def class_path(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def as_group(value, cls: type):
    """``value`` as a new ``cls`` instance (a group of settings): a dict (from YAML, a checkpoint or an export) is
    built into one, an instance copied (a default instance is never shared)."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else replace(value)
