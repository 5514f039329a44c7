"""``lit-instruct sample``: K responses per prompt (a row's ``k`` wins), in the export's prompt format, batched with
left padding, deterministic for a seed, settings recorded; bad prompts stop before the model loads."""

import json
import shutil

import pytest
import torch
from helpers import run_cli, write_jsonl

import lit_instruct.tools.sample as sample_tool
from lit_instruct.models.export import read_metadata
from lit_instruct.tools.cli import main as cli_main

PROMPTS = [
    {"prompt": "Say hello.", "source": "test"},
    {"prompt": "Name a colour.", "k": 2},
    {"prompt": [{"role": "user", "content": "Count to three, please, slowly and carefully."}]},
    {"prompt": "word " * 400},  # longer than the tiny context
]


def sample(tiny_exports, tmp_path, *flags, prompts=PROMPTS, name="s.jsonl", export=None):
    out = tmp_path / name
    cli_main(["sample", str(export or tiny_exports / "sft"), "--prompts", write_jsonl(tmp_path / "prompts.jsonl", prompts),
              "--out", str(out), "--max-new-tokens", "6", *flags])
    return [json.loads(line) for line in out.read_text().splitlines()], json.loads(out.with_suffix(".meta.json").read_text())


@pytest.fixture
def queries(monkeypatch):
    """Every generate call's (query, query_mask), as the sampler passed them."""
    calls = []
    real = sample_tool.generate

    def spy(model, query, query_mask, **kwargs):
        calls.append((query.clone(), query_mask.clone()))
        return real(model, query, query_mask, **kwargs)

    monkeypatch.setattr(sample_tool, "generate", spy)
    return calls


def test_k_responses_per_prompt_in_file_order_with_the_settings_recorded(tiny_exports, tmp_path, capsys):
    rows, meta = sample(tiny_exports, tmp_path, "--k", "3", "--seed", "5", "--temperature", "0.9", "--top-p", "0.95")
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in PROMPTS[:3]]  # the over-long one skipped
    assert [len(r["completions"]) for r in rows] == [3, 2, 3]  # the row's "k" overrides --k
    assert all(set(r) == {"prompt", "completions", "ended"} and all(isinstance(c, str) for c in r["completions"]) for r in rows)
    ended = [e for r in rows for e in r["ended"]]
    assert [len(r["ended"]) for r in rows] == [3, 2, 3] and all(isinstance(e, bool) for e in ended)
    assert sum(ended) / len(ended) == meta["eos_fraction"]
    assert meta["export"] == str(tiny_exports / "sft") and meta["export_stage"] == "sft"
    assert {k: meta[k] for k in ("k", "k_from_rows", "seed", "temperature", "top_p", "max_new_tokens", "batch_size")} == \
        {"k": 3, "k_from_rows": 1, "seed": 5, "temperature": 0.9, "top_p": 0.95, "max_new_tokens": 6, "batch_size": 64}
    assert meta["rows"] == 3 and meta["responses"] == 8 and meta["skipped_overlong"] == 1
    assert meta["prompt_format"] == read_metadata(tiny_exports / "sft")["prompt_format"]
    printed = capsys.readouterr().out
    assert "seed 5" in printed and "temperature 0.9" in printed and "skipped 1 prompt(s)" in printed and ":4" in printed


def test_generation_is_batched_across_prompts_with_left_padding(tiny_exports, tmp_path, queries):
    prompts = [{"prompt": "Hi."}, {"prompt": "Name three colours of the rainbow, please.", "k": 2}, {"prompt": "Why?"}]
    sample(tiny_exports, tmp_path, "--k", "3", "--batch-size", "4", prompts=prompts)
    assert [q.shape[0] for q, _ in queries] == [4, 4]  # 8 responses, 4 per call: prompt 0 x 3 and prompt 1 in the first
    query, mask = queries[0]
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all())  # padded on the left, every row ends at its prompt
    assert torch.equal(query[0], query[2]) and not torch.equal(query[0], query[3])


