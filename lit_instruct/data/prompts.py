"""Prompts for PPO's rollouts and validation, and the pretraining text of its ptx term and alignment-tax metric."""

from __future__ import annotations

import random
from typing import Literal, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_instruct.data.batching import LMCollator
from lit_instruct.data.module import PromptDataModule, Stats
from lit_instruct.data.pretraining import pack_splits
from lit_instruct.data.prompt_format import (
    DEFAULT_TEMPLATE,
    ChatTemplateMode,
    PromptFormat,
    check_prompt_field,
)
from lit_instruct.data.records import check_range
from lit_instruct.models.causal_lm import context_length
from lit_instruct.models.export import read_metadata


class PromptStream(IterableDataset):
    """Endless batches of prompts, reshuffled each pass, resumable: ``start`` batches are skipped.

    Each global batch of ``batch_size * world_size`` prompts is split across processes.
    """

    def __init__(self, prompts: list[list[int]], batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.prompts, self.batch_size, self.seed, self.rank, self.world_size = prompts, batch_size, seed, rank, world_size
        self.start = 0

    def __iter__(self):
        per_pass = max(1, len(self.prompts) // (self.batch_size * self.world_size))
        index = self.start
        while True:
            order = list(range(len(self.prompts)))
            random.Random(self.seed + index // per_pass).shuffle(order)
            offset = (index % per_pass) * self.batch_size * self.world_size + self.rank * self.batch_size
            yield [self.prompts[order[(offset + i) % len(order)]] for i in range(self.batch_size)]
            index += 1


class PPODataModule(PromptDataModule):
    """Prompts for rollouts and validation, and pretraining text for the ptx term and the alignment-tax metric.

    Args:
        prompts_file: ``{"prompt"}`` rows (``bundled:prompts.jsonl``): JSONL, JSON, Parquet, Arrow or CSV, a dataset
            directory or a ``datasets`` name (``NAME`` or ``NAME@SPLIT``); a prompt is a string or a message list.
        columns: The file's column names for our fields, e.g. ``{prompt: question}``.
        val_fraction: Share of prompts held out (deterministic split by prompt) for validation.
        split_seed: Seed of the deterministic splits.
        only_permissive: Keep only prompts whose ``license`` is Apache-2.0 or MIT.
        prompt_template: Template for single-turn prompts (as in SFT).
        chat_template: ``"auto"`` / ``"always"`` / ``"never"``, as in SFT. The format must be the reward model's
            (checked before training) and should be the policy's SFT format (checked when its export records one).
        max_prompt_tokens: Longest prompt in tokens; longer ones are skipped (counted) or an error.
        overlong: ``"skip"`` or ``"error"`` for prompts longer than ``max_prompt_tokens``.
        rollout_batch_size: Prompts per rollout, per process (the paper: 512 in all).
        max_val_prompts: Held-out prompts scored at each validation.
        val_batch_size: Prompts per validation batch.
        pretrain_file: Pretraining text: its training documents feed the ptx term, its held-out documents (the
            same split as the pretrain stage) measure the alignment tax.
        pretrain_val_fraction: Held-out share of pretraining documents (keep it equal to the pretrain stage's).
        ptx_block_size: Tokens per pretraining sequence.
        max_val_pretrain_blocks: Held-out pretraining blocks in the validation LM loss.
        seed: Seed of the prompt and pretraining streams.
    """

    name = "ppo"
    length_setting = "max_prompt_tokens"

    def __init__(
        self,
        prompts_file: str = "bundled:prompts.jsonl",
        columns: Optional[dict[str, str]] = None,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        only_permissive: bool = False,
        prompt_template: str = DEFAULT_TEMPLATE,
        chat_template: ChatTemplateMode = "auto",
        max_prompt_tokens: int = 128,
        overlong: Literal["skip", "error"] = "skip",
        rollout_batch_size: int = 16,
        max_val_prompts: int = 64,
        val_batch_size: int = 16,
        pretrain_file: str = "bundled:pretrain.txt",
        pretrain_val_fraction: float = 0.1,
        ptx_block_size: int = 64,
        max_val_pretrain_blocks: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_range("data.val_fraction", val_fraction, 0, below=1)
        check_range("data.max_prompt_tokens", max_prompt_tokens, 1)
        check_range("data.rollout_batch_size", rollout_batch_size, 1)
        check_range("data.max_val_prompts", max_val_prompts, 1)
        check_range("data.val_batch_size", val_batch_size, 1)
        check_range("data.pretrain_val_fraction", pretrain_val_fraction, 0, below=1)
        check_range("data.ptx_block_size", ptx_block_size, 2)
        check_range("data.max_val_pretrain_blocks", max_val_pretrain_blocks, 1)
        self.save_hyperparameters()
        self.needs_ptx = True
        self.train_prompts: list[list[int]] = []
        self.val_prompts: list[list[int]] = []
        self.ptx_blocks: list[dict] = []
        self.val_blocks: list[dict] = []
        self.consumed_rollouts = 0
        self.consumed_ptx = 0

    def connect(self, tokenizer=None, max_length: Optional[int] = None, needs_ptx: bool = True) -> None:
        """:meth:`DataModule.connect <lit_instruct.data.module.DataModule.connect>`, and whether the ptx term is on
        (``needs_ptx``: then the training text must fill one ``ptx_block_size`` block too)."""
        super().connect(tokenizer, max_length)
        self.needs_ptx = needs_ptx

    def connect_module(self, module) -> None:
        """Connect to the PPO module: its tokenizer, the room its policy and reward model leave a prompt beside
        ``max_new_tokens``, and whether it uses the ptx term; then check the prompt formats (:meth:`check_formats`)."""
        context = min(context_length(module.policy.config), module.context_length)
        longest = self.hparams.max_prompt_tokens + module.max_new_tokens
        if longest > context:
            raise ValueError(
                f"data.max_prompt_tokens ({self.hparams.max_prompt_tokens}) + model.sampling.max_new_tokens "
                f"({module.max_new_tokens}) = {longest} tokens exceed the {context}-token context of the "
                "policy / reward model: lower one of them"
            )
        self.connect(module.tokenizer, context - module.max_new_tokens, needs_ptx=module.uses_ptx)
        self.check_formats(module)

    def check_formats(self, module) -> None:
        """The reward model must read prompts formatted as PPO writes them (else it scores text it never saw in
        training); so should the policy's SFT stage, when its export records its format."""
        ours = self.prompt_format().describe()
        PromptFormat.check_same(ours, module.reward_model.format_description(), "PPO's prompts (data.prompt_template / data.chat_template)",
                                f"the reward model at {module.hparams.reward_model_path}")
        policy_format = read_metadata(module.hparams.policy_name_or_path).get("prompt_format") if module.hparams.policy_name_or_path != "embedded" else None
        if policy_format:
            PromptFormat.check_same(ours, policy_format, "PPO's prompts (data.prompt_template / data.chat_template)",
                                    f"the policy's SFT at {module.hparams.policy_name_or_path}")

    def encode(self, row: dict, fmt: PromptFormat, stats: Stats) -> list[int] | str:
        ids = self.tokenizer(fmt.prompt(row["prompt"]), add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            return f"prompt is {len(ids)} tokens, longer than max_prompt_tokens={self.max_length}"
        return ids

    def load(self) -> None:
        """Read and validate the prompts and the pretraining text. The held-out pretraining text must fill one
        ``ptx_block_size`` block, and so must the training text when the ptx term is on (``needs_ptx``)."""
        h = self.hparams
        encoded = self.encode_splits(self.read_splits(check_prompt_field, h.prompts_file), self.encode)
        self.report(h.prompts_file, "prompts")
        self.train_prompts, self.val_prompts = encoded["train"], encoded["val"][: h.max_val_prompts]
        _, _, self.ptx_blocks, val_blocks = pack_splits(self.tokenizer, h.pretrain_file, h.pretrain_val_fraction, h.split_seed,
                                                        h.ptx_block_size, "data.ptx_block_size", self.needs_ptx)
        random.Random(h.seed).shuffle(self.ptx_blocks)
        self.val_blocks = val_blocks[: h.max_val_pretrain_blocks]
        self.log(f"{len(self.ptx_blocks)} ptx / {len(self.val_blocks)} held-out pretraining blocks of {h.ptx_block_size} "
                 f"tokens from {h.pretrain_file}; {len(self.val_prompts)} prompts scored at each validation")

    # ------------------------------------------------------------------ streams
    def ptx_batch(self, n: int) -> dict[str, torch.Tensor]:
        """The next ``n`` pretraining blocks for this process (a resumable stream over the training documents)."""
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        start = (self.consumed_ptx * world + rank) * n
        self.consumed_ptx += 1
        blocks = [self.ptx_blocks[(start + i) % len(self.ptx_blocks)] for i in range(n)]
        return LMCollator(self.tokenizer.pad_token_id)(blocks)

    def state_dict(self) -> dict:
        return {"consumed_rollouts": self.consumed_rollouts, "consumed_ptx": self.consumed_ptx}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_rollouts = state["consumed_rollouts"]
        self.consumed_ptx = state["consumed_ptx"]

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        stream = PromptStream(self.train_prompts, self.hparams.rollout_batch_size, self.hparams.seed, rank, world)
        stream.start = self.consumed_rollouts
        return DataLoader(stream, batch_size=None, generator=torch.Generator())  # leaves the global stream alone

    def val_dataloader(self) -> list[DataLoader]:
        """Held-out prompts (scored by a rollout) and held-out pretraining blocks (the LM loss). Both loaders have
        their own generator: creating a loader's iterator otherwise draws a seed from the global stream, and
        validation would shift what training samples next (a resumed run would then differ from an uninterrupted one)."""
        prompts = DataLoader(self.val_prompts, batch_size=self.hparams.val_batch_size, collate_fn=list, generator=torch.Generator())
        blocks = DataLoader(self.val_blocks, batch_size=self.hparams.val_batch_size, collate_fn=LMCollator(self.tokenizer.pad_token_id),
                            generator=torch.Generator())
        return [prompts, blocks]
