"""Prompts for PPO's rollouts and validation, and the pretraining text of its ptx term and alignment-tax metric."""

from __future__ import annotations

import random
from typing import Literal, Optional

import torch
from torch.utils.data import DataLoader

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
from lit_instruct.data.streams import PromptStream, ptx_indices
from lit_instruct.models.causal_lm import context_length
from lit_instruct.models.export import read_metadata


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

    The training prompts and the ptx blocks are global streams (:mod:`lit_instruct.data.streams`): the state saved in
    checkpoints is how many prompts (``consumed_prompts``) and ptx blocks (``consumed_ptx_blocks``) all processes
    have consumed together, so a run resumes on any number of processes at the next unconsumed prompt and block.
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
        self.consumed_prompts = 0  # global stream positions (all processes together); PPO advances the first
        self.consumed_ptx_blocks = 0
        self._legacy_ptx_calls: Optional[int] = None

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
    def _rank_and_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def ptx_batch(self, n: int) -> dict[str, torch.Tensor]:
        """This process's next ``n`` pretraining blocks from the global ptx stream. Every process calls it at the same
        time with the same ``n`` (one PPO minibatch each), so the call consumes ``n * world_size`` blocks."""
        rank, world = self._rank_and_world()
        if self._legacy_ptx_calls is not None:  # a checkpoint that counted calls of this process: the same n then
            self.consumed_ptx_blocks, self._legacy_ptx_calls = self._legacy_ptx_calls * n * world, None
        blocks = [self.ptx_blocks[i] for i in ptx_indices(self.consumed_ptx_blocks, n, rank, world, len(self.ptx_blocks))]
        self.consumed_ptx_blocks += n * world
        return LMCollator(self.tokenizer.pad_token_id)(blocks)

    def state_dict(self) -> dict:
        return {"consumed_prompts": self.consumed_prompts, "consumed_ptx_blocks": self.consumed_ptx_blocks,
                "world_size": self._rank_and_world()[1]}  # the world size is informative: the positions are global

    def load_state_dict(self, state: dict) -> None:
        """Load stream positions; a checkpoint from before the global streams (``consumed_rollouts`` and
        ``consumed_ptx`` counted per process) is read as having run on today's number of processes."""
        if "consumed_prompts" in state:
            self.consumed_prompts, self.consumed_ptx_blocks = state["consumed_prompts"], state["consumed_ptx_blocks"]
            return
        self.consumed_prompts = state["consumed_rollouts"] * self.hparams.rollout_batch_size * self._rank_and_world()[1]
        self._legacy_ptx_calls = state["consumed_ptx"]

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        stream = PromptStream(self.train_prompts, self.hparams.rollout_batch_size, self.hparams.seed, rank, world,
                              start=self.consumed_prompts)
        return DataLoader(stream, batch_size=None, generator=torch.Generator())  # leaves the global stream alone

    def val_dataloader(self) -> list[DataLoader]:
        """Held-out prompts (scored by a rollout) and held-out pretraining blocks (the LM loss). Both loaders have
        their own generator: creating a loader's iterator otherwise draws a seed from the global stream, and
        validation would shift what training samples next (a resumed run would then differ from an uninterrupted one)."""
        prompts = DataLoader(self.val_prompts, batch_size=self.hparams.val_batch_size, collate_fn=list, generator=torch.Generator())
        blocks = DataLoader(self.val_blocks, batch_size=self.hparams.val_batch_size, collate_fn=LMCollator(self.tokenizer.pad_token_id),
                            generator=torch.Generator())
        return [prompts, blocks]
