"""The prompt format: format_prompt's single- and multi-turn text; PromptFormat: chat templates, the text template,
message lists, format descriptions and the end-of-turn check."""

import copy
import warnings

import pytest

from lit_instruct.data.prompt_format import (
    DEFAULT_TEMPLATE,
    PromptFormat,
    check_end_of_turn,
    format_prompt,
    format_response,
    parse_conversation,
)
from lit_instruct.models.causal_lm import load_tokenizer

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVO = "Human: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?"
MESSAGES = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"}]


@pytest.fixture(scope="module")
def plain():
    return load_tokenizer("embedded")


def with_template(base, template, eos, specials, bos=None):
    tok = copy.deepcopy(base)
    tokens = {"additional_special_tokens": specials, "eos_token": eos}
    if bos:
        tokens["bos_token"] = bos
    tok.add_special_tokens(tokens)
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def chatml(plain):
    return with_template(plain, CHATML, "<|im_end|>", ["<|im_start|>", "<|im_end|>"])


@pytest.fixture(scope="module")
def llama3(plain):
    return with_template(plain, LLAMA3, "<|eot_id|>", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                                       "<|eot_id|>"], bos="<|begin_of_text|>")


def test_chatml_prompts(chatml):
    fmt = PromptFormat.from_tokenizer(chatml)
    assert fmt.uses_chat_template and fmt.chat_template == CHATML
    sys = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert fmt.prompt("  Say hi ") == sys + "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.prompt([{"role": "user", "content": "Say hi"}]) == fmt.prompt("Say hi")
    expected = (sys + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"
                "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.prompt(CONVO) == expected
    assert fmt.prompt(MESSAGES) == expected
    # robust parsing: no newline before the first marker, stray whitespace, an already-appended empty Assistant:
    assert fmt.prompt("  Human:What is 2+2? \n \nAssistant:   4.\n\n  Human: And 3+3?\n\nAssistant:") == expected
    assert fmt.response("  Hello.\n") == "Hello."
    # the chat template writes the special tokens; tokenised without add_special_tokens they are single ids
    ids = chatml(fmt.prompt("Say hi"), add_special_tokens=False)["input_ids"]
    assert ids[0] == chatml.convert_tokens_to_ids("<|im_start|>") and ids.count(chatml.eos_token_id) == 2


def test_llama3_prompts(llama3):
    fmt = PromptFormat.from_tokenizer(llama3, chat_template="always")
    single = fmt.prompt("Say hi")
    assert single == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nSay hi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert fmt.prompt(CONVO) == fmt.prompt(MESSAGES)
    assert fmt.prompt(CONVO).count("<|eot_id|>") == 3
    with_system = [{"role": "system", "content": "Be brief."}] + MESSAGES
    assert fmt.prompt(with_system).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert fmt.check_end_of_turn()


def test_prompt_template_single_and_multi_turn():
    assert format_prompt("Hi there") == "Human: Hi there\n\nAssistant:"
    convo = "Human: hi\n\nAssistant: hello\n\nHuman: how are you?"
    assert format_prompt(convo) == convo + "\n\nAssistant:"
    assert format_prompt("x", "Q: {prompt}\nA:") == "Q: x\nA:"
    with pytest.raises(ValueError, match="prompt"):
        format_prompt("x", "no placeholder")


def test_parse_conversation():
    assert parse_conversation(CONVO) == MESSAGES
    assert parse_conversation("Hello\n\nHuman: not a marker at the start") == [
        {"role": "user", "content": "Hello\n\nHuman: not a marker at the start"}]
    # consecutive turns of one role are merged so the roles alternate
    assert parse_conversation("Human: a\n\nHuman: b\n\nAssistant: c\n\nHuman: d") == [
        {"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]
    with pytest.raises(ValueError, match="end with a Human turn"):
        parse_conversation("Human: a\n\nAssistant: b")


def test_text_template_matches_format_prompt(plain):
    fmt = PromptFormat.from_tokenizer(plain)
    assert not fmt.uses_chat_template
    for p in ("Say hi", "  padded  ", CONVO):
        assert fmt.prompt(p) == format_prompt(p)
    assert fmt.response(" Hello. ") == format_response(" Hello. ") == " Hello."
    # message lists render into the Human:/Assistant: form
    assert fmt.prompt(MESSAGES) == format_prompt(CONVO)
    assert fmt.prompt([{"role": "user", "content": "Say hi"}]) == format_prompt("Say hi")
    assert fmt.prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]) == \
        "Be brief.\n\n" + format_prompt("Say hi")
    custom = PromptFormat.from_tokenizer(plain, prompt_template="Q: {prompt}\nA:")
    assert custom.prompt("x") == "Q: x\nA:" and custom.prompt([{"role": "user", "content": "x"}]) == "Q: x\nA:"
    for bad in ([], MESSAGES[:2], [{"role": "tool", "content": "x"}], [{"role": "user"}],
                [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}]):
        with pytest.raises(ValueError):
            fmt.prompt(bad)
    with pytest.raises(ValueError, match="must contain"):
        PromptFormat.from_tokenizer(plain, prompt_template="no placeholder")


