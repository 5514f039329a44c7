"""One place that builds backbones and tokenizers.

``model_name_or_path`` is a Hugging Face hub name, a local directory (for example another stage's export),
or ``"embedded"``: a tiny GPT-2-style model built from :class:`TinyConfig`, with a byte-level BPE tokenizer
trained on the bundled text. The embedded default needs no download, so the whole pipeline runs offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lit_instruct import bundled

EMBEDDED = "embedded"
EOS_TOKEN = "<|endoftext|>"
# A pad token distinct from EOS: Hugging Face sequence-classification heads read the last token that is not the pad
# token, so with pad == EOS an exported reward model would skip the EOS that it scores.
PAD_TOKEN = "<|pad|>"
# The text the embedded tokenizer is trained on: the pretraining corpus and the instruction data.
TOKENIZER_CORPUS = ("pretrain.txt", "sft.jsonl", "prompts.jsonl")
_TOKENIZER_VERSION = "2"

# Config attributes that hold residual / hidden dropout, across Hugging Face architectures.
RESIDUAL_DROPOUT_ATTRS = ("resid_pdrop", "hidden_dropout", "hidden_dropout_prob", "dropout", "residual_dropout")
ALL_DROPOUT_ATTRS = RESIDUAL_DROPOUT_ATTRS + (
    "embd_pdrop", "attn_pdrop", "attention_dropout", "attention_probs_dropout_prob", "activation_dropout",
    "summary_first_dropout", "classifier_dropout", "layerdrop",
)
# Module attributes that some architectures read as a float probability at forward time instead of holding an
# ``nn.Dropout`` (OPT's ``dropout`` and ``layerdrop``, Llama's / Qwen2's / GPT-NeoX's ``attention_dropout``).
FLOAT_DROPOUT_ATTRS = ("dropout", "attention_dropout", "attn_dropout", "dropout_p", "hidden_dropout",
                       "activation_dropout", "resid_dropout", "layerdrop")

#: The dtypes a user may name in a config (weights at load, frozen models, exports).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DtypeName = Literal["float32", "bfloat16", "float16"]


def as_dtype(name: "str | torch.dtype | None") -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16`` (``None`` stays ``None``); a clear error for an unknown name."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass
class TinyConfig:
    """Size of the embedded GPT-2-style model (used when ``model_name_or_path`` is ``"embedded"``)."""

    n_layer: int = 2
    """Transformer blocks."""
    n_embd: int = 128
    """Hidden size."""
    n_head: int = 4
    """Attention heads."""
    n_positions: int = 256
    """Context length in tokens."""
    vocab_size: int = 4096
    """Vocabulary of the embedded byte-level BPE tokenizer."""


def cache_dir() -> Path:
    """Where derived artefacts (the embedded tokenizer) are cached: ``$LIT_INSTRUCT_CACHE`` or ``~/.cache/lit_instruct``."""
    return Path(os.environ.get("LIT_INSTRUCT_CACHE", Path.home() / ".cache" / "lit_instruct"))


def _corpus_texts():
    for name in TOKENIZER_CORPUS:
        path = bundled.resolve(f"bundled:{name}")
        if path.suffix == ".txt":
            yield from path.read_text(encoding="utf-8").split("\n\n")
        else:
            with path.open(encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    yield from (row[k] for k in ("prompt", "response") if isinstance(row.get(k), str))


def train_embedded_tokenizer(vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style, no pad token) on the bundled text. Deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN)


def embedded_tokenizer_dir(vocab_size: int = 4096) -> Path:
    """Directory of the cached embedded tokenizer, trained on first use (atomic, safe across processes)."""
    digest = hashlib.sha256(f"{_TOKENIZER_VERSION}:{vocab_size}".encode())
    for name in TOKENIZER_CORPUS:
        digest.update(bundled.resolve(f"bundled:{name}").read_bytes())
    target = cache_dir() / "tokenizers" / f"embedded-{vocab_size}-{digest.hexdigest()[:12]}"
    if not (target / "tokenizer.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        train_embedded_tokenizer(vocab_size).save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token one (its EOS token). Labels never come from pad ids, so this is safe.

    (A reward model exported with pad == EOS cannot be batch-scored through Hugging Face's sequence-classification
    head, which reads the last token that is not the pad token: see :meth:`lit_instruct.models.reward_model.RewardModel.save_pretrained`.)"""
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; lit-instruct needs one to end responses")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_source(name_or_path: str) -> str:
    """Fail early, and clearly, when ``name_or_path`` is meant as a local directory that does not exist.

    A hub id has at most one ``/`` and never starts with ``.``, ``/`` or ``~``; anything else is a path.
    """
    path = Path(name_or_path).expanduser()
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(f"{name_or_path}: a LoRA adapters export (lora.export_adapters: true), not a model; lit-instruct "
                         "reads merged exports: export again without export_adapters, or merge it with peft")
    if name_or_path == EMBEDDED or path.exists():
        return name_or_path
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or os.sep != "/" and os.sep in name_or_path:
        raise FileNotFoundError(
            f"{name_or_path}: model directory not found (run the stage that exports it first, or point the config "
            "at a Hugging Face hub name or another directory)"
        )
    return name_or_path


