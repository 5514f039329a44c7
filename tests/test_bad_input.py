"""The bad-input catalogue: one table per stage's data, every case stopped before the first training step.

Each case writes a small file (or gives a bad setting); the message must name the file, the line (or row, or
the split) and the problem. File cases run ``Trainer.fit`` with a callback that counts training batches and
check that none started and that the error came from the data module's setup; a bad setting is refused when
the data module is built (so the CLI stops before it builds a model).
"""

import traceback

import lightning as L
import pytest
from helpers import quiet_trainer, write_jsonl

from lit_instruct import (
    PPODataModule,
    PPOModule,
    PretrainDataModule,
    PretrainModule,
    RewardDataModule,
    RewardModule,
    SFTDataModule,
    SFTModule,
    TinyConfig,
)
from lit_instruct.data.records import DataError, in_validation

TINY = TinyConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128)


class CountSteps(L.Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, *args):
        self.steps += 1


def fit_fails(module, datamodule, tmp_path) -> str:
    """Run ``Trainer.fit``; it must raise a :class:`DataError` from the data module's setup before any training
    step. Returns the message."""
    steps = CountSteps()
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                            default_root_dir=tmp_path, callbacks=[steps])
    with pytest.raises(DataError) as err:
        trainer.fit(module, datamodule)
    assert steps.steps == 0, "a training step ran before the bad input was found"
    frames = [(f.name, f.filename) for f in traceback.extract_tb(err.value.__traceback__)]
    setup = type(datamodule).setup.__code__  # the data module's setup (defined in its class or inherited)
    assert any((name, filename) == (setup.co_name, setup.co_filename) for name, filename in frames), frames
    return str(err.value)


def check(message, path, *expected):
    assert str(path) in message, message
    for text in expected:
        assert text in message, f"{text!r} not in:\n{message}"


# ====================================================================== SFT

DEMO = {"prompt": "Say hello.", "response": "Hello there, friend."}
DEMOS = [{"prompt": f"Question {i}?", "response": f"Answer number {i}."} for i in range(20)]

SFT_FILES = {
    # id: (file name, lines, extra data settings, expected pieces after "FILE")
    "not-json-then-more": ("d.jsonl", [*DEMOS, "{not json", {"prompt": "a"}, "[1, 2"],
                           {}, ["3 problem(s)", ":21: not valid JSON", ":22: missing field 'response'", ":23: not valid JSON"]),
    "invalid-utf8": ("d.jsonl", [*DEMOS[:5], b'{"prompt": "caf\xe9", "response": "ok"}', *DEMOS[5:]],
                     {}, [":6: invalid UTF-8", "0xe9"]),
    "duplicate-key": ("d.jsonl", [*DEMOS, '{"prompt": "a", "response": "b", "prompt": "c"}'],
                      {}, [":21: duplicate key 'prompt'"]),
    "nested-duplicate-key": ("d.jsonl", [*DEMOS, '{"prompt": [{"role": "user", "role": "system", "content": "x"}], "response": "b"}'],
                             {}, [":21: duplicate key 'role'"]),
    "json-array-duplicate": ("d.json", ['[{"prompt": "a", "response": "b"},', '{"response": "b", "prompt": "a", "response": "c"}]'],
                             {}, [":row 2: duplicate key 'response'"]),
    "csv-invalid-utf8": ("d.csv", ["prompt,response", *[f"q{i},a{i}" for i in range(10)], b"q,\xff\xfe"],
                         {}, [":12: invalid UTF-8"]),
    "csv-duplicate-column": ("d.csv", ["prompt,response,prompt", "a,b,c"], {}, [":1: duplicate column 'prompt'"]),
    "many-bad-lines": ("d.jsonl", [*DEMOS, *["{broken"] * 7, *[{"prompt": "p"}] * 7],
                       {}, ["14 problem(s)", ":21: not valid JSON", "... and 4 more"]),
    "empty-response": ("d.jsonl", [*DEMOS, {"prompt": "a", "response": " "}], {}, [":21: field 'response' is empty"]),
    "over-long": ("d.jsonl", [*DEMOS, {"prompt": "word " * 300, "response": "b"}], {"overlong": "error"},
                  [":21: prompt is", "128-token context"]),
    "empty-file": ("d.jsonl", [], {}, [":1: file is empty"]),
    "bad-val-file": ("v.jsonl", [DEMO, b'{"prompt": "\xc3(", "response": "x"}'], {"val_file": True}, [":2: invalid UTF-8"]),
}