def test_the_same_seed_gives_the_same_file_and_the_callers_random_state_is_untouched(tiny_exports, tmp_path):
    state = torch.random.get_rng_state()
    first, _ = sample(tiny_exports, tmp_path, "--k", "4", "--seed", "1", name="a.jsonl")
    assert torch.equal(torch.random.get_rng_state(), state)
    again, _ = sample(tiny_exports, tmp_path, "--k", "4", "--seed", "1", name="b.jsonl")
    other, _ = sample(tiny_exports, tmp_path, "--k", "4", "--seed", "2", name="c.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert first == again and first != other


def test_prompts_are_asked_in_the_exports_recorded_format_or_the_default(tiny_exports, tmp_path, tokenizer, queries):
    export = shutil.copytree(tiny_exports / "sft", tmp_path / "policy")
    meta = read_metadata(export)
    meta["prompt_format"] = {"kind": "prompt_template", "template": "Q: {prompt}\nA:"}
    (export / "lit_instruct.json").write_text(json.dumps(meta))
    _, written = sample(tiny_exports, tmp_path, "--k", "1", prompts=PROMPTS[:1], export=export)
    assert tokenizer.decode(queries[-1][0][0], skip_special_tokens=True) == "Q: Say hello.\nA:"
    assert written["prompt_format"]["template"] == "Q: {prompt}\nA:"
    (export / "lit_instruct.json").unlink()  # a plain Hugging Face directory
    _, written = sample(tiny_exports, tmp_path, "--k", "1", prompts=PROMPTS[:1], export=export)
    assert tokenizer.decode(queries[-1][0][0], skip_special_tokens=True) == "Human: Say hello.\n\nAssistant:"
    assert written["export_stage"] is None


def test_bad_prompts_and_settings_stop_before_the_model_loads(tiny_exports, tmp_path, capsys, monkeypatch):
    import lit_instruct.tools.tax as tax

    monkeypatch.setattr(tax, "load_policy", lambda *a, **k: pytest.fail("the model loaded before the input was checked"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, "{not json", {"prompt": "x", "k": 0}, {"text": "no prompt"},
                                               {"prompt": "y", "k": "3"}])
    cases = [
        (bad, [], [f"{bad}:2:", f"{bad}:3: field 'k' must be an integer >= 1", f"{bad}:4: missing field 'prompt'", f"{bad}:5:"]),
        (str(tmp_path / "missing.jsonl"), [], [str(tmp_path / "missing.jsonl")]),
        (write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "fine"}]), ["--temperature", "0"], ["--temperature must be > 0"]),
        (str(tmp_path / "ok.jsonl"), ["--k", "0"], ["--k must be >= 1"]),
    ]
    for prompts, flags, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            cli_main(["sample", str(tiny_exports / "sft"), "--prompts", prompts, "--out", str(tmp_path / "o.jsonl"), *flags])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and all(text in err for text in expected), err
    with pytest.raises(SystemExit):
        cli_main(["sample", str(tmp_path / "no-export"), "--prompts", str(tmp_path / "ok.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    assert f"{tmp_path / 'no-export'}: model directory not found" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_the_command_samples_the_bundled_prompts(tiny_exports, tmp_path):
    out = tmp_path / "bundled.jsonl"
    done = run_cli("sample", str(tiny_exports / "sft"), "--prompts", "bundled:prompts.jsonl", "--limit", "2", "--k", "2",
                   "--max-new-tokens", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["completions"]) == 2 for r in rows)
    assert "prompts_file bundled:prompts.jsonl" in done.stdout and "wrote 2 rows, 4 responses" in done.stdout


def test_split_samples_one_side_of_ppos_own_split(tiny_exports, tmp_path):
    """``--split train|val``: the prompts PPODataModule trains on, or validates on, for the same file and settings."""
    from lit_instruct.data.prompt_format import prompt_key
    from lit_instruct.data.records import in_validation

    prompts = [{"prompt": f"Question number {i}: what comes next?"} for i in range(12)]
    sides = {}
    for side in ("train", "val"):
        rows, meta = sample(tiny_exports, tmp_path, "--k", "1", "--split", side, "--val-fraction", "0.5", "--split-seed", "3",
                            prompts=prompts, name=f"{side}.jsonl")
        sides[side] = [r["prompt"] for r in rows]
        assert meta["split"] == side and meta["val_fraction"] == 0.5 and meta["split_seed"] == 3
    assert sides["val"] == [p["prompt"] for p in prompts if in_validation(prompt_key(p["prompt"]), 0.5, 3)]
    assert sides["train"] == [p["prompt"] for p in prompts if not in_validation(prompt_key(p["prompt"]), 0.5, 3)]
    assert sides["train"] and sides["val"]
