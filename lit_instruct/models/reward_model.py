"""The reward model: a causal LM's transformer without its unembedding, plus a scalar head read at the last real
token of ``prompt + completion + EOS``, times a normalisation gain (so that the starting policy's samples score with
unit standard deviation, as lm-human-preferences does) plus a shift (so that SFT demonstrations score 0 on average,
as in the paper). Load an export with :meth:`RewardModel.from_pretrained` and score ``(prompt, completion)`` pairs
with :meth:`RewardModel.score`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    GPT2Model,
)

from lit_instruct.data.batching import pad_with_mask, position_ids
from lit_instruct.data.prompt_format import (
    DEFAULT_TEMPLATE,
    PromptFormat,
    encode_pair,
)
from lit_instruct.models.causal_lm import (
    EMBEDDED,
    TinyConfig,
    as_dtype,
    check_source,
    context_length,
    embedded_config,
    load_tokenizer,
    set_dropout,
)
from lit_instruct.models.export import read_metadata
from lit_instruct.objectives import last_index

LEGACY_HEAD_FILE = "reward_head.safetensors"  # exports written before the sequence-classification format
#: ``config.json`` key of a reward export that holds its normalisation: ``shift`` (added to the score), ``gain`` (already
#: multiplied into ``score.weight``: recorded, not applied again), the raw statistics it was computed from, rows, files.
NORMALIZATION_KEY = "reward_normalization"


def sequence_classification_class(config):
    """The ``transformers`` ``<Family>ForSequenceClassification`` class of a config (the reward-model format)."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        raise ValueError(f"model type {config.model_type!r} has no sequence-classification class in transformers") from None


