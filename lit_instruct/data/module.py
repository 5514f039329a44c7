"""What every data module does the same way: take the tokenizer and the context length from the model
(:meth:`DataModule.connect`), read, encode and count rows (:class:`Stats`), report them, and build loaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_instruct import bundled
from lit_instruct.data.problems import DataError, Problem, raise_problems
from lit_instruct.data.prompt_format import PromptFormat, prompt_key
from lit_instruct.data.records import Validator, check_columns, read_rows, split
from lit_instruct.models.causal_lm import EMBEDDED, load_tokenizer


class DataModule(L.LightningDataModule):
    """A data module that encodes its data only once the tokenizer and the model's context length are known.

    They are handed over with :meth:`connect` (litgpt's pattern), which :meth:`setup` calls with the trainer's
    LightningModule (:meth:`connect_module`) unless it was called before; :meth:`setup` then calls
    :meth:`prepare` once. Without a Trainer: ``connect(tokenizer, max_length)``, then ``prepare()``.

    Subclasses implement :meth:`load` (read, validate and encode) and :meth:`collator`; ``name`` tags their log
    lines, ``length_setting`` names the argument that caps sequence length (``None`` there: the model's context),
    and ``default_length`` is the cap without either.
    """

    name = "data"
    length_setting = "max_length"
    default_length = 256

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = None
        self.max_length: Optional[int] = None
        self.connected = False
        self.prepared = False

    # ------------------------------------------------------------------ hand-over
    def connect(self, tokenizer=None, max_length: Optional[int] = None) -> None:
        """Hand over the model's ``tokenizer`` (``None``: ``tokenizer_name_or_path``'s, else the embedded one) and
        its context length ``max_length`` (``None``: unknown). Sets :attr:`max_length` to the configured length, which
        may not exceed the context, else to the context, else to ``default_length``."""
        self.tokenizer = tokenizer if tokenizer is not None else self.own_tokenizer()
        configured = self.hparams[self.length_setting]
        if configured and max_length and configured > max_length:
            raise ValueError(f"data.{self.length_setting}={configured} exceeds the model's context length {max_length}")
        self.max_length = configured or max_length or self.default_length
        self.connected = True

    def connect_module(self, module: L.LightningModule) -> None:
        """:meth:`connect` with what ``module`` (the trainer's LightningModule) has: its tokenizer (unless
        ``tokenizer_name_or_path`` is set) and its context length."""
        self.connect(None if self.hparams.get("tokenizer_name_or_path") else module.tokenizer, module.context_length)

    def own_tokenizer(self):
        """The tokenizer this data names (``tokenizer_name_or_path``), else the embedded one."""
        return load_tokenizer(self.hparams.get("tokenizer_name_or_path") or EMBEDDED)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: Optional[str] = None) -> None:
        if not self.prepared:
            module = self.trainer.lightning_module if self.trainer is not None else None
            if module is not None and not self.connected:
                self.connect_module(module)
            self.prepare()
        if self.trainer is not None and not self.metrics_logged:
            metrics = self.metrics()
            for logger in self.trainer.loggers if metrics else []:
                logger.log_metrics(metrics, step=0)
            self.metrics_logged = True

    metrics_logged = False

    def metrics(self) -> dict[str, float]:
        """Statistics of the data (``data/...``), logged once, at the first :meth:`setup` with a Trainer (default:
        none)."""
        return {}

    def prepare(self) -> None:
        """Read, validate and encode the data (called by :meth:`setup`; usable without a Trainer, after
        :meth:`connect` or with the data's own tokenizer)."""
        if not self.connected:
            self.connect()
        self.load()
        self.prepared = True

    def load(self) -> None:
        raise NotImplementedError

    def collator(self) -> Callable[[list], Any]:
        raise NotImplementedError

    def loader(self, examples: list, shuffle: bool = False) -> DataLoader:
        """``examples`` in batches of ``batch_size`` made by :meth:`collator`, with ``num_workers`` workers."""
        h = self.hparams
        return DataLoader(examples, batch_size=h.batch_size, shuffle=shuffle, collate_fn=self.collator(), num_workers=h.num_workers)

    def log(self, message: str) -> None:
        rank_zero_info(f"[{self.name} data] {message}")


@dataclass
class Stats:
    """What encoding did to the rows of one split: rows kept (``cut`` of them, or of their completions, shortened to
    fit) and rows skipped as over-long (each with its file, line and reason); rankings also count the completions
    and the comparisons (non-tied pairs) kept, those with one side or both sides cut, and those (and the prompts
    left with none) that the reward data's ``cut_comparisons`` leaves out of training."""

    kept: int = 0
    cut: int = 0
    skipped: list[Problem] = field(default_factory=list)
    completions: int = 0
    comparisons: int = 0
    comparisons_cut_one: int = 0
    comparisons_cut_both: int = 0
    comparisons_dropped: int = 0
    prompts_dropped: int = 0


def overlong_prompt(prompt_tokens: int, max_length: int, what: str) -> str:
    """Why a row is over-long: its prompt leaves too little of the context for ``what``."""
    return f"prompt is {prompt_tokens} tokens, leaving {max(max_length - prompt_tokens, 0)} of the {max_length}-token context for {what}"


class PromptDataModule(DataModule):
    """A data module of rows with prompts (``prompt_template``, ``chat_template``, ``columns``, ``only_permissive``,
    ``val_fraction``, ``split_seed``, ``overlong``): it formats prompts, reads and splits rows by prompt, encodes
    them with counted skips (:class:`Stats`) and reports the result in one place (:meth:`report`)."""

    #: The fields of this data's rows that ``columns`` may map (besides ``license``, read by ``only_permissive``).
    fields: tuple[str, ...] = ("prompt",)

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, Stats] = {}

    def prompt_format(self) -> PromptFormat:
        """How prompts become model input with this data's settings and tokenizer."""
        tokenizer = self.tokenizer if self.tokenizer is not None else self.own_tokenizer()
        return PromptFormat.from_tokenizer(tokenizer, self.hparams.prompt_template, self.hparams.chat_template)

    def read(self, path: str, validate: Validator) -> list[tuple[int, dict]]:
        """The validated rows of ``path`` (``columns`` renamed); only Apache/MIT ones when ``only_permissive``."""
        check_columns(self.hparams.columns, (*self.fields, "license"))  # a misspelt field, before any file is read
        keep = (lambda row: bundled.is_permissive(row.get("license"))) if self.hparams.only_permissive else None
        return read_rows(path, validate, keep=keep, columns=self.hparams.columns)

    def read_splits(self, validate: Validator, train_file: str, val_file: Optional[str] = None) -> dict[str, tuple[str, list]]:
        """``{"train": (path, rows), "val": (path, rows)}``: ``val_file``'s rows, or ``train_file`` split by prompt."""
        rows = self.read(train_file, validate)
        if val_file:
            return {"train": (train_file, rows), "val": (val_file, self.read(val_file, validate))}
        train, val = split(rows, lambda r: prompt_key(r[1]["prompt"]), self.hparams.val_fraction, self.hparams.split_seed)
        return {"train": (train_file, train), "val": (train_file, val)}

    def encode_splits(self, splits: dict[str, tuple[str, list]], encode: Callable[[dict, PromptFormat, Stats], Any]) -> dict[str, list]:
        """``encode(row, prompt_format, stats)`` of every row of every split: an example, or the reason the row is
        over-long (then it is skipped, and counted); the statistics go to :attr:`stats`."""
        fmt = self.prompt_format()
        self.stats = {}
        encoded: dict[str, list] = {}
        for name, (path, rows) in splits.items():
            stats = self.stats[name] = Stats()
            encoded[name] = []
            for line, row in rows:
                example = encode(row, fmt, stats)
                if isinstance(example, str):
                    stats.skipped.append(Problem(str(path), line, example))
                else:
                    stats.kept += 1
                    encoded[name].append(example)
        return encoded

    def report(self, source: str, counted: str, cut: Optional[str] = None, details: str = "", more: str = "") -> None:
        """The ``overlong=error`` failure, else the summary line: ``[NAME data] T train / V val COUNTED from
        SOURCE DETAILS; C CUT cut to fit N tokens; S over-long rows skipped (first: ...); MORE``; then a
        :class:`DataError` when a split has no rows left."""
        train, val = self.stats["train"], self.stats["val"]
        skipped = train.skipped + val.skipped
        if skipped and self.hparams.overlong == "error":
            raise_problems(skipped, "over-long rows; set data.overlong=skip to drop them instead")
        parts = [f"{train.kept} train / {val.kept} val {counted} from {source}{details}"]
        if cut:
            parts.append(f"{train.cut + val.cut} {cut} cut to fit {self.max_length} tokens")
        parts.append(f"{len(skipped)} over-long rows skipped" + (f" (first: {skipped[0]})" if skipped else ""))
        self.log("; ".join(parts + ([more] if more else [])))
        if not train.kept or not val.kept:
            hint = "raise val_fraction or give val_file" if "val_file" in self.hparams else "raise val_fraction"
            raise DataError(f"{source}: {train.kept} train / {val.kept} validation rows left after the split by prompt "
                            f"and the over-long check; need both ({hint})")