def load_tokenizer(name_or_path: str, tiny: TinyConfig | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer for ``name_or_path`` (``"embedded"``, a hub name or a directory), with a pad token."""
    if name_or_path == EMBEDDED:
        path = embedded_tokenizer_dir((tiny or TinyConfig()).vocab_size)
        tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(check_source(name_or_path))
        except OSError as error:  # a hub name that is offline, misspelt or gated
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OSError(f"{name_or_path}: cannot load it: not a local directory, and not loadable from the Hugging Face "
                          f"hub ({reason})") from None
    return ensure_pad_token(tokenizer)


def set_dropout(config, residual_dropout: float | None) -> None:
    """Set the residual/hidden dropout of a Hugging Face config to ``residual_dropout``.

    The paper fine-tunes with residual dropout 0.2. ``None`` keeps the config's values. Zero for an architecture
    that has no residual dropout (Llama, Qwen2) asks for nothing and is a no-op; a non-zero value there is an error
    that names the architecture.
    """
    if residual_dropout is None:
        return
    found = [a for a in RESIDUAL_DROPOUT_ATTRS if isinstance(getattr(config, a, None), (int, float)) and not isinstance(getattr(config, a), bool)]
    if not found:
        if residual_dropout == 0:
            return
        raise ValueError(
            f"cannot set residual dropout {residual_dropout} on model type {config.model_type!r}: this architecture has "
            f"no residual dropout (its config has none of {RESIDUAL_DROPOUT_ATTRS}); leave residual_dropout unset or 0"
        )
    for attr in found:
        setattr(config, attr, residual_dropout)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability in ``model`` to 0 (the RL stages run without dropout): ``nn.Dropout`` modules,
    probabilities that modules read as floats at forward time, and the config's fields (for modules built later)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for attr in FLOAT_DROPOUT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, float) and not isinstance(value, bool):
                setattr(module, attr, 0.0)
    config = getattr(model, "config", None)
    for attr in ALL_DROPOUT_ATTRS:
        if config is not None and isinstance(getattr(config, attr, None), float):
            setattr(config, attr, 0.0)


def dropout_probabilities(model: torch.nn.Module) -> dict[str, float]:
    """Every non-zero dropout probability in ``model`` by module path (``nn.Dropout`` and float attributes)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            found[name] = module.p
        for attr in FLOAT_DROPOUT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, float) and value > 0:
                found[f"{name}.{attr}"] = value
    return found


def context_length(config) -> int:
    """The context length of a Hugging Face config."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot read the context length of model type {config.model_type!r}")


def embedded_config(tokenizer: PreTrainedTokenizerBase, tiny: TinyConfig | None = None, residual_dropout: float | None = None) -> GPT2Config:
    """The GPT-2 config of the embedded tiny model (no dropout unless ``residual_dropout`` is given)."""
    tiny = tiny or TinyConfig()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=tiny.n_positions,
        n_embd=tiny.n_embd,
        n_layer=tiny.n_layer,
        n_head=tiny.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    set_dropout(config, residual_dropout)
    return config


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    tiny: TinyConfig | None = None,
    residual_dropout: float | None = None,
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
    dtype: "str | torch.dtype" = torch.float32,
    trainable: bool = True,
    quantization_config=None,
) -> PreTrainedModel:
    """Build the causal LM backbone: the embedded tiny model from its config, or ``from_pretrained``.

    Weights are loaded in ``dtype`` whatever dtype the checkpoint was stored in: float32 by default, so that trainable
    weights are fp32 masters under mixed precision (``bf16-mixed`` autocasts the matmuls; the optimizer steps fp32).
    Transformers would otherwise load fp16/bf16 checkpoints as they are stored (``dtype="auto"``). The model comes
    back in train mode when ``trainable`` (``from_pretrained`` returns eval mode, and Lightning no longer calls
    ``.train()``), else in eval mode with gradients off.
    """
    dtype = as_dtype(dtype)
    if name_or_path == EMBEDDED:
        model = GPT2LMHeadModel(embedded_config(tokenizer, tiny, residual_dropout)).to(dtype)
    else:
        config = AutoConfig.from_pretrained(check_source(name_or_path))
        set_dropout(config, residual_dropout)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        model = AutoModelForCausalLM.from_pretrained(name_or_path, config=config, dtype=dtype, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but model {name_or_path!r} embeds only "
            f"{model.get_input_embeddings().num_embeddings}: they do not belong together"
        )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train(trainable)
    if not trainable:
        model.requires_grad_(False)
    return model


def bnb_config(quantization: Optional[str]):
    """A bitsandbytes config for ``"8bit"`` or ``"4bit"`` (nf4) loading of the frozen models, or ``None``."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
