"""The benchmarks' answer scoring: SQuAD v2 F1 / exact match against a plain counting loop and by hand, DROP F1 (the
harness's code) by hand, and the invariances of the definitions."""

import random

import pytest

from lit_instruct.evaluation.answers import (
    drop_scores,
    normalize_answer,
    squad_exact,
    squad_f1,
    squad_scores,
)


def f1_by_loop(prediction: str, reference: str) -> float:
    """Token F1 with explicit loops: each predicted token matches at most one unused reference token."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not gold:
        return float(predicted == gold)
    unused = list(gold)
    common = 0
    for token in predicted:
        if token in unused:
            unused.remove(token)
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def test_squad_f1_by_hand():
    # "the North Sea oil" -> [north, sea, oil]; "North Sea" -> [north, sea]: P 2/3, R 1, F1 0.8
    assert squad_f1("the North Sea oil", "North Sea") == pytest.approx(0.8)
    assert squad_exact("The North Sea.", "north sea") == 1.0
    assert squad_f1("", "North Sea") == 0.0 and squad_f1("", "") == 1.0 and squad_f1("a the", "") == 1.0  # only articles: empty
    assert squad_scores("North Sea", ["The Baltic", "the North Sea"]) == {"f1": 100.0, "exact": 100.0}
    assert squad_scores("oil in the North", ["North Sea"]) == pytest.approx({"f1": 40.0, "exact": 0.0})  # P 1/3 R 1/2


def test_squad_f1_equals_a_counting_loop_and_is_symmetric():
    rng = random.Random(0)
    words = ["a", "the", "sea", "Sea,", "oil", "north", "1978", "campaign", "it's"]
    for _ in range(300):
        p = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        r = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        assert squad_f1(p, r) == pytest.approx(f1_by_loop(p, r))
        assert squad_f1(p, r) == pytest.approx(squad_f1(r, p))  # F1 is symmetric
        assert squad_f1(p.upper() + "!", r) == pytest.approx(squad_f1(p, r))  # case and punctuation do not count


def test_drop_scores_by_hand():
    assert drop_scores("7761", ["7761"]) == {"f1": 100.0, "exact": 100.0}
    assert drop_scores("7760", ["7761"]) == {"f1": 0.0, "exact": 0.0}  # numbers must match
    # "Pacific" vs "Pacific Islander": P 1, R 1/2, F1 2/3 (the harness rounds to 2 decimals)
    assert drop_scores("Pacific", ["Asian", "Pacific Islander"]) == pytest.approx({"f1": 67.0, "exact": 0.0})
    assert drop_scores("Asian", ["Asian", "Pacific Islander"])["f1"] == 100.0
