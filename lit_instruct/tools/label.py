"""``lit-instruct label``: rank each row's sampled completions with a judge reward model, into the ranking format the
reward stage trains on: the second step of the paper's iterated loop, and Gao et al.'s synthetic "gold" labels.

    lit-instruct label runs/loop/samples.jsonl --judge runs/pipeline/judge/export --out runs/loop/labels.jsonl

Reads ``{"prompt", "completions": [...]}`` rows (what ``lit-instruct sample`` writes, with ``"ended"``: a completion
that did not end with EOS is scored without it, as PPO scores a cut response, and the written row keeps ``"ended"``
so that the reward stage trains on it without EOS too; any other field is ignored),
writes ``{"prompt", "completions", "ranking", "scores"}`` rows (``ranking[i]``: the rank of ``completions[i]``, 0 = best,
equal ranks tie; ``scores[i]``: the judge's normalised score) and ``OUT.meta.json`` with the judge, the settings, the
counts and the sampling metadata of the input (its ``.meta.json``, when there is one); the counts are printed too.

- **Ties** (``--tie-margin M``, default 0): completions are sorted by score, best first, and each one ties with the one
  before it when their scores differ by at most M; ties chain, so two completions get different ranks exactly when
  some gap of more than M lies between their scores in the sorted order (single linkage: a tied group may span more
  than M). Ranks are dense (0, 1, 2, ...). Identical completions are scored once, so they always tie; with M = 0 only
  equal scores tie.
- **Rows dropped**: blank completions (a response that ended at once) are left out; a row left with fewer than 2
  completions, or whose completions all tie (the reward stage refuses such rows), is dropped; both are counted.
- **Label noise** (``--noise RATE``, as in Coste et al. 2023, who flip each preference label with probability 0.25):
  each written row's ranking is reversed (rank r -> max rank - r; ties stay tied) with probability RATE, independently
  per row, drawn from ``random.Random(--seed)`` in file order. Every comparison a row implies is then flipped with
  probability RATE: for K = 2 that is Coste et al.'s per-label flip; for K > 2 a row's comparisons flip together (a
  ranking cannot hold independent flips, which need not be transitive). Rows get ``"flipped": true|false`` when RATE
  > 0; their ``scores`` stay the judge's.
- Every row is checked before the judge loads (``FILE:LINE: problem``), and a ``--judge`` that is not a reward model
  (a lit-instruct reward export or a Hugging Face sequence-classification directory with one label) is refused.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Optional

import torch

from lit_instruct.data.problems import DataError
from lit_instruct.data.prompt_format import check_prompt_field
from lit_instruct.data.records import check_range, read_rows
from lit_instruct.models.causal_lm import check_source
from lit_instruct.models.reward_model import RewardModel, is_reward_model_dir
from lit_instruct.tools.sample import meta_path, write_jsonl

TIE_RULE = ("sorted by score, best first; a completion ties with the one before it when their scores differ by at most "
            "tie_margin (ties chain); dense ranks, 0 = best")
NOISE_RULE = "each row's ranking reversed with probability noise, independently per row (random.Random(seed), file order)"


def rank_scores(scores: list[float], margin: float = 0.0) -> list[int]:
    """Dense ranks of one prompt's completions, 0 = best (highest score), with ties chained at ``margin``: sorted
    best first, a completion gets the rank of the one before it when ``previous - score <= margin``, else the next."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    for previous, current in zip(order, order[1:]):
        ranks[current] = ranks[previous] + (scores[previous] - scores[current] > margin)
    return ranks


def reverse_ranking(ranks: list[int]) -> list[int]:
    """The ranking turned upside down: rank r -> max rank - r (the best becomes the worst; ties stay tied)."""
    top = max(ranks)
    return [top - r for r in ranks]


def add_label_noise(rankings: list[list[int]], rate: float, rng: random.Random) -> tuple[list[list[int]], list[bool]]:
    """Each ranking reversed with probability ``rate`` (one ``rng.random()`` per ranking, in order): every comparison
    it implies is then flipped with probability ``rate``. Returns the rankings and which were reversed."""
    flipped = [rng.random() < rate for _ in rankings]
    return [reverse_ranking(r) if f else list(r) for r, f in zip(rankings, flipped)], flipped