class RewardModel(nn.Module):
    """Scalar reward: transformer (no unembedding) -> linear head (no bias) at the last real token, times
    ``reward_gain``, plus ``reward_shift``.

    ``reward_gain`` and ``reward_shift`` are Python floats (the normalisation: the starting policy's samples score
    with unit standard deviation, SFT demonstrations score 0 on average). They are never tensors, so casting the
    module to bf16 (``precision: bf16-true``, DeepSpeed) cannot round them. An export multiplies the gain into the
    head's weight, so a loaded reward model has gain 1. The head
    has no bias because the ranking loss is blind to a constant (its gradient would be 0); a critic built from a
    reward model gets one (``head_bias``), since a value function must learn its level.

    The export is a Hugging Face ``<Family>ForSequenceClassification`` directory with ``num_labels=1`` (the format TRL
    and OpenRLHF read and write): ``AutoModelForSequenceClassification`` gives ``score - reward_shift`` on the same
    token ids (the gain is in its weight); the shift and the rest of the normalisation are in ``config.json`` under
    ``reward_normalization``.
    """

    def __init__(self, backbone: nn.Module, tokenizer, prompt_template: str = DEFAULT_TEMPLATE, *,
                 head: nn.Linear | None = None, head_bias: bool = False, prompt_format: dict | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.prompt_format = prompt_format
        hidden = backbone.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1, bias=head_bias)
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
            if head_bias:
                nn.init.zeros_(head.bias)
        elif head_bias and head.bias is None:
            weight = head.weight
            head = nn.Linear(hidden, 1, bias=True, dtype=weight.dtype, device=weight.device)
            head.weight.data.copy_(weight.data)
            nn.init.zeros_(head.bias)
        self.head = head
        self.reward_gain: float = 1.0
        self.reward_shift: float = 0.0
        self.normalization: dict | None = None

    @property
    def config(self):
        return self.backbone.config

    @property
    def context_length(self) -> int:
        return context_length(self.backbone.config)

    def format(self) -> PromptFormat:
        """How this reward model formats prompts: as recorded in its export, else its tokenizer's chat template if
        it has one (a TRL / OpenRLHF directory), else its text template."""
        if self.prompt_format:
            return PromptFormat.from_description(self.prompt_format, self.tokenizer)
        return PromptFormat.from_tokenizer(self.tokenizer, self.prompt_template, "auto")

    def format_description(self) -> dict:
        return self.prompt_format or self.format().describe()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_causal_lm(
        cls,
        name_or_path: str,
        tokenizer,
        *,
        tiny: TinyConfig | None = None,
        residual_dropout: float | None = None,
        gradient_checkpointing: bool = False,
        prompt_template: str = DEFAULT_TEMPLATE,
        dtype: "str | torch.dtype" = torch.float32,
        quantization_config=None,
    ) -> "RewardModel":
        """A new reward model from a causal LM (``"embedded"``, hub name or directory): its unembedding is dropped.

        A reward-model directory (``...ForSequenceClassification``, ours or TRL's / OpenRLHF's) also works: its head
        is kept, so training continues from it. Weights load in ``dtype`` (fp32 masters by default), or quantized by
        ``quantization_config`` (a QLoRA base)."""
        dtype = as_dtype(dtype)
        head = None
        kwargs = {"quantization_config": quantization_config} if quantization_config is not None else {}
        if name_or_path == EMBEDDED:
            backbone = GPT2Model(embedded_config(tokenizer, tiny, residual_dropout)).to(dtype)
        else:
            config = AutoConfig.from_pretrained(check_source(name_or_path))
            set_dropout(config, residual_dropout)
            if is_reward_model_dir(name_or_path):
                model = AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config, dtype=dtype, **kwargs)
                backbone, head = model.base_model, model.score
            else:
                backbone = AutoModel.from_pretrained(name_or_path, config=config, dtype=dtype, **kwargs)
        if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but {name_or_path!r} embeds fewer: they do not belong together")
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return cls(backbone, tokenizer, prompt_template, head=head).train()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, require_normalization: bool = True, quantization_config=None,
                        dtype: "str | torch.dtype" = torch.float32, head_bias: bool = False) -> "RewardModel":
        """Load a reward model: a lit-instruct reward export, or any Hugging Face sequence-classification directory
        with ``num_labels=1`` (TRL, OpenRLHF). Refuses one without a normalisation unless ``require_normalization``
        is off. Comes back in eval mode.

        ``dtype``: the backbone's dtype (float32 by default, whatever the directory stores; ``"bfloat16"`` halves the
        memory of a frozen model); the head computes in float32 on the backbone's output either way.
        ``quantization_config`` (a ``transformers.BitsAndBytesConfig``) loads the backbone in 8 or 4 bits."""
        path = Path(check_source(str(path)))
        dtype = as_dtype(dtype)
        meta = read_metadata(path)
        kwargs = {"quantization_config": quantization_config} if quantization_config is not None else {}
        tokenizer = load_tokenizer(str(path))
        if (path / LEGACY_HEAD_FILE).is_file():
            backbone = AutoModel.from_pretrained(path, dtype=dtype, **kwargs)
            state = load_file(path / LEGACY_HEAD_FILE)
            head = nn.Linear(backbone.config.hidden_size, 1, bias=False)
            head.weight.data.copy_(state["head.weight"])
            shift = float(state["reward_shift"]) + float(state.get("head.bias", torch.zeros(1)).sum())
            normalization = meta.get("normalization")
            if normalization:
                normalization = {**normalization, "shift": shift}
        else:
            if not is_reward_model_dir(path):
                raise ValueError(
                    f"{path}: not a reward model: expected a lit-instruct reward export or a Hugging Face "
                    "...ForSequenceClassification directory with num_labels=1"
                )
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **kwargs)
            backbone, head = model.base_model, model.score
            normalization = getattr(model.config, NORMALIZATION_KEY, None) or meta.get("normalization")
            shift = float(normalization["shift"]) if normalization else 0.0
        if require_normalization and not normalization:
            raise ValueError(
                f"{path}: this reward model has no normalisation (the shift that gives SFT demonstrations a mean "
                "reward of 0); re-run the reward stage with data.demonstrations_file set, or accept it unnormalised "
                "(model.require_reward_normalization: false)"
            )
        head = head.float() if head.weight.is_floating_point() else head
        model = cls(backbone, tokenizer, meta.get("prompt_template", DEFAULT_TEMPLATE), head=head, head_bias=head_bias,
                    prompt_format=meta.get("prompt_format"))
        model.reward_shift = shift
        model.normalization = normalization
        return model.eval()

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None, **kwargs) -> None:
        """Write a ``<Family>ForSequenceClassification`` directory (``num_labels=1``) with the normalisation in its
        config: ``AutoModelForSequenceClassification.from_pretrained(path)`` scores ``reward - reward_shift``.

        Such a head reads the last token that is not ``config.pad_token_id``; when the tokenizer pads with its EOS
        token that would skip the EOS we score, so ``pad_token_id`` is then left unset (single sequences score
        right; Transformers refuses padded batches instead of scoring the wrong token)."""
        from huggingface_hub import save_torch_state_dict

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state_dict = state_dict if state_dict is not None else self.state_dict()
        seq_cls = sequence_classification_class(self.backbone.config)
        prefix = seq_cls.base_model_prefix
        tensors = {f"{prefix}.{k[len('backbone.'):]}": _own_storage(v) for k, v in state_dict.items() if k.startswith("backbone.")}
        weight = state_dict["head.weight"]  # the gain goes into the weight, in float32 whatever the export's dtype
        tensors["score.weight"] = _own_storage(weight if self.reward_gain == 1.0 else (weight.float() * self.reward_gain).to(weight.dtype))
        if "head.bias" in state_dict:  # a critic's head: its bias joins the shift (the format's score has no bias)
            raise ValueError("a value head with a bias is not a reward model export")
        config = copy.deepcopy(self.backbone.config)
        config.__dict__.pop("quantization_config", None)  # a QLoRA backbone's: the export's weights are dense
        config.architectures = [seq_cls.__name__]
        config.num_labels = 1
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        config.pad_token_id = pad if pad != eos else None
        config.eos_token_id = eos
        setattr(config, NORMALIZATION_KEY, ({**self.normalization, "shift": self.reward_shift} if self.normalization else None))
        config.save_pretrained(path)
        save_torch_state_dict(tensors, path)

    # ------------------------------------------------------------------ scoring
    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head at every position, gain and shift included: (b, t) -> (b, t), float32. The critic's per-token values.

        Position ids follow the attention mask, so left- and right-padded rows give the same outputs. The head
        computes on the backbone's output cast to its own dtype (a bf16 or quantized backbone, an fp32 head)."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
        ).last_hidden_state  # (b, t, h)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float() * self.reward_gain + self.reward_shift

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards of (b, t) sequences: (b,), read at each row's last real token, gain and shift included."""
        values = self.values(input_ids, attention_mask)  # (b, t)
        return values[torch.arange(values.shape[0], device=values.device), last_index(attention_mask)]

    @torch.no_grad()
    def score(self, prompts: list, completions: list[str], batch_size: int = 16, max_length: int | None = None,
              prompts_are_formatted: bool = False, ended: Optional[list[bool]] = None) -> torch.Tensor:
        """Normalised rewards of ``(prompts[i], completions[i])`` pairs, in batches. Returns a (n,) CPU tensor.

        Prompts are formatted as this reward model was trained (its chat template or its text template), unless
        ``prompts_are_formatted`` (already model input). A completion is scored ended (EOS appended, as the reward
        stage trains) unless ``ended[i]`` is False: a sampled response cut at the length limit is then scored without
        EOS, as PPO scores it (the reward read at its last token)."""
        if len(prompts) != len(completions) or (ended is not None and len(ended) != len(completions)):
            raise ValueError(f"score: {len(prompts)} prompts, {len(completions)} completions"
                             + (f", {len(ended)} ended flags" if ended is not None else ""))
        max_length = max_length or self.context_length
        device = next(self.parameters()).device
        fmt = self.format()
        out = []
        for start in range(0, len(prompts), batch_size):
            rows = []
            for i in range(start, min(start + batch_size, len(prompts))):
                text = prompts[i] if prompts_are_formatted else fmt.prompt(prompts[i])
                prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                ids, _ = encode_pair(self.tokenizer, prompt_ids[-(max_length - 1):], completions[i], max_length, fmt,
                                     eos=ended is None or bool(ended[i]))
                rows.append(ids)
            input_ids, mask = pad_with_mask(rows, self.tokenizer.pad_token_id)
            out.append(self(input_ids.to(device), mask.to(device)).cpu())
        return torch.cat(out)


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a contiguous tensor that owns its storage (DeepSpeed's parameters are views into one flat
    buffer, which safetensors refuses to write)."""
    tensor = tensor.detach().contiguous()
    return tensor if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size() else tensor.clone()


def is_reward_model_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a reward model: a lit-instruct export or a sequence-classification model with one label."""
    path = Path(path)
    if (path / LEGACY_HEAD_FILE).is_file():
        return True
    config_file = path / "config.json"
    if not config_file.is_file():
        return False
    import json

    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or []
    labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
    return any(a.endswith("ForSequenceClassification") for a in archs) and labels == 1
