"""LoRA and QLoRA through ``peft``: the settings, adapters on a model, the reference as the adapters switched off, and
the exports (merged weights by default, the adapters alone on request).

A stage given :class:`LoraSettings` freezes its model and trains low-rank adapters on its linear layers (QLoRA:
``quantize`` loads the frozen base in 8 or 4 bits first). ``None`` is full fine-tuning. The export is a plain Hugging
Face directory with the adapters merged into the weights (and any quantized weight dequantized), so every stage,
``lit-instruct eval`` and ``sample`` read it without ``peft``; ``export_adapters: true`` writes the ``peft`` adapter
folder instead, for use outside lit-instruct (``PeftModel.from_pretrained(base, dir)``).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from torch import nn

from lit_instruct.models.causal_lm import EMBEDDED, bnb_config
from lit_instruct.models.export import (
    cast_state_dict,
    check_export_target,
    export_folder,
    owning_storage,
)
from lit_instruct.strategies import is_zero3

#: The file of an adapters export that holds the trained weights outside the adapters (a reward model's head).
EXTRA_WEIGHTS_FILE = "extra_weights.safetensors"


@dataclass
class LoraSettings:
    """LoRA adapters (``peft``) instead of full fine-tuning: the model's weights stay frozen, low-rank updates train."""

    r: int = 16
    """Rank of each adapter."""
    alpha: float = 32
    """Scale: an adapter's update is multiplied by ``alpha / r``."""
    dropout: float = 0.05
    """Dropout on the adapters' input (turned off with the rest in PPO when ``disable_dropout``)."""
    target_modules: Union[str, list[str]] = "all-linear"
    """Layers that get adapters: ``"all-linear"`` (every linear layer but the output embedding) or a list of module
    names (``[q_proj, v_proj]``, ``[c_attn]`` ...)."""
    quantize: Optional[Literal["8bit", "4bit"]] = None
    """QLoRA: load the frozen base weights in 8 or 4 bits (nf4, bf16 compute) through bitsandbytes; ``None``: in
    ``load_dtype``. Needs a Hugging Face model (a directory or hub name), not ``embedded``."""
    export_adapters: bool = False
    """Export the adapters alone (a ``peft`` folder naming its base) instead of merged weights. Lit-instruct's own
    stages, ``eval`` and ``sample`` read merged exports only."""


def as_lora(value) -> Optional[LoraSettings]:
    """``value`` (``None``, a dict from YAML or a checkpoint, or settings) as :class:`LoraSettings` or ``None``."""
    if value is None or isinstance(value, LoraSettings):
        return value
    if isinstance(value, dict):
        return LoraSettings(**value)
    raise TypeError(f"lora: expected LoRA settings (a mapping with r, alpha, ...) or null, got {type(value).__name__}")


def settings_dict(settings: Optional[LoraSettings]) -> Optional[dict]:
    """The settings as a plain dict (as a config gives them; what hyper-parameters and exports store)."""
    return dict(vars(settings)) if settings is not None else None


def quantization_config(settings: Optional[LoraSettings], name_or_path: str, argument: str = "model.lora"):
    """The bitsandbytes config of the QLoRA base (``None`` without ``quantize``); a clear error for the embedded model."""
    if settings is None or settings.quantize is None:
        return None
    if name_or_path == EMBEDDED:
        raise ValueError(f"{argument}.quantize={settings.quantize!r} needs a Hugging Face model to load in "
                         f"{settings.quantize} (a directory or hub name), not the embedded model built in memory")
    return bnb_config(settings.quantize)


