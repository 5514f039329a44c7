"""Pretraining text: documents separated by blank lines, split once into training and held-out documents, packed
into full-length blocks. The pretrain stage trains on it, PPO-ptx mixes it in, and its held-out documents measure
the alignment tax."""

from __future__ import annotations

from typing import Optional

from torch.utils.data import DataLoader

from lit_instruct.data.batching import LMCollator
from lit_instruct.data.formats import read_documents
from lit_instruct.data.module import DataModule
from lit_instruct.data.problems import DataError
from lit_instruct.data.records import check_range, split


def pretrain_split(text_file: str = "bundled:pretrain.txt", val_fraction: float = 0.1, split_seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) documents of a blank-line-separated corpus; the held-out ones are never trained on."""
    docs = read_documents(text_file)
    train, heldout = split(docs, lambda d: d, val_fraction, split_seed)
    if not train or not heldout:
        empty = "training" if not train else "held-out"
        raise DataError(f"{text_file}: {len(docs)} documents give an empty {empty} split at val_fraction={val_fraction}")
    return train, heldout


def pack_documents(tokenizer, docs: list[str], block_size: int) -> list[dict]:
    """Tokenise documents, join them with EOS, and cut the stream into ``block_size`` blocks (the last partial one dropped)."""
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    return [{"input_ids": b, "labels": b} for b in blocks]


def pack_splits(tokenizer, text_file: str, val_fraction: float, split_seed: int, block_size: int, setting: str,
                need_training: bool = True) -> tuple[list[str], list[str], list[dict], list[dict]]:
    """(training documents, held-out documents, training blocks, held-out blocks) of a corpus (:func:`pretrain_split`,
    :func:`pack_documents`). A :class:`DataError` names the file and the split when the held-out text, or the training
    text when ``need_training``, does not fill one block (``setting`` is the block size's name, to lower)."""
    train_docs, heldout_docs = pretrain_split(text_file, val_fraction, split_seed)
    blocks = {"training": pack_documents(tokenizer, train_docs, block_size), "held-out": pack_documents(tokenizer, heldout_docs, block_size)}
    for name, packed in blocks.items():
        if not packed and (need_training or name == "held-out"):
            raise DataError(f"{text_file}: the {name} split has too little text for one {block_size}-token block "
                            f"(add text or lower {setting})")
    return train_docs, heldout_docs, blocks["training"], blocks["held-out"]


class PretrainDataModule(DataModule):
    """Plain text (documents separated by blank lines), packed into full-length blocks; every token is labelled.

    Args:
        text_file: The corpus; ``bundled:pretrain.txt`` is the bundled Wikipedia + C4 text.
        val_fraction: Share of documents held out (for validation here, for the alignment tax later).
        split_seed: Seed of the deterministic document split.
        block_size: Tokens per training block; ``None`` uses the model's context length.
        batch_size: Blocks per batch (per process).
        num_workers: DataLoader workers.
        num_sample_prompts_tokens: Tokens of each held-out document used as a prompt for logged samples.
        tokenizer_name_or_path: Tokenizer; ``None`` takes the model's.
    """

    name = "pretrain"
    length_setting = "block_size"

    def __init__(
        self,
        text_file: str = "bundled:pretrain.txt",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        block_size: Optional[int] = None,
        batch_size: int = 16,
        num_workers: int = 0,
        num_sample_prompts_tokens: int = 16,
        tokenizer_name_or_path: Optional[str] = None,
    ) -> None:
        super().__init__()
        check_range("data.val_fraction", val_fraction, 0, below=1)
        check_range("data.block_size", block_size, 2, optional=True)
        check_range("data.batch_size", batch_size, 1)
        check_range("data.num_workers", num_workers, 0)
        check_range("data.num_sample_prompts_tokens", num_sample_prompts_tokens, 1)
        self.save_hyperparameters()
        self.train_blocks: list[dict] = []
        self.val_blocks: list[dict] = []
        self.heldout_docs: list[str] = []

    def load(self) -> None:
        h = self.hparams
        train_docs, self.heldout_docs, self.train_blocks, self.val_blocks = pack_splits(
            self.tokenizer, h.text_file, h.val_fraction, h.split_seed, self.max_length, "data.block_size")
        self.log(f"{len(train_docs)} train / {len(self.heldout_docs)} held-out documents from {h.text_file}: "
                 f"{len(self.train_blocks)} / {len(self.val_blocks)} blocks of {self.max_length} tokens")

    def sample_prompts(self, n: int) -> list[str]:
        k = self.hparams.num_sample_prompts_tokens
        return [self.tokenizer.decode(self.tokenizer(d, add_special_tokens=False)["input_ids"][:k]) for d in self.heldout_docs[:n]]

    def collator(self) -> LMCollator:
        return LMCollator(self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_blocks, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_blocks)
