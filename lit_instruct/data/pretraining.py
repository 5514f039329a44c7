"""Pretraining text: documents separated by blank lines, split once into training and held-out documents, packed
into full-length blocks. The pretrain stage trains on it, PPO-ptx mixes it in, and its held-out documents measure
the alignment tax."""

from __future__ import annotations

from typing import Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_instruct.data.batching import LMCollator
from lit_instruct.data.records import DataError, check_range, read_documents, split
from lit_instruct.models.causal_lm import load_tokenizer


def pretrain_split(text_file: str = "bundled:pretrain.txt", val_fraction: float = 0.1, split_seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) documents of a blank-line-separated corpus; the held-out ones are never trained on."""
    docs = read_documents(text_file)
    train, heldout = split(docs, lambda d: d, val_fraction, split_seed)
    if not train or not heldout:
        empty = "training" if not train else "held-out"
        raise DataError(f"{text_file}: {len(docs)} documents give an empty {empty} split at val_fraction={val_fraction}")
    return train, heldout


def check_blocks(text_file: str, blocks: dict[str, list], block_size: int, setting: str) -> None:
    """A :class:`DataError` naming the file and the split when a split's text does not fill one block."""
    for name, packed in blocks.items():
        if not packed:
            raise DataError(f"{text_file}: the {name} split has too little text for one {block_size}-token block "
                            f"(add text or lower {setting})")


def pack_documents(tokenizer, docs: list[str], block_size: int) -> list[dict]:
    """Tokenise documents, join them with EOS, and cut the stream into ``block_size`` blocks (the last partial one dropped)."""
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    return [{"input_ids": b, "labels": b} for b in blocks]


class PretrainDataModule(L.LightningDataModule):
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
        self.tokenizer = None
        self.train_blocks: list[dict] = []
        self.val_blocks: list[dict] = []
        self.heldout_docs: list[str] = []

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_blocks:
            return
        h = self.hparams
        module = self.trainer.lightning_module if self.trainer is not None else None
        self.tokenizer = module.tokenizer if module is not None and not h.tokenizer_name_or_path else load_tokenizer(
            h.tokenizer_name_or_path or "embedded"
        )
        block = h.block_size or (module.context_length if module is not None else 256)
        train_docs, self.heldout_docs = pretrain_split(h.text_file, h.val_fraction, h.split_seed)
        self.train_blocks = pack_documents(self.tokenizer, train_docs, block)
        self.val_blocks = pack_documents(self.tokenizer, self.heldout_docs, block)
        check_blocks(h.text_file, {"training": self.train_blocks, "held-out": self.val_blocks}, block, "data.block_size")
        rank_zero_info(
            f"[pretrain data] {len(train_docs)} train / {len(self.heldout_docs)} held-out documents from {h.text_file}: "
            f"{len(self.train_blocks)} / {len(self.val_blocks)} blocks of {block} tokens"
        )

    def sample_prompts(self, n: int) -> list[str]:
        k = self.hparams.num_sample_prompts_tokens
        return [self.tokenizer.decode(self.tokenizer(d, add_special_tokens=False)["input_ids"][:k]) for d in self.heldout_docs[:n]]

    def _loader(self, blocks: list[dict], shuffle: bool) -> DataLoader:
        collate = LMCollator(self.tokenizer.pad_token_id)
        return DataLoader(blocks, batch_size=self.hparams.batch_size, shuffle=shuffle, collate_fn=collate, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_blocks, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_blocks, shuffle=False)
