"""The alignment-tax benchmarks through lm-evaluation-harness, offline: every bundled task end to end on the tiny SFT
export, the harness's F1 and BLEU equal to a hand computation on known answers, the training-time callback equal
to ``lit-instruct eval`` on the same weights, and bad task files and rows refused before a model runs."""

import collections
import json
import math

import pytest
import torch
from helpers import quiet_trainer, write_jsonl

from lit_instruct.evaluation import harness
from lit_instruct.models.causal_lm import load_causal_lm, load_tokenizer

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def sft(tiny_exports):
    path = tiny_exports / "sft"
    tokenizer = load_tokenizer(str(path))
    return path, load_causal_lm(str(path), tokenizer, trainable=False), tokenizer


def test_every_bundled_task_runs_end_to_end(sft):
    _, model, tokenizer = sft
    results = harness.evaluate(model, tokenizer, limit=6)
    assert set(results) == set(harness.BUNDLED_TASKS)
    for task in ("instructgpt_squadv2", "instructgpt_drop"):
        assert set(results[task]) == {"f1", "exact"} and 0 <= results[task]["f1"] <= 100
    assert 0 <= results["instructgpt_fr_to_en"]["bleu"] <= 100
    assert 0 < results["instructgpt_references"]["bits_per_byte"] < 20
    assert not model.training  # put back in the mode it had
    assert set(harness.flat_metrics(results)) >= {"tax/instructgpt_squadv2/f1", "tax/instructgpt_fr_to_en/bleu"}


