"""SFT data: masks, truncation, splits, licences, and every bad-input case."""

import json
import math

import pytest
import torch
from helpers import write_jsonl

from lit_instruct.data.batching import LMCollator
from lit_instruct.data.demonstrations import SFTDataModule, encode_demonstration
from lit_instruct.data.prompt_format import format_prompt
from lit_instruct.data.records import DataError
from lit_instruct.objectives import IGNORE_INDEX, lm_loss


def good_rows(n=40):
    return [{"prompt": f"Question number {i}?", "response": f"Answer {i} is" + " longer" * (i % 5)} for i in range(n)]


def make_dm(tokenizer, train_file, max_length=64, **kwargs):
    dm = SFTDataModule(train_file=train_file, val_fraction=0.25, **kwargs)
    dm.connect(tokenizer, max_length)
    dm.prepare()
    return dm


def test_encode_masks_the_prompt_and_ends_with_eos(tokenizer):
    ids, labels, truncated = encode_demonstration(tokenizer, "Say hi", "Hi!", max_length=64)
    n_prompt = len(tokenizer(format_prompt("Say hi"), add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id and not truncated
    assert tokenizer.decode(ids[n_prompt:-1]) == " Hi!"


def test_long_response_is_cut_but_never_dropped_whole(tokenizer):
    ids, labels, truncated = encode_demonstration(tokenizer, "Say hi", "word " * 200, max_length=32)
    assert truncated and len(ids) == 32
    assert sum(l != IGNORE_INDEX for l in labels) > 0
    message = encode_demonstration(tokenizer, "long " * 100, "ok", max_length=32, min_response_tokens=4)
    assert isinstance(message, str) and "leaving 0 of the 32-token context" in message


def test_batch_loss_is_the_hand_computed_loss_over_response_tokens(tokenizer, tmp_path):
    """The loss mask: with padding by EOS (what a tokenizer without a pad token gets), only response tokens and
    their EOS count."""
    dm = make_dm(tokenizer, write_jsonl(tmp_path / "d.jsonl", good_rows()))
    examples = dm.train_examples[:3]
    batch = LMCollator(tokenizer.eos_token_id)(examples)
    assert (batch["attention_mask"] == 0).any()  # there is padding
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, len(tokenizer), dtype=torch.float64)
    total, count = 0.0, 0
    for b, ex in enumerate(examples):
        n_prompt = sum(1 for l in ex["labels"] if l == IGNORE_INDEX)
        for j in range(n_prompt, len(ex["input_ids"])):  # response tokens, EOS included
            logp = torch.log_softmax(logits[b, j - 1], -1)[ex["input_ids"][j]]
            total -= float(logp)
            count += 1
    assert count == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert math.isclose(float(lm_loss(logits, batch["labels"])), total / count, rel_tol=1e-6)
    # The EOS of each response is a label even though EOS is also the pad id.
    for b, ex in enumerate(examples):
        assert batch["labels"][b, len(ex["input_ids"]) - 1] == tokenizer.eos_token_id
        assert (batch["labels"][b, len(ex["input_ids"]):] == IGNORE_INDEX).all()


def test_split_is_deterministic_and_disjoint_by_prompt(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_rows(80) + good_rows(10))  # 10 duplicated prompts
    a, b = make_dm(tokenizer, path), make_dm(tokenizer, path)
    assert [e["input_ids"] for e in a.val_examples] == [e["input_ids"] for e in b.val_examples]
    train_prompts = {e["prompt"] for e in a.train_examples}
    val_prompts = {e["prompt"] for e in a.val_examples}
    assert val_prompts and not (train_prompts & val_prompts)


def test_only_permissive_keeps_apache_and_mit_rows(tokenizer, tmp_path):
    rows = [{**r, "license": lic} for r, lic in zip(good_rows(60), ["Apache-2.0 (x)", "MIT (y)", "CC-BY-NC-4.0"] * 20)]
    dm = make_dm(tokenizer, write_jsonl(tmp_path / "d.jsonl", rows), only_permissive=True)
    assert len(dm.train_examples) + len(dm.val_examples) == 40


def test_bundled_permissive_subset_is_all_permissive():
    from lit_instruct import bundled

    with open(bundled.resolve("bundled:sft_permissive.jsonl")) as f:
        assert all(bundled.is_permissive(json.loads(line)["license"]) for line in f)


@pytest.mark.parametrize(
    "lines, message",
    [
        (None, "file not found"),
        ([], "file is empty"),
        (['{"prompt": "a", "response": "b"}', "{not json"], r":2: not valid JSON"),
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a"}'], r":2: missing field 'response'"),
        (['{"prompt": 3, "response": "b"}'], r":1: field 'prompt' must be a string or a list of messages, got int"),
        (['{"prompt": "a", "response": "b"}'] * 3 + ['{"prompt": "a", "response": "  "}'], r":4: field 'response' is empty"),
        (['["a", "b"]'], r":1: expected a JSON object, got list"),
    ],
    ids=["missing", "empty", "not-json", "missing-field", "non-string", "empty-response", "not-object"],
)
def test_bad_input_names_file_line_and_problem(tokenizer, tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    if lines is not None:
        path.write_text("".join(l + "\n" for l in lines))
    with pytest.raises(DataError, match=message) as err:
        make_dm(tokenizer, str(path))
    assert str(path) in str(err.value)


def test_overlong_prompt_is_skipped_and_counted_or_an_error(tokenizer, tmp_path):
    rows = good_rows(40) + [{"prompt": "very long " * 200, "response": "x"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dm = make_dm(tokenizer, path)
    skipped = dm.stats["train"].skipped + dm.stats["val"].skipped
    assert len(skipped) == 1 and skipped[0].line == 41
    with pytest.raises(DataError, match=r"d.jsonl:41: prompt is \d+ tokens, leaving 0 of the 64-token context"):
        make_dm(tokenizer, path, overlong="error")


def test_all_bad_rows_are_reported_together(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ['{"prompt": "a"}'] * 12)
    with pytest.raises(DataError, match=r"12 problem\(s\)(.|\n)*and 2 more"):
        make_dm(tokenizer, path)