def test_modes(plain, chatml):
    for mode in ("never", False):
        fmt = PromptFormat.from_tokenizer(chatml, chat_template=mode)
        assert not fmt.uses_chat_template and fmt.prompt(CONVO) == format_prompt(CONVO)
        assert fmt.response("x") == " x"
    assert PromptFormat.from_tokenizer(chatml, chat_template=True).uses_chat_template
    assert not PromptFormat.from_tokenizer(plain, chat_template="auto").uses_chat_template
    for mode in ("always", True):
        with pytest.raises(ValueError, match="has no chat template") as err:
            PromptFormat.from_tokenizer(plain, chat_template=mode)
        assert repr(plain.name_or_path) in str(err.value)
    with pytest.raises(ValueError, match="chat_template must be"):
        PromptFormat.from_tokenizer(chatml, chat_template="sometimes")


def test_describe_and_check_same(plain, chatml, llama3):
    text, chat, other = (PromptFormat.from_tokenizer(t).describe() for t in (plain, chatml, llama3))
    assert text == {"kind": "prompt_template", "template": DEFAULT_TEMPLATE}
    assert chat["kind"] == "chat_template" and len(chat["sha256"]) == 64 and "template" not in chat
    assert PromptFormat.from_tokenizer(copy.deepcopy(chatml)).describe() == chat  # same template, same hash
    PromptFormat.check_same(chat, dict(chat), "the SFT model", "the reward model")
    PromptFormat.check_same(None, text, "an old export", "the policy")  # missing description: default template
    PromptFormat.check_same({}, text, "an old export", "the policy")
    with pytest.raises(ValueError, match="the SFT model and the reward model format prompts differently") as err:
        PromptFormat.check_same(chat, other, "the SFT model", "the reward model")
    assert chat["sha256"][:12] in str(err.value) and other["sha256"][:12] in str(err.value)
    with pytest.raises(ValueError, match="the policy uses the text template"):
        PromptFormat.check_same(chat, None, "the SFT model", "the policy")
    custom = PromptFormat.from_tokenizer(plain, prompt_template="Q: {prompt}\nA:").describe()
    with pytest.raises(ValueError, match="'Q: {prompt}"):
        PromptFormat.check_same(custom, text, "a", "b")
    # an export's description restores the format, against the tokenizer it was saved with
    assert PromptFormat.from_description(chat, chatml).prompt(CONVO) == PromptFormat.from_tokenizer(chatml).prompt(CONVO)
    assert PromptFormat.from_description(None).prompt("x") == format_prompt("x")
    with pytest.raises(ValueError, match="sha256"):
        PromptFormat.from_description(chat, llama3)


def test_end_of_turn(plain, chatml):
    assert check_end_of_turn(chatml)
    assert check_end_of_turn(plain)  # no chat template: nothing to check
    wrong = copy.deepcopy(chatml)
    wrong.add_special_tokens({"eos_token": "<|endoftext|>"})
    assert wrong.eos_token == "<|endoftext|>"
    with pytest.raises(ValueError, match=r"'<\|im_end\|>.*not with eos_token '<\|endoftext\|>'"):
        check_end_of_turn(wrong)
    with pytest.warns(UserWarning, match="eos_token"):
        assert not check_end_of_turn(wrong, strict=False)
    with pytest.warns(UserWarning, match="eos_token"):  # from_tokenizer warns too
        fmt = PromptFormat.from_tokenizer(wrong)
    with pytest.raises(ValueError):
        fmt.check_end_of_turn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PromptFormat.from_tokenizer(chatml)
        assert PromptFormat.from_tokenizer(wrong, chat_template="never").check_end_of_turn()
