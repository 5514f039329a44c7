"""The bundled data: small, real, public data that makes the embedded default run with no download.

Any file argument in lit-instruct accepts ``bundled:NAME`` (for example ``bundled:sft.jsonl``) as well as
an ordinary path; :func:`resolve` turns it into a path inside this package. Sources and licences are in
``NOTICE.md`` beside this file; ``PERMISSIVE_LICENSES`` names the licences the ``only_permissive``
switches of the data modules keep.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
PREFIX = "bundled:"

#: Licence prefixes (of each row's ``license`` field) that allow any use, commercial included,
#: with no share-alike condition. Rows under non-commercial terms (CC-BY-NC, LIMA, AlpacaEval) are dropped
#: by ``only_permissive=True``.
PERMISSIVE_LICENSES = ("Apache-2.0", "MIT")


def resolve(path: str | Path) -> Path:
    """Return the filesystem path of ``path``, resolving ``bundled:NAME`` to the packaged file."""
    text = str(path)
    if text.startswith(PREFIX):
        name = text[len(PREFIX):]
        target = ROOT / name
        if not target.is_file():
            available = ", ".join(sorted(p.name for p in ROOT.iterdir() if p.suffix in {".jsonl", ".txt"}))
            raise FileNotFoundError(f"{text}: no bundled file named {name!r} (available: {available})")
        return target
    return Path(text).expanduser()


def is_permissive(license_text: str | None) -> bool:
    """True when a row's ``license`` field starts with one of :data:`PERMISSIVE_LICENSES`."""
    return bool(license_text) and str(license_text).startswith(PERMISSIVE_LICENSES)