@pytest.mark.parametrize("case", list(SFT_FILES))
def test_sft_bad_file(case, tmp_path):
    name, lines, settings, expected = SFT_FILES[case]
    path = write_jsonl(tmp_path / name, lines)
    if settings.pop("val_file", False):
        settings["val_file"], path_train = path, write_jsonl(tmp_path / "train.jsonl", DEMOS)
    else:
        path_train = path
    module = SFTModule(tiny=TINY, num_sample_prompts=0)
    message = fit_fails(module, SFTDataModule(train_file=path_train, val_fraction=0.25, batch_size=2, **settings), tmp_path)
    check(message, path, *expected)


# ====================================================================== reward

RANKED = [{"prompt": f"Which is better {i}?", "completions": ["yes", "no", "maybe"], "ranking": [0, 2, 1]} for i in range(12)]

REWARD_FILES = {
    "huge-rank": ("r.jsonl", [*RANKED, {"prompt": "p", "completions": ["a", "b"], "ranking": [0, 10**30]}],
                  {}, [":13: ranking[1] must be in [0, 2**31)", str(10**30)]),
    "negative-rank": ("r.jsonl", [*RANKED, {"prompt": "p", "completions": ["a", "b"], "ranking": [-1, 0]}],
                      {}, [":13: ranking[0] must be in [0, 2**31)", "got -1"]),
    "duplicate-key": ("r.jsonl", [*RANKED, '{"prompt": "p", "chosen": "a", "rejected": "b", "chosen": "c"}'],
                      {}, [":13: duplicate key 'chosen'"]),
    "invalid-utf8": ("r.jsonl", [b'{"prompt": "\x80", "chosen": "a", "rejected": "b"}', *RANKED], {}, [":1: invalid UTF-8", "0x80"]),
    "not-json-and-bad-row": ("r.jsonl", [*RANKED, "nope", {"prompt": "p", "completions": ["a"], "ranking": [0]}],
                             {}, ["2 problem(s)", ":13: not valid JSON", ":14: K < 2"]),
    "demonstrations-missing": ("missing.jsonl", None, {"demonstrations": True}, [": file not found"]),
    "demonstrations-bad-line": ("demos.jsonl", [*DEMOS, {"prompt": "p"}, b'{"prompt": "\xff", "response": "r"}'],
                                {"demonstrations": True}, ["2 problem(s)", ":21: missing field 'response'", ":22: invalid UTF-8"]),
}


@pytest.mark.parametrize("case", list(REWARD_FILES))
def test_reward_bad_file(case, tmp_path):
    name, lines, settings, expected = REWARD_FILES[case]
    path = write_jsonl(tmp_path / name, lines) if lines is not None else str(tmp_path / name)
    if settings.pop("demonstrations", False):
        dm = RewardDataModule(train_file=write_jsonl(tmp_path / "r.jsonl", RANKED), demonstrations_file=path, val_fraction=0.3, batch_size=2)
    else:
        dm = RewardDataModule(train_file=path, val_fraction=0.3, batch_size=2, demonstrations_file=None, **settings)
    message = fit_fails(RewardModule(tiny=TINY), dm, tmp_path)
    check(message, path, *expected)


def test_reward_demonstrations_are_read_once_at_setup(tmp_path):
    dm = RewardDataModule(train_file=write_jsonl(tmp_path / "r.jsonl", RANKED), demonstrations_file=write_jsonl(tmp_path / "d.jsonl", DEMOS),
                          val_fraction=0.3, normalization_rows=5)
    dm.prepare()
    (tmp_path / "d.jsonl").unlink()  # read at setup: the normalisation after training no longer needs the file
    assert len(dm.demonstrations()) == 5 and dm.demonstrations() is dm.demonstrations()


# ====================================================================== PPO-ptx data


def ppo(exports, **kwargs):
    """A PPOModule on the session's ``tiny_exports`` (enough to reach data setup)."""
    return PPOModule(policy_name_or_path=str(exports / "sft"), reward_model_path=str(exports / "rm"),
                     sampling={"max_new_tokens": 8}, ppo={"minibatch_size": 2}, ptx={"examples_per_episode": 1},
                     num_sample_prompts=0, **kwargs)