def is_peft(module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(module, PeftModel)


def has_adapters(module: nn.Module) -> bool:
    """Whether ``module`` is, or holds, a ``peft`` model."""
    return any(is_peft(m) for m in module.modules())


def add_adapters(model: nn.Module, settings: LoraSettings, *, causal_lm: bool = True):
    """``model`` (a Hugging Face causal LM, or a bare transformer with ``causal_lm=False``) frozen, with trainable LoRA
    adapters: a ``peft`` model. A quantized (QLoRA) model is first prepared for k-bit training (its other weights in
    float32)."""
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise ImportError("lora: LoRA needs the peft package: pip install 'lit-instruct[lora]' (or pip install peft)") from None
    if any(_is_quantized(m) for m in model.modules()):  # (gradient checkpointing is the loader's, non-reentrant)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        for module in model.modules():
            # bitsandbytes repacks 4-bit weights for an inference-only CPU kernel at the first eval pass (a rollout),
            # and training's forward then fails on the repacked weights: a base that trains adapters never repacks
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                        target_modules=settings.target_modules, task_type="CAUSAL_LM" if causal_lm else None)
    training = model.training
    peft_model = get_peft_model(model, config)
    return peft_model.train(training)


class AdaptersOff:
    """The reference of a LoRA policy: the policy's own network with its adapters switched off (no second copy).
    Called as a model (``reference(input_ids=..., ...)``); not an ``nn.Module``, so it adds no weights to checkpoints."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def __call__(self, *args, **kwargs):
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)


# ------------------------------------------------------------------------------------------------------- exports
def _dense_weight(layer: nn.Module) -> torch.Tensor:
    """A linear layer's weight as a dense float tensor (bitsandbytes 8/4-bit weights dequantized)."""
    from peft.utils.integrations import dequantize_module_weight

    weight = getattr(layer, "weight", None)
    state = getattr(weight, "quant_state", None)
    if state is not None and getattr(state, "packing_format_for_cpu", False):
        # bitsandbytes repacks 4-bit weights for its AVX512-BF16 CPU kernel at the first inference pass; dequantizing
        # reads the standard layout, so undo the repacking first (as bitsandbytes' own state_dict does)
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
    return dequantize_module_weight(layer).detach().float()


def _is_quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith("bitsandbytes") and hasattr(module, "weight")


def _plain(peft_model) -> dict[str, torch.Tensor]:
    """The base model's state dict with every active adapter merged into its layer and quantized weights dequantized,
    under the base model's own keys (what ``from_pretrained`` of the base class reads)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    out: dict[str, torch.Tensor] = {}
    done: list[str] = []
    for name, module in base.named_modules():
        if any(f"{name}.".startswith(prefix) for prefix in done):  # inside a layer already written (its base_layer)
            continue
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            weight = _dense_weight(layer)
            if not module.merged and not module.disable_adapters:
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight = weight + module.get_delta_weight(adapter).detach().float()
        elif _is_quantized(module):
            layer, weight = module, _dense_weight(module)
        else:
            continue
        prefix = f"{name}." if name else ""
        out[prefix + "weight"] = weight.cpu()
        if getattr(layer, "bias", None) is not None:
            out[prefix + "bias"] = layer.bias.detach().cpu()
        done.append(prefix)
    for key, value in base.state_dict().items():
        if not any(key.startswith(prefix) for prefix in done):
            out[key] = value.detach().cpu()
    # bitsandbytes quantizes GPT-2's Conv1D layers (weight: in x out) as Linear layers (out x in): back to Conv1D's
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        skeleton = type(base)(plain_config(base.config))
    for prefix in done:
        name = prefix[:-1]
        live = base.get_submodule(name)
        live = live.get_base_layer() if isinstance(live, LoraLayer) else live
        if isinstance(skeleton.get_submodule(name), Conv1D) and not isinstance(live, Conv1D):
            out[prefix + "weight"] = out[prefix + "weight"].T.contiguous()
    return out


def _peft_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost ``peft`` models in ``module`` (``""`` when it is one) with their state-dict prefixes."""
    found: list[tuple[str, nn.Module]] = []
    for name, child in module.named_modules():
        if is_peft(child) and not any(name.startswith(p) for p, _ in found):
            found.append((f"{name}." if name else "", child))
    return found


def _gathered(module: nn.Module, strategy):
    """All of ``module``'s parameters whole for the while under ZeRO-3 (a collective); nothing elsewhere."""
    if strategy is not None and is_zero3(strategy):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    return nullcontext()


