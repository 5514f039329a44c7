"""Tiny random-init Hugging Face checkpoints of real architectures, written the way hub checkpoints are stored.

:func:`write_hf_model` writes ``config.json`` + ``model.safetensors`` (fp16 or bf16, as hub checkpoints are stored),
``generation_config.json`` and a tokenizer of the family's own tokenizer class, built from the project's embedded
byte-level BPE tokenizer. Nothing is downloaded and nothing is cached on disk outside ``path`` (the embedded tokenizer
is read once per process and kept in memory).

Family habits kept, because code that handles real checkpoints trips on them (tokenizer class as loaded by
``AutoTokenizer`` in transformers 5, see :data:`TOKENIZER_CLASS`):

- gpt2: ``GPT2Tokenizer``; bos = eos = unk ``<|endoftext|>``, pad None, no BOS added, no chat template;
  embedding rows == len(tokenizer); tied embeddings.
- gpt_neox: ``GPTNeoXTokenizer``; as gpt2, with ``<|padding|>`` in the vocabulary but pad None (written as
  ``"pad_token": null``: without it transformers 5 defaults GPTNeoXTokenizer's pad to ``<|padding|>``); untied.
- opt: ``GPT2Tokenizer`` (as facebook/opt-* ship); bos = eos = unk ``</s>``, **pad ``<pad>``** (facebook/opt-* do
  ship one, distinct from eos), ``</s>`` prepended by ``add_special_tokens=True``; no chat template; tied.
- llama: Llama-3 style; ``TokenizersBackend`` (Meta ships ``PreTrainedTokenizerFast``); ``<|begin_of_text|>``
  prepended by the tokenizer *and* by the chat template (a real double-BOS trap), pad None, eos ``<|eot_id|>``
  with the chat template (base: ``<|end_of_text|>``, no template); untied.
- qwen2: ``Qwen2Tokenizer``; no bos, pad ``<|endoftext|>``, ChatML template with eos ``<|im_end|>`` (base: eos =
  pad = ``<|endoftext|>``, no template); tied.

Every family but gpt2 has more embedding rows than tokens (:func:`vocab_size`). Chat checkpoints' generation
config stops on a list of ids (end-of-turn and end-of-text), as Llama-3-Instruct and Qwen2-Instruct do; the
config's ids are the tokenizer's. Note ``tokenizer.add_bos_token`` reads False after loading even where a BOS is
prepended (transformers 5 takes the post-processor from ``tokenizer.json``): check by encoding.

``llama`` is Llama-3 style by default. In transformers 5 ``LlamaTokenizer`` hard-codes a SentencePiece-style
(Metaspace + byte-fallback) pipeline, and ``AutoTokenizer`` loads a byte-level ``tokenizer.json`` that declares
``LlamaTokenizer`` as ``TokenizersBackend`` anyway, so a Llama-3 tokenizer is a ``TokenizersBackend`` after loading,
exactly as ``meta-llama/Meta-Llama-3-8B-Instruct`` is. ``llama_style="llama2"`` writes a Llama-2 style tokenizer
instead (the byte-level vocabulary converted to SentencePiece pieces with ``<0xNN>`` byte fallback): class
``LlamaTokenizer``, ``<s>``/``</s>``/``<unk>``, BOS prepended, ``padding_side="left"``, ``[INST]`` chat template
with eos ``</s>``.

``seq_cls=True`` writes ``<Family>ForSequenceClassification`` with ``num_labels=1`` (the TRL / OpenRLHF reward-model
format). Families without a pad token get pad = eos in both the tokenizer and the config, as TRL's reward scripts
leave it (so the head scores the last non-eos token of eos-terminated inputs: a real hazard of such checkpoints).

Dropout is non-zero wherever the architecture has a knob for it (see :data:`DROPOUT`), so that tests can check that
"disable dropout" really disables it; :func:`dropout_fields` lists what a config still has.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2", "opt")
CHAT_FAMILIES = ("llama", "qwen2")
"""Families that ship a chat template by default (``chat=None``)."""
DTYPES = (torch.float16, torch.bfloat16)

TOKENIZER_CLASS = {
    "gpt2": "GPT2Tokenizer",
    "gpt_neox": "GPTNeoXTokenizer",
    "llama": "TokenizersBackend",  # Llama-3 style; "LlamaTokenizer" with llama_style="llama2"
    "qwen2": "Qwen2Tokenizer",
    "opt": "GPT2Tokenizer",
}
"""Class name of ``AutoTokenizer.from_pretrained(path)`` per family (transformers 5)."""
LLAMA2_TOKENIZER_CLASS = "LlamaTokenizer"

SEQ_CLS_CLASS = {
    "gpt2": "GPT2ForSequenceClassification",
    "gpt_neox": "GPTNeoXForSequenceClassification",
    "llama": "LlamaForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "opt": "OPTForSequenceClassification",
}
CAUSAL_LM_CLASS = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "opt": "OPTForCausalLM",
}

DROPOUT = {
    "gpt2": {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1},
    "gpt_neox": {"hidden_dropout": 0.1, "attention_dropout": 0.1},
    "opt": {"dropout": 0.1, "attention_dropout": 0.1},
    "llama": {"attention_dropout": 0.1},
    "qwen2": {"attention_dropout": 0.1},
}
"""The dropout config fields each family is written with."""

# Config fields that hold a dropout probability, across architectures (those above plus heads' and other families').
DROPOUT_FIELDS = (
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "summary_last_dropout",
    "hidden_dropout", "hidden_dropout_prob", "attention_dropout", "attention_probs_dropout_prob",
    "dropout", "activation_dropout", "classifier_dropout", "residual_dropout", "layerdrop",
)

HIDDEN = 64
HEADS = 4
LAYERS = 2
INTERMEDIATE = 128
CONTEXT = 256

# Embedding rows are len(tokenizer) rounded up to this multiple (see vocab_size), as the real checkpoints do
# (gpt2: 50257 rows for 50257 tokens; pythia: 50304 for 50277; opt: 50272 for 50265; qwen2: 151936 for 151646).
VOCAB_MULTIPLE = {"gpt2": 1, "gpt_neox": 128, "opt": 8, "llama": 64, "qwen2": 128}

BASE_EOS = "<|endoftext|>"

# Llama-3 special tokens and chat template (meta-llama/Meta-Llama-3-8B-Instruct).
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen2-Instruct's ChatML template (default system prompt included).
QWEN2_SPECIALS = ("<|im_start|>", "<|im_end|>")
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-2-chat's template (without its role-alternation check); no generation prompt: the prompt ends in [/INST].
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def dropout_fields(config) -> dict[str, float]:
    """The dropout fields of a Hugging Face config that are non-zero (``{}`` once dropout is fully disabled)."""
    found = {}
    for name in DROPOUT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            found[name] = value
    return found


def vocab_size(family: str, tokenizer) -> int:
    """Embedding rows for ``tokenizer``: exactly ``len(tokenizer)`` for gpt2 (as openai-community/gpt2), else
    ``len(tokenizer)`` rounded up to :data:`VOCAB_MULTIPLE`, with at least one spare row (rows no token maps to)."""
    multiple = VOCAB_MULTIPLE[family]
    n = len(tokenizer)
    return n if multiple == 1 else -(-(n + 1) // multiple) * multiple


@functools.lru_cache(maxsize=1)
def _base_bpe() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The embedded tokenizer's BPE vocabulary (in id order) and merges, without its added tokens but ``<|endoftext|>``.

    Read once per process (the embedded tokenizer is trained, and cached by the project, on first use).
    """
    from tokenizers import Tokenizer

    from lit_instruct.models.causal_lm import load_tokenizer

    base = load_tokenizer("embedded")
    data = json.loads(Tokenizer.from_str(base.backend_tokenizer.to_str()).to_str())
    model = data["model"]
    assert model["type"] == "BPE", model["type"]
    drop = {t["content"] for t in data["added_tokens"]} - {BASE_EOS}  # e.g. a pad token the project adds
    vocab = tuple(t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if t not in drop)
    assert BASE_EOS in vocab, f"the embedded tokenizer has no {BASE_EOS}"
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return vocab, merges