def documents(long_in: str) -> list[str]:
    """Pretraining text (blank-line separated documents) where the split ``long_in`` ("training" or "held-out")
    gets long documents and the other split a few one-word ones, at a held-out fraction of 0.5."""
    wanted_long = long_in == "held-out"  # in_validation() of a long document
    long_docs, short_docs = [], []
    for i in range(100):
        short, long = f"doc{i}", f"doc{i} " + " ".join(f"word{i}x{j} and more text" for j in range(20))
        if in_validation(short, 0.5) != wanted_long and len(short_docs) < 3:
            short_docs.append(short)
        if in_validation(long, 0.5) == wanted_long and len(long_docs) < 3:
            long_docs.append(long)
    return ["\n\n".join(long_docs + short_docs)]


PROMPTS = [{"prompt": f"Tell me about topic {i}."} for i in range(30)]

PPO_FILES = {
    "prompts-invalid-utf8": ("p.jsonl", [*PROMPTS[:3], b'{"prompt": "na\xefve"}', *PROMPTS[3:]], "prompts", {}, [":4: invalid UTF-8"]),
    "prompts-duplicate-key": ("p.jsonl", [*PROMPTS, '{"prompt": "a", "prompt": "b"}'], "prompts", {}, [":31: duplicate key 'prompt'"]),
    "prompts-all-bad-lines": ("p.jsonl", [*PROMPTS, "{", {"question": "x"}, "]"], "prompts", {},
                              ["3 problem(s)", ":31: not valid JSON", ":32: missing field 'prompt'", ":33: not valid JSON"]),
    "pretrain-invalid-utf8": ("t.txt", ["Some text.", "", b"More \xf0\x28\x8c\x28 text."], "pretrain", {}, [":3: invalid UTF-8"]),
    "training-text-too-short": ("t.txt", None, "pretrain", {"long_in": "held-out"},
                                ["the training split has too little text for one 32-token block", "data.ptx_block_size"]),
    "heldout-text-too-short": ("t.txt", None, "pretrain", {"long_in": "training"},
                               ["the held-out split has too little text for one 32-token block"]),
    "one-document": ("t.txt", ["Only one document here."], "pretrain", {}, ["1 documents give an empty training split"]),
}


@pytest.mark.parametrize("case", list(PPO_FILES))
def test_ppo_bad_file(case, tiny_exports, tmp_path):
    name, lines, which, settings, expected = PPO_FILES[case]
    lines = documents(settings["long_in"]) if "long_in" in settings else lines
    path = write_jsonl(tmp_path / name, lines)
    files = {"prompts_file": path} if which == "prompts" else {"pretrain_file": path, "pretrain_val_fraction": 0.5}
    dm = PPODataModule(rollout_batch_size=4, max_prompt_tokens=48, max_val_prompts=2, val_batch_size=2, ptx_block_size=32,
                          max_val_pretrain_blocks=2, **files)
    message = fit_fails(ppo(tiny_exports), dm, tmp_path)
    check(message, path, *expected)


def test_plain_ppo_needs_no_training_text_but_still_held_out_text(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "t.txt", documents("held-out"))
    dm = PPODataModule(pretrain_file=path, pretrain_val_fraction=0.5, ptx_block_size=32, max_prompt_tokens=48)
    dm.connect(tokenizer, needs_ptx=False)  # ptx_coef 0: the training text is never used
    dm.prepare()
    assert dm.val_blocks and not dm.ptx_blocks
    dm.connect(tokenizer)
    with pytest.raises(DataError, match="the training split has too little text"):
        dm.prepare()


# ====================================================================== base


BASE_FILES = {
    "invalid-utf8": ("t.txt", ["First document.", "", b"Second \xc0\xaf document.", "", "Third."], {}, [":3: invalid UTF-8", "0xc0"]),
    "several-invalid-lines": ("t.txt", [b"\xff", "ok", b"\xfe"], {}, ["2 problem(s)", ":1: invalid UTF-8", ":3: invalid UTF-8"]),
    "training-text-too-short": ("t.txt", None, {"long_in": "held-out"}, ["the training split has too little text for one 32-token block",
                                                                         "data.block_size"]),
    "heldout-text-too-short": ("t.txt", None, {"long_in": "training"}, ["the held-out split has too little text for one 32-token block"]),
    "empty": ("t.txt", ["", "  "], {}, [":1: file is empty"]),
}


