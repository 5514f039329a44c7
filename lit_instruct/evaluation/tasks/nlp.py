"""The InstructGPT paper's public-NLP alignment-tax items as lm-evaluation-harness tasks.

Each ``<task>.yaml`` is a harness task definition reading a local JSON Lines file (``dataset_path: json``); the
file is the bundled ``eval_instructgpt_nlp.jsonl`` unless ``lit-instruct eval --data`` names another with the same
columns (``task``, ``prompt``, ``refs``). :func:`lit_instruct.evaluation.harness.task_config` loads them and fills
in the file. This module holds the functions their ``!function`` entries name.
"""

from __future__ import annotations

import math

from lit_instruct.evaluation.answers import drop_scores, squad_scores


def _rows(task: str):
    def select(dataset):
        return dataset.filter(lambda row: row["task"] == task)

    return select


squadv2_docs = _rows("squadv2")
drop_docs = _rows("drop")
fr_to_en_docs = _rows("fr_to_en")


def squadv2_results(doc: dict, results: list[str]) -> dict[str, float]:
    return squad_scores(results[0].strip(), doc["refs"])


def drop_results(doc: dict, results: list[str]) -> dict[str, float]:
    return drop_scores(results[0].strip(), doc["refs"])


def fr_to_en_results(doc: dict, results: list[str]) -> dict[str, tuple]:
    """Corpus BLEU needs every item: the harness's ``bleu`` aggregation (sacrebleu) gets (references, prediction)."""
    return {"bleu": (doc["refs"][0], results[0].strip())}


def reference_results(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """Bits per byte of the first reference (with the space the prompt's ``A:`` / ``English:`` is followed by)."""
    loglikelihood, _ = results[0]
    return {"bits_per_byte": -loglikelihood / (math.log(2) * len((" " + doc["refs"][0]).encode("utf-8")))}