def _bpe(extra: tuple[str, ...] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab, merges = _base_bpe()
    tokens = list(vocab) + [t for t in extra if t not in vocab]
    return {t: i for i, t in enumerate(tokens)}, list(merges)


def _special(token: str):
    from tokenizers import AddedToken

    return AddedToken(token, special=True, normalized=False)


def _llama2_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    ids, merges = _llama2_pieces()
    return dict(ids), list(merges)


@functools.lru_cache(maxsize=1)
def _llama2_pieces() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The byte-level vocabulary as SentencePiece pieces: ``<unk> <s> </s>``, 256 ``<0xNN>`` byte-fallback tokens,
    then every token that decodes to whole UTF-8 characters, with spaces as ``▁``; merges between such tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab, merges = _base_bpe()

    def piece(token: str) -> str | None:
        try:
            return bytes(byte_of[c] for c in token).decode("utf-8").replace(" ", "▁")
        except (KeyError, UnicodeDecodeError):
            return None

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p in map(piece, vocab) if p and p not in pieces and "\ufffd" not in p]
    ids = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    sp_merges = []
    for a, b in merges:
        pa, pb = piece(a), piece(b)
        if pa and pb and pa in ids and pb in ids and pa + pb in ids:
            sp_merges.append((pa, pb))
    return ids, tuple(sp_merges)


