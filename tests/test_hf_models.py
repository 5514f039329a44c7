"""The tiny Hugging Face checkpoints of :mod:`hf_models` load as their hub counterparts do (transformers 5)."""

import json

import hf_models
import pytest
import torch
from hf_models import (
    CHAT_FAMILIES,
    DROPOUT,
    DTYPES,
    FAMILIES,
    TOKENIZER_CLASS,
    dropout_fields,
    write_hf_model,
)

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

TEXT = "Héllo  wörld, naïve café 😀\n\tend."
END_OF_TURN = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One causal-LM checkpoint per (family, dtype), written once for the module."""
    root = tmp_path_factory.mktemp("hf")
    return {(f, d): write_hf_model(root / f"{f}-{str(d)[6:]}", f, d) for f in FAMILIES for d in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_loads_like_the_hub(checkpoints, family, dtype):
    path = checkpoints[family, dtype]
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()

    config = AutoConfig.from_pretrained(path)
    assert config.model_type == family and config.dtype == dtype
    assert json.loads((path / "config.json").read_text())["dtype"] == str(dtype)[6:]
    assert {k: dropout_fields(config).get(k) for k in DROPOUT[family]} == DROPOUT[family]

    tok = AutoTokenizer.from_pretrained(path)
    assert type(tok).__name__ == TOKENIZER_CLASS[family]
    assert config.vocab_size >= len(tok) and (config.vocab_size > len(tok)) == (family != "gpt2")
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert tok.decode(tok(TEXT)["input_ids"], skip_special_tokens=True) == TEXT
    if family in ("gpt2", "gpt_neox"):
        assert tok.pad_token is None and tok.chat_template is None
    if family == "opt":  # BOS </s> prepended, pad <pad>, as facebook/opt-* ship
        assert tok.chat_template is None and tok.bos_token == tok.eos_token == "</s>" and tok.pad_token == "<pad>"
        assert tok("hi")["input_ids"][0] == tok.bos_token_id and tok("hi", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id
    if family == "llama":
        assert tok.pad_token is None and tok("hi")["input_ids"][0] == tok.bos_token_id
    if family == "qwen2":
        assert tok.bos_token is None and tok.pad_token == "<|endoftext|>" != tok.eos_token
    if family in CHAT_FAMILIES:
        assert tok.eos_token == END_OF_TURN[family]
        prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
        assert "Hi" in prompt and prompt.endswith("<|end_header_id|>\n\n" if family == "llama" else "<|im_start|>assistant\n")
        ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert tok.eos_token_id in ids and max(ids) < config.vocab_size

    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {dtype}

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    tok.padding_side = "left"
    enc = tok(["the cat", "a"], return_tensors="pt", padding=True) if tok.pad_token else tok(["the cat"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_is_live(checkpoints, family):
    """In train mode the written dropout changes the logits (so a test can tell that disabling it worked)."""
    model = AutoModelForCausalLM.from_pretrained(checkpoints[family, torch.float16], dtype=torch.float32)
    ids = torch.arange(3, 19).unsqueeze(0)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_chat_switch_and_seed(tmp_path):
    base = AutoTokenizer.from_pretrained(write_hf_model(tmp_path / "q", "qwen2", torch.bfloat16, chat=False))
    assert base.chat_template is None and base.eos_token == base.pad_token == "<|endoftext|>"  # as Qwen2 base
    base = AutoTokenizer.from_pretrained(write_hf_model(tmp_path / "l", "llama", torch.bfloat16, chat=False))
    assert base.chat_template is None and base.eos_token == "<|end_of_text|>"
    with pytest.raises(ValueError):
        write_hf_model(tmp_path / "g", "gpt2", torch.float16, chat=True)
    with pytest.raises(ValueError):
        write_hf_model(tmp_path / "f", "gpt2", torch.float32)

    state = torch.random.get_rng_state()
    a, b, c = (write_hf_model(tmp_path / n, "opt", torch.float16, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    load = lambda p: AutoModelForCausalLM.from_pretrained(p).lm_head.weight  # noqa: E731
    assert torch.equal(load(a), load(b)) and not torch.equal(load(a), load(c))


@pytest.mark.parametrize("family", FAMILIES)
def test_seq_cls_reward_model(tmp_path, family):
    path = write_hf_model(tmp_path / family, family, torch.bfloat16, seq_cls=True)
    config = AutoConfig.from_pretrained(path)
    assert config.architectures == [hf_models.SEQ_CLS_CLASS[family]] and config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(path)
    assert config.pad_token_id is not None and config.pad_token_id == tok.pad_token_id
    model = getattr(transformers, hf_models.SEQ_CLS_CLASS[family]).from_pretrained(path, dtype="auto")
    assert model.score.bias is None and model.score.out_features == 1
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(**tok(["the cat sat", "a"], return_tensors="pt", padding=True)).logits.shape == (2, 1)
    # The backbone loads from the reward checkpoint as is (only `score` left over).
    backbone, info = AutoModel.from_pretrained(path, dtype="auto", output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == {"score.weight"}
    ref = getattr(model, model.base_model_prefix).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in backbone.state_dict().items())


def test_llama2_style(tmp_path):
    path = write_hf_model(tmp_path / "l2", "llama", torch.float16, llama_style="llama2")
    tok = AutoTokenizer.from_pretrained(path)
    assert type(tok).__name__ == hf_models.LLAMA2_TOKENIZER_CLASS and tok.padding_side == "left"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", None)
    ids = tok(TEXT)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == TEXT
    assert "<0xF0>" in tok.convert_ids_to_tokens(ids)  # the emoji falls back to bytes
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True) == "<s>[INST] Hi [/INST]"
    config = AutoConfig.from_pretrained(path)
    assert config.vocab_size > len(tok) and (config.bos_token_id, config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
