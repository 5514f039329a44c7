"""Scoring the alignment-tax benchmarks' answers: pure functions of strings.

- SQuAD v2 F1 and exact match: the official evaluation script's definitions (``evaluate-v2.0.py``: lower-case, drop
  punctuation and the articles a/an/the, split on white space; F1 of the token multisets; an empty answer scores 1
  only against an empty reference). Written here because the harness's own SQuADv2 task fetches its metric from
  the hub (``evaluate.load("squad_v2")``).
- DROP F1 and exact match: the harness's own implementation (``lm_eval.tasks.drop.utils.get_metrics``: numbers must
  match, multi-span answers are aligned bag to bag), which ships in the ``lm-eval`` package.

Every score is the maximum over the item's references, in percent (0-100), the units of the InstructGPT paper's
tables (SQuADv2 F1 69.75 for GPT-3 175B).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def squad_f1(prediction: str, reference: str) -> float:
    """Token F1 of one prediction against one reference (0-1), SQuAD v2's definition."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """``{"f1", "exact"}`` in percent: the best over ``references``."""
    return {"f1": 100.0 * max(squad_f1(prediction, r) for r in references),
            "exact": 100.0 * max(squad_exact(prediction, r) for r in references)}


def drop_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """``{"f1", "exact"}`` in percent: DROP's metric (the harness's code), the best over ``references`` (each one
    answer span)."""
    from lm_eval.tasks.drop.utils import get_metrics

    exact, f1 = zip(*(get_metrics([prediction], (reference,)) for reference in references))
    return {"f1": 100.0 * float(max(f1)), "exact": 100.0 * float(max(exact))}