def merged_state_dict(module: nn.Module, strategy=None) -> Optional[dict[str, torch.Tensor]]:
    """``module``'s state dict with each ``peft`` model in it replaced by its merged, dequantized base weights (keys
    without ``base_model.model`` and ``base_layer``). ``None`` on ranks other than 0 under ZeRO-3."""
    with _gathered(module, strategy):
        if strategy is not None and is_zero3(strategy) and strategy.global_rank != 0:
            return None
        children = _peft_children(module)
        out: dict[str, torch.Tensor] = {}
        for prefix, child in children:
            out.update({prefix + k: v for k, v in _plain(child).items()})
        for key, value in module.state_dict().items():
            if not any(key.startswith(prefix) for prefix, _ in children):
                out[key] = value.detach().cpu()
        return owning_storage(out)  # DeepSpeed's parameters are views into one flat buffer


def plain_config(config):
    """A copy of a Hugging Face config without the quantization settings of a QLoRA base (the merged export is dense)."""
    config = copy.deepcopy(config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if attr in config.__dict__:
            delattr(config, attr)
    return config


def merged_export_model(module: nn.Module) -> nn.Module:
    """The object whose ``save_pretrained(dir, state_dict=...)`` writes the merged export: for a ``peft`` model, an
    empty (meta-device) model of the base class with a dense config; anything else (a reward model) as it is."""
    if not is_peft(module):
        return module
    base = module.get_base_model()
    with torch.device("meta"):
        skeleton = type(base)(plain_config(base.config))
    if getattr(base, "generation_config", None) is not None:
        skeleton.generation_config = copy.deepcopy(base.generation_config)
    return skeleton


def save_adapter_export(module: nn.Module, tokenizer, out_dir: str | Path, metadata: dict,
                        state_dict: dict[str, torch.Tensor], dtype: str = "float32") -> Path:
    """Write the adapters alone: the ``peft`` folder (``adapter_config.json``, ``adapter_model.safetensors``) of the
    one ``peft`` model in ``module``, its trained weights outside the adapters (a reward model's head) in
    :data:`EXTRA_WEIGHTS_FILE`, the tokenizer and ``lit_instruct.json`` (``adapters.base`` names the base). Replaces
    an earlier export as :func:`lit_instruct.models.export.save_export` does."""
    from safetensors.torch import save_file

    from lit_instruct.models.causal_lm import as_dtype

    children = _peft_children(module)
    if len(children) != 1:
        raise ValueError(f"export_adapters: expected one peft model in the exported module, found {len(children)}")
    prefix, child = children[0]
    out = Path(out_dir)
    check_export_target(out)
    state_dict = cast_state_dict(state_dict, as_dtype(dtype))
    adapters = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix) and "lora_" in k}
    extra = {k: v.contiguous() for k, v in state_dict.items() if not k.startswith(prefix)}
    with export_folder(out, tokenizer, metadata) as tmp:
        child.save_pretrained(tmp, state_dict=adapters)
        if extra:
            save_file(extra, tmp / EXTRA_WEIGHTS_FILE)
    return out


def export_lora(module: nn.Module, tokenizer, out: Path, metadata: dict, *, strategy=None, dtype: str = "float32",
                adapters: bool = False) -> None:
    """Export a module with adapters: merged weights (a plain Hugging Face directory), or with ``adapters`` the
    ``peft`` adapter folder. A collective under ZeRO-3: call it on every rank; only rank 0 writes."""
    from lit_instruct.models.export import full_state_dict, save_export

    if adapters:
        state_dict = full_state_dict(module, strategy)
    else:
        state_dict = merged_state_dict(module, strategy)
    if strategy is not None and strategy.global_rank != 0:
        return
    if adapters:
        save_adapter_export(module, tokenizer, out, metadata, state_dict, dtype)
        return
    save_export(merged_export_model(module), tokenizer, out, metadata, state_dict=state_dict, dtype=dtype)