def bleu_by_hand(pairs: list[tuple[str, str]]) -> float:
    """Corpus BLEU-4 (one reference each, uniform weights, brevity penalty), counted with loops on whitespace tokens."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for ref, hyp in pairs:
        r, h = ref.split(), hyp.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            ref_counts = collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            hyp_counts = collections.Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            matches[n - 1] += sum(min(c, ref_counts[g]) for g, c in hyp_counts.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * brevity * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


def test_f1_and_bleu_through_the_harness_equal_a_hand_computation(tmp_path, sft, monkeypatch):
    """Known answers in place of the model's: the harness's request building, our ``process_results`` and its
    aggregation give the hand-computed F1 (SQuAD, DROP) and corpus BLEU."""
    from lm_eval.models.huggingface import HFLM

    rows = [
        {"task": "squadv2", "prompt": "Q: Which sea?\n\nA:", "refs": ["North Sea", "the North Sea"]},
        {"task": "squadv2", "prompt": "Q: When?\n\nA:", "refs": ["in 1978"]},
        {"task": "drop", "prompt": "Question: How many?\nAnswer:", "refs": ["7761"]},
        {"task": "drop", "prompt": "Question: Which groups?\nAnswer:", "refs": ["Asian", "Pacific Islander"]},
        {"task": "fr_to_en", "prompt": "French: le chat\nEnglish:", "refs": ["the cat sat on the mat"]},
        {"task": "fr_to_en", "prompt": "French: le chien\nEnglish:", "refs": ["there is a dog in the garden today"]},
    ]
    answers = {"Q: Which sea?\n\nA:": " the North Sea oil", "Q: When?\n\nA:": " 1978",
               "Question: How many?\nAnswer:": " 7761", "Question: Which groups?\nAnswer:": " Pacific",
               "French: le chat\nEnglish:": " the cat sat on the mat", "French: le chien\nEnglish:": " there is a dog in the park"}
    data = write_jsonl(tmp_path / "items.jsonl", rows)
    monkeypatch.setattr(HFLM, "generate_until", lambda self, requests, disable_tqdm=False: [answers[r.args[0]] for r in requests])
    _, model, tokenizer = sft
    tasks = ["instructgpt_squadv2", "instructgpt_drop", "instructgpt_fr_to_en"]
    results = harness.evaluate(model, tokenizer, tasks, data_file=data)
    # SQuAD: "the North Sea oil" vs "North Sea": P 2/3 R 1 -> 0.8; "1978" vs "in 1978": P 1 R 1/2 -> 2/3
    assert results["instructgpt_squadv2"]["f1"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)
    assert results["instructgpt_squadv2"]["exact"] == 0.0
    # DROP: exact number; "Pacific" vs "Pacific Islander": 0.67 (the harness rounds each item to 2 decimals)
    assert results["instructgpt_drop"]["f1"] == pytest.approx(100 * (1.0 + 0.67) / 2)
    assert results["instructgpt_drop"]["exact"] == pytest.approx(50.0)
    expected = bleu_by_hand([(r["refs"][0], answers[r["prompt"]].strip()) for r in rows[4:]])
    assert results["instructgpt_fr_to_en"]["bleu"] == pytest.approx(expected, rel=1e-6)
    assert 0 < expected < 100


def test_the_callback_and_the_cli_agree_on_the_same_weights(tmp_path, sft):
    """``AlignmentTax`` on a trained-in-memory module (weights moved off the export's) and ``lit-instruct eval`` on
    that module's export give the same numbers."""
    from lit_instruct import SFTDataModule, SFTModule
    from lit_instruct.callbacks import AlignmentTax
    from lit_instruct.tools.tax import evaluate_export

    path, _, _ = sft
    module = SFTModule(model_name_or_path=str(path), num_sample_prompts=0)
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    callback = AlignmentTax(limit=4, batch_size=4)
    trainer = quiet_trainer(callbacks=[callback], limit_val_batches=1, default_root_dir=tmp_path)
    metrics = trainer.validate(module, SFTDataModule(batch_size=4, max_length=128), verbose=False)[0]
    step, in_memory = callback.history[-1]
    assert metrics["tax/instructgpt_references/bits_per_byte"] == pytest.approx(in_memory["instructgpt_references"]["bits_per_byte"])
    module.export(tmp_path / "export")
    from_disk = evaluate_export(tmp_path / "export", limit=4, batch_size=4, bootstrap_iters=0)["results"]
    assert from_disk.keys() == in_memory.keys()
    for task in in_memory:
        assert from_disk[task] == pytest.approx(in_memory[task], rel=1e-5, abs=1e-6), task
    original = evaluate_export(path, ["instructgpt_references"], limit=4, batch_size=4, bootstrap_iters=0)["results"]
    assert original["instructgpt_references"]["bits_per_byte"] != pytest.approx(in_memory["instructgpt_references"]["bits_per_byte"])


def test_bad_task_files_and_rows_are_refused_before_a_model_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        harness.task_configs(harness.BUNDLED_TASKS, tmp_path / "nothing.jsonl")
    with pytest.raises(FileNotFoundError, match="missing_task.yaml: the task file does not exist"):
        harness.task_configs([str(tmp_path / "missing_task.yaml")])
    with pytest.raises(ValueError, match="unknown benchmark task.*no_such_task"):
        harness.task_configs(["no_such_task"])
    assert harness.task_configs(["hellaswag", "wmt14-fr-en"]) == ["hellaswag", "wmt14-fr-en"]  # the harness's own: passed on
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task": "squadv2", "prompt": "Q: x\n\nA:", "refs": ["y"]}) + "\n"
                   + json.dumps({"task": "squadv2", "prompt": "Q: x\n\nA:", "refs": []}) + "\n"
                   + "{not json\n" + json.dumps({"task": "summarise", "prompt": "p", "refs": ["r"]}) + "\n")
    with pytest.raises(ValueError) as error:
        harness.task_configs(["instructgpt_squadv2"], bad)
    message = str(error.value)
    assert f"{bad}:2: 'refs' must be a non-empty list" in message and f"{bad}:3:" in message and f"{bad}:4: 'task' must be one of" in message
    only_squad = write_jsonl(tmp_path / "squad.jsonl", [{"task": "squadv2", "prompt": "Q: x\n\nA:", "refs": ["y"]}])
    with pytest.raises(ValueError, match="no rows for instructgpt_drop"):
        harness.task_configs(["instructgpt_squadv2", "instructgpt_drop"], only_squad)


def test_eval_cli_writes_json_and_markdown_and_names_a_bad_row(tmp_path, sft, capsys):
    """``lit-instruct eval`` (its entry point, in this process: the harness's task index is already loaded here)."""
    from lit_instruct.tools.cli import main

    path, _, _ = sft
    out = tmp_path / "tax.json"
    main(["eval", str(path), "--tasks", "instructgpt_squadv2", "instructgpt_references", "--limit", "3", "--out", str(out)])
    assert "| instructgpt_references | bits_per_byte |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"instructgpt_squadv2", "instructgpt_references"} and result["settings"]["limit"] == 3
    assert "| instructgpt_references | bits_per_byte |" in out.with_suffix(".md").read_text()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"task": "drop", "prompt": "p", "refs": "7761"}])
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(path), "--data", str(bad), "--out", str(tmp_path / "x.json")])
    assert exit_.value.code == 2 and f"{bad}:1: 'refs' must be a non-empty list" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