def check_sampled_row(row: dict) -> Optional[str]:
    """The problem with a row to label (``prompt``; ``completions``, a list of at least 2 strings), or ``None``."""
    problem = check_prompt_field(row)
    if problem:
        return problem
    completions = row.get("completions")
    if not isinstance(completions, list):
        return "missing field 'completions' (a list of strings)"
    if len(completions) < 2:
        return f"a ranking needs at least 2 completions, got {len(completions)}"
    for i, c in enumerate(completions):
        if not isinstance(c, str):
            return f"completions[{i}] must be a string, got {type(c).__name__}"
    return check_ended(row)


def check_ended(row: dict) -> Optional[str]:
    """The problem with a row's optional ``ended`` (one bool per completion, as ``lit-instruct sample`` writes), or ``None``."""
    ended = row.get("ended")
    if ended is None:
        return None
    if not isinstance(ended, list) or len(ended) != len(row["completions"]) or not all(isinstance(e, bool) for e in ended):
        return f"field 'ended' must be a list of {len(row['completions'])} booleans (one per completion), got {ended!r}"
    return None


def check_judge(judge: str) -> None:
    """Refuse a ``--judge`` that is missing or not a reward model, without loading anything."""
    check_source(judge)
    if not is_reward_model_dir(judge):
        raise ValueError(f"--judge {judge}: not a reward model: expected a lit-instruct reward export or a Hugging Face "
                         "...ForSequenceClassification directory with num_labels=1 (a policy export is not one)")


def load_judge(judge: str, device: Optional[str] = None) -> RewardModel:
    """The judge reward model (eval mode, on ``device``: CUDA when there is one); a path that is not a reward model
    is refused before anything loads. Its normalisation is optional: only the order of its scores matters (and the
    scale of ``--tie-margin``)."""
    check_judge(judge)
    model = RewardModel.from_pretrained(judge, require_normalization=False)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def score_rows(judge: RewardModel, rows: list[tuple], batch_size: int = 16, progress: bool = True) -> list[list[float]]:
    """The judge's score of every completion of every ``(prompt, completions)`` or ``(prompt, completions, ended)``
    row (``ended``: per completion, whether the sampled response ended with EOS; one that did not is scored without
    EOS, as PPO scores it); identical completions of a row are scored once (and so score the same)."""
    from tqdm.auto import tqdm

    pairs, index = [], []  # (prompt, text, ended) to score; per row, per completion, its pair
    for prompt, completions, *rest in rows:
        ended = rest[0] if rest and rest[0] is not None else [True] * len(completions)
        seen: dict[tuple, int] = {}
        for key in zip(completions, ended):
            if key not in seen:
                seen[key] = len(pairs)
                pairs.append((prompt, *key))
        index.append([seen[key] for key in zip(completions, ended)])
    scores: list[float] = []
    with tqdm(total=len(pairs), desc="score", unit="completion", disable=not progress) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            scores += judge.score([p for p, _, _ in chunk], [c for _, c, _ in chunk], batch_size=batch_size,
                                  ended=[e for *_, e in chunk]).tolist()
            bar.update(len(chunk))
    return [[scores[i] for i in row] for row in index]


