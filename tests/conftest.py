"""Fixtures every test folder shares; plain helpers (paths, run_cli, quiet_trainer, write_jsonl, ...) are in
``helpers.py``.

Tests mirror the package: ``models/``, ``data/``, ``stages/`` and ``tools/`` hold one ``test_<module>.py`` per module
they test; top-level modules and the suites that cut across the package (conformance, real checkpoints, resume,
DeepSpeed, bad input, benchmarks, layout) are at this level. The folders have no ``__init__.py``, so test file
names must stay unique across them.
"""

import os

import pytest
import torch
from helpers import build_tiny_exports, tree

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # no test touches the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tokenizer():
    from lit_instruct.models.causal_lm import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory, tokenizer):
    """``tiny_exports / "sft"`` and ``tiny_exports / "rm"``: the tiny SFT export and the normalised reward model built
    from it (:func:`helpers.build_tiny_exports`), built once for the session. Tests read them and never write
    there: the folder is checked unchanged, file by file, when the session ends."""
    root = build_tiny_exports(tmp_path_factory.mktemp("tiny_exports"), tokenizer)
    before = tree(root)
    yield root
    assert tree(root) == before, f"a test wrote into the shared exports under {root}"