def build_tokenizer(family: str, chat: bool | None = None, *, llama_style: str = "llama3"):
    """The family's tokenizer (not saved). ``chat=None``: the family's habit (:data:`CHAT_FAMILIES` have a template)."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {FAMILIES}")
    chat = family in CHAT_FAMILIES if chat is None else chat
    if chat and family not in CHAT_FAMILIES:
        raise ValueError(f"{family} checkpoints ship no chat template; chat families: {CHAT_FAMILIES}")

    if family == "gpt2":
        vocab, merges = _bpe()
        tok = transformers.GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=CONTEXT)
    elif family == "gpt_neox":
        vocab, merges = _bpe(("<|padding|>",))
        tok = transformers.GPTNeoXTokenizer(vocab=vocab, merges=merges, pad_token=None)
        tok.add_tokens([_special("<|padding|>")], special_tokens=True)  # in pythia's vocabulary, not its pad token
    elif family == "opt":
        vocab, merges = _bpe(("<s>", "<pad>", "</s>", "<unk>"))
        tok = transformers.GPT2Tokenizer(
            vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", unk_token="</s>", pad_token="<pad>",
            add_bos_token=True,
        )
    elif family == "qwen2":
        vocab, merges = _bpe(QWEN2_SPECIALS)
        tok = transformers.Qwen2Tokenizer(
            vocab=vocab, merges=merges, unk_token=None, bos_token=None,
            eos_token="<|im_end|>" if chat else BASE_EOS, pad_token=BASE_EOS,
            extra_special_tokens=list(QWEN2_SPECIALS), errors="replace", split_special_tokens=False,
        )
        if chat:
            tok.chat_template = QWEN2_TEMPLATE
    elif llama_style == "llama3":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        vocab, merges = _bpe()
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens([_special(t) for t in LLAMA3_SPECIALS])
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>" if chat else "<|end_of_text|>", add_bos_token=True,
        )
        if chat:
            tok.chat_template = LLAMA3_TEMPLATE
    elif llama_style == "llama2":
        vocab, merges = _llama2_bpe()
        tok = transformers.LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
        if chat:
            tok.chat_template = LLAMA2_TEMPLATE
    else:
        raise ValueError(f"llama_style must be 'llama3' or 'llama2', not {llama_style!r}")
    return tok


def build_config(family: str, tokenizer, dtype: torch.dtype, *, seq_cls: bool = False):
    """The tiny config of ``family`` for ``tokenizer`` (dropout per :data:`DROPOUT`, stored dtype ``dtype``)."""
    import transformers

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    common = {"vocab_size": vocab_size(family, tokenizer), "dtype": dtype, **ids, **DROPOUT[family]}
    if family == "gpt2":
        config = transformers.GPT2Config(n_positions=CONTEXT, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, **common)
    elif family == "gpt_neox":
        config = transformers.GPTNeoXConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
            max_position_embeddings=CONTEXT, tie_word_embeddings=False, use_parallel_residual=True, **common,
        )
    elif family == "opt":
        config = transformers.OPTConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=INTERMEDIATE,
            max_position_embeddings=CONTEXT, word_embed_proj_dim=HIDDEN, do_layer_norm_before=True, **common,
        )
    elif family == "llama":
        config = transformers.LlamaConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
            intermediate_size=INTERMEDIATE, max_position_embeddings=CONTEXT, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, **common,
        )
    elif family == "qwen2":
        config = transformers.Qwen2Config(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
            intermediate_size=INTERMEDIATE, max_position_embeddings=CONTEXT, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **common,
        )
    else:
        raise ValueError(f"unknown family {family!r}: one of {FAMILIES}")
    if seq_cls:
        config.num_labels = 1
    return config


def write_hf_model(
    path,
    family: str,
    dtype: torch.dtype,
    *,
    chat: bool | None = None,
    seed: int = 0,
    seq_cls: bool = False,
    llama_style: str = "llama3",
) -> Path:
    """Write a tiny random-init ``family`` checkpoint, stored in ``dtype``, with its tokenizer, to ``path``.

    ``chat``: give the tokenizer its family's chat template (``None``: the family's habit; only
    :data:`CHAT_FAMILIES` have one). ``seed``: the weights (the global RNG is left untouched). ``seq_cls``: write
    ``<Family>ForSequenceClassification`` with ``num_labels=1`` (a reward model) instead of the causal LM.
    Returns ``path``.
    """
    import transformers

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (as hub checkpoints are stored), not {dtype}")
    path = Path(path)
    tokenizer = build_tokenizer(family, chat, llama_style=llama_style)
    if seq_cls and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # what TRL's reward scripts do before saving
    config = build_config(family, tokenizer, dtype, seq_cls=seq_cls)
    cls = getattr(transformers, (SEQ_CLS_CLASS if seq_cls else CAUSAL_LM_CLASS)[family])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.to(dtype)
    model.config.dtype = dtype
    if not seq_cls:
        gen = model.generation_config
        gen.bos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
        if family == "llama" and tokenizer.eos_token == "<|eot_id|>":  # Llama-3-Instruct stops on either
            gen.eos_token_id = [tokenizer.convert_tokens_to_ids("<|end_of_text|>"), tokenizer.eos_token_id]
        elif family == "qwen2" and tokenizer.eos_token == "<|im_end|>":  # so does Qwen2-Instruct
            gen.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(BASE_EOS)]
        else:
            gen.eos_token_id = tokenizer.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if family == "llama" and llama_style == "llama3":
        _set_tokenizer_class(path, "PreTrainedTokenizerFast")  # as Meta ships it
    return path


def _set_tokenizer_class(path: Path, name: str) -> None:
    file = path / "tokenizer_config.json"
    data = json.loads(file.read_text(encoding="utf-8"))
    data["tokenizer_class"] = name
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