def label_file(file: str, judge: str, out: str | Path, *, tie_margin: float = 0.0, noise: float = 0.0, seed: int = 0,
               batch_size: int = 16, device: Optional[str] = None, progress: bool = True) -> dict:
    """Rank the completions of ``file``'s rows by the ``judge``'s scores (ties within ``tie_margin``, chained), reverse
    a ``noise`` share of the rankings, and write the reward stage's rows to ``out`` and the settings and counts to
    ``OUT.meta.json`` (see the module docstring). Returns that metadata."""
    check_range("--tie-margin", tie_margin, 0)
    check_range("--noise", noise, 0)
    check_range("--batch-size", batch_size, 1)
    if noise > 1:
        raise ValueError(f"--noise must be a probability in [0, 1], got {noise}")
    out = Path(out)
    if str(file) == str(out) or (Path(file).exists() and out.exists() and Path(file).resolve() == out.resolve()):
        raise ValueError(f"--out {out} is the input file; write the labels elsewhere")
    check_judge(judge)
    rows = read_rows(file, check_sampled_row)
    settings = {"file": str(file), "judge": str(judge), "tie_margin": tie_margin, "noise": noise, "seed": seed,
                "batch_size": batch_size}
    print("lit-instruct label: " + ", ".join(f"{name} {value}" for name, value in settings.items()), flush=True)
    start = time.perf_counter()
    model = load_judge(judge, device)

    blank = sum(not c.strip() for _, row in rows for c in row["completions"])
    kept = []  # (prompt, completions, ended), blank completions left out
    for _, row in rows:
        pairs = [(c, e) for c, e in zip(row["completions"], row.get("ended") or [True] * len(row["completions"])) if c.strip()]
        kept.append((row["prompt"], [c for c, _ in pairs], [e for _, e in pairs] if "ended" in row else None))
    too_few = sum(len(c) < 2 for _, c, _ in kept)
    kept = [item for item in kept if len(item[1]) >= 2]
    scored = score_rows(model, kept, batch_size, progress) if kept else []
    labelled = [(p, c, e, s, rank_scores(s, tie_margin)) for (p, c, e), s in zip(kept, scored)]
    all_tied = sum(len(set(r)) == 1 for *_, r in labelled)
    labelled = [item for item in labelled if len(set(item[4])) > 1]
    rankings, flipped = add_label_noise([r for *_, r in labelled], noise, random.Random(seed))
    written = [{"prompt": p, "completions": c, **({"ended": e} if e is not None else {}), "ranking": r, "scores": s,
                **({"flipped": f} if noise > 0 else {})} for (p, c, e, s, _), r, f in zip(labelled, rankings, flipped)]
    counts = {"rows_in": len(rows), "rows_written": len(written), "rows_all_tied": all_tied, "rows_too_few_completions": too_few,
              "completions_blank": blank, "rows_flipped": sum(flipped)}
    if all_tied:
        print(f"dropped {all_tied} row(s) whose completions all tie at --tie-margin {tie_margin} (the reward stage refuses them)")
    if too_few:
        print(f"dropped {too_few} row(s) left with fewer than 2 completions ({blank} blank completion(s) left out)")
    if not written:
        raise DataError(f"{file}: no row left to write ({counts}); a smaller --tie-margin keeps rows whose completions score apart")
    write_jsonl(out, written)
    sampled = meta_path(file)
    meta = {"tool": "lit-instruct label", **settings, "ties": TIE_RULE, "noise_rule": NOISE_RULE,
            "judge_normalization": model.normalization, **counts, "seconds": round(time.perf_counter() - start, 2),
            "out": str(out), "sampled": json.loads(sampled.read_text()) if sampled.is_file() else None}
    meta_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {len(written)} ranked rows to {out} ({sum(flipped)} reversed by noise), settings in {meta_path(out)} "
          f"({meta['seconds']} s)", flush=True)
    return meta


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-instruct label", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="{\"prompt\", \"completions\"} rows (lit-instruct sample's output)")
    parser.add_argument("--judge", required=True, help="the reward export (or HF sequence-classification directory) that ranks them")
    parser.add_argument("--out", required=True, help="JSON Lines in the reward stage's ranking format; settings in OUT.meta.json")
    parser.add_argument("--tie-margin", type=float, default=0.0, help="scores at most this far apart tie (chained; default 0: equal scores)")
    parser.add_argument("--noise", type=float, default=0.0, help="probability that a row's ranking is reversed (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--batch-size", type=int, default=16, help="completions per judge forward pass (default 16)")
    args = parser.parse_args(argv)
    label_file(args.file, args.judge, args.out, tie_margin=args.tie_margin, noise=args.noise, seed=args.seed,
               batch_size=args.batch_size)