@pytest.mark.parametrize("case", list(BASE_FILES))
def test_base_bad_file(case, tmp_path):
    name, lines, settings, expected = BASE_FILES[case]
    lines = documents(settings["long_in"]) if "long_in" in settings else lines
    path = write_jsonl(tmp_path / name, lines)
    dm = PretrainDataModule(text_file=path, val_fraction=0.5, block_size=32, batch_size=2)
    message = fit_fails(PretrainModule(tiny=TINY, num_sample_prompts=0), dm, tmp_path)
    check(message, path, *expected)


# ====================================================================== settings (refused when the data module is built)

SETTINGS = [
    (SFTDataModule, "batch_size", 0, "data.batch_size must be >= 1, got 0"),
    (SFTDataModule, "val_fraction", 1.0, "data.val_fraction must be in [0, 1), got 1.0"),
    (SFTDataModule, "min_response_tokens", 0, "data.min_response_tokens must be >= 1, got 0"),
    (SFTDataModule, "max_length", 0, "data.max_length must be >= 2, got 0"),
    (SFTDataModule, "pad_to_multiple_of", 0, "data.pad_to_multiple_of must be >= 1, got 0"),
    (RewardDataModule, "batch_size", -2, "data.batch_size must be >= 1, got -2"),
    (RewardDataModule, "val_fraction", -0.1, "data.val_fraction must be in [0, 1), got -0.1"),
    (RewardDataModule, "normalization_rows", 0, "data.normalization_rows must be >= 1, got 0"),
    (RewardDataModule, "min_completion_tokens", 0, "data.min_completion_tokens must be >= 1, got 0"),
    (PPODataModule, "rollout_batch_size", 0, "data.rollout_batch_size must be >= 1, got 0"),
    (PPODataModule, "val_batch_size", 0, "data.val_batch_size must be >= 1, got 0"),
    (PPODataModule, "max_val_prompts", 0, "data.max_val_prompts must be >= 1, got 0"),
    (PPODataModule, "max_prompt_tokens", 0, "data.max_prompt_tokens must be >= 1, got 0"),
    (PPODataModule, "ptx_block_size", 1, "data.ptx_block_size must be >= 2, got 1"),
    (PPODataModule, "max_val_pretrain_blocks", 0, "data.max_val_pretrain_blocks must be >= 1, got 0"),
    (PPODataModule, "pretrain_val_fraction", 1.5, "data.pretrain_val_fraction must be in [0, 1), got 1.5"),
    (PPODataModule, "val_fraction", float("nan"), "data.val_fraction must be a number, got nan"),
    (PretrainDataModule, "batch_size", 0, "data.batch_size must be >= 1, got 0"),
    (PretrainDataModule, "block_size", 1, "data.block_size must be >= 2, got 1"),
    (PretrainDataModule, "val_fraction", 1, "data.val_fraction must be in [0, 1), got 1"),
]


@pytest.mark.parametrize("cls, name, value, message", SETTINGS, ids=[f"{c.__name__}-{n}" for c, n, _, _ in SETTINGS])
def test_bad_setting_is_refused_when_the_data_module_is_built(cls, name, value, message):
    with pytest.raises(ValueError) as err:
        cls(**{name: value})
    assert str(err.value) == message


@pytest.mark.parametrize("cls, columns, wrong, right", [
    (SFTDataModule, {"promt": "question", "response": "answer"}, "promt", "prompt"),
    (RewardDataModule, {"choosen": "preferred"}, "choosen", "chosen"),
])
def test_a_misspelt_field_in_columns_is_named_before_training(cls, columns, wrong, right, tmp_path):
    """Without this check every row would fail its validation as missing the field, which hides the typo."""
    rows = [{"question": f"Q{i}?", "answer": f"A{i}.", "preferred": "yes", "rejected": "no"} for i in range(20)]
    files = {"train_file": write_jsonl(tmp_path / "rows.jsonl", rows)}
    module = SFTModule(tiny=TINY) if cls is SFTDataModule else RewardModule(tiny=TINY)
    message = fit_fails(module, cls(**files, columns=columns), tmp_path)
    assert f"data.columns: unknown field {wrong!r} (did you mean {right!r}?)" in message, message
