"""``lit-instruct best-of-n``: best-of-n sampling against proxy reward models, scored by a gold one (Gao et al. 2022).

    lit-instruct sample runs/pipeline/sft/export --prompts bundled:prompts.jsonl --split val --k 16 --out runs/overopt/bon_samples.jsonl
    lit-instruct best-of-n runs/overopt/bon_samples.jsonl --gold runs/pipeline/judge/export \\
        --proxy runs/overopt/proxy-400/export --proxy runs/overopt/proxy-100/export --out runs/overopt/best_of_n.json

Reads ``{"prompt", "completions": [...]}`` rows (``lit-instruct sample``'s output: K samples of the initial policy per
prompt), scores every completion with the gold model and with each proxy, and for each n gives:

- ``proxy_score``: the expected proxy score of the best of n (by the proxy), and ``gold_score``: the expected gold score
  of that same pick, both by the unbiased estimator over all n-subsets of a prompt's K samples
  (:func:`~lit_instruct.objectives.best_of_n_expected`; ``gold`` with ``key=proxy``), averaged over prompts, each with
  its standard error over prompts (``*_sem``);
- ``kl = log n - (n - 1) / n`` (:func:`~lit_instruct.objectives.kl_best_of_n`, nats) and ``d = sqrt(kl)``;
- the fit of Gao et al.'s best-of-n form ``R(d) = d (a - b d)`` to the gold and to the proxy score less its n = 1 value,
  with the d and the KL where the fitted gold score peaks.

K is the smallest number of completions of any row (a row with more uses its first K: the samples are independent, so
the estimate stays unbiased); n runs over the powers of 2 up to K, and K (``--n`` chooses). Blank completions are
kept: a response that ended at once is one of the policy's samples. A completion the sampler records as not ended
(``"ended"``) is scored without EOS, as PPO scores a cut response. Identical completions of a row are scored once.
``lit-instruct study`` draws the file beside the RL runs' curves when it lies in the study's folder.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from lit_instruct.data.prompt_format import check_prompt_field
from lit_instruct.data.records import check_range, read_rows
from lit_instruct.objectives import best_of_n_expected, fit_best_of_n, kl_best_of_n
from lit_instruct.tools.label import check_ended, check_judge, load_judge, score_rows
from lit_instruct.tools.sample import meta_path

TOOL = "lit-instruct best-of-n"


def check_samples_row(row: dict) -> Optional[str]:
    """The problem with a row of samples (``prompt``; ``completions``, a non-empty list of strings), or ``None``."""
    problem = check_prompt_field(row)
    if problem:
        return problem
    completions = row.get("completions")
    if not isinstance(completions, list) or not completions:
        return "missing field 'completions' (a non-empty list of strings: the policy's samples of this prompt)"
    bad = next((i for i, c in enumerate(completions) if not isinstance(c, str)), None)
    return check_ended(row) if bad is None else f"completions[{bad}] must be a string, got {type(completions[bad]).__name__}"


def default_ns(k: int) -> list[int]:
    """1, 2, 4, ... up to ``k``, and ``k``."""
    return sorted({2**i for i in range(int(math.log2(k)) + 1)} | {k})


def peak_text(fit: dict) -> str:
    """Where a fitted gold curve peaks, in words: the KL in nats, or why there is none."""
    if fit["a"] <= 0:  # the fitted curve starts downward: its only "peak" is a sliver above d = 0
        return "none: falls from the start (a <= 0)"
    return "never (b <= 0)" if math.isinf(fit["kl_peak"]) else f"{fit['kl_peak']:.3g}"


def mean_and_sem(values: torch.Tensor) -> tuple[float, float]:
    """The mean over prompts and its standard error (0 for a single prompt)."""
    m = values.numel()
    return float(values.mean()), float(values.std(unbiased=True) / math.sqrt(m)) if m > 1 else 0.0


def best_of_n_curve(proxy: torch.Tensor, gold: torch.Tensor, ns: list[int]) -> dict:
    """Best-of-n by ``proxy`` scored by ``gold`` (both (prompts, K)) at each n: the points and the fits."""
    points = []
    for n in ns:
        proxy_mean, proxy_sem = mean_and_sem(best_of_n_expected(proxy, n))
        gold_mean, gold_sem = mean_and_sem(best_of_n_expected(gold, n, key=proxy))
        kl = kl_best_of_n(n)
        points.append({"n": n, "kl": kl, "d": math.sqrt(kl), "proxy_score": proxy_mean, "proxy_sem": proxy_sem,
                       "gold_score": gold_mean, "gold_sem": gold_sem})
    fits = {}
    if len(points) >= 3:  # two coefficients: at least two points past n = 1 (which is d = 0, R = 0 by construction)
        d = [p["d"] for p in points]
        for name in ("gold", "proxy"):
            start = float((gold if name == "gold" else proxy).mean())  # n = 1: the initial policy's mean score
            fits[name] = fit_best_of_n(d, [p[f"{name}_score"] - start for p in points])._asdict()
    return {"points": points, "fit": fits}


def best_of_n(samples: str, gold: str, proxies: list[str], out: str | Path, *, ns: Optional[list[int]] = None,
              batch_size: int = 16, device: Optional[str] = None, progress: bool = True) -> dict:
    """Score ``samples`` with ``gold`` and every proxy, compute the best-of-n curves, write ``out`` (JSON) and return it."""
    check_range("--batch-size", batch_size, 1)
    if not proxies:
        raise ValueError("best-of-n needs at least one --proxy reward model")
    for path in [gold, *proxies]:
        check_judge(path)
    rows = [row for _, row in read_rows(samples, check_samples_row)]
    k = min(len(row["completions"]) for row in rows)
    ns = sorted(set(ns)) if ns else default_ns(k)
    if ns[0] < 1 or ns[-1] > k:
        raise ValueError(f"--n must lie in [1, K={k}] (K: the fewest completions of any row of {samples}), got {ns}")
    if any(len(row["completions"]) > k for row in rows):
        print(f"{samples}: rows have between {k} and {max(len(r['completions']) for r in rows)} completions; each uses its first {k}")
    pairs = [(row["prompt"], row["completions"][:k], row["ended"][:k] if row.get("ended") else None) for row in rows]
    start = time.perf_counter()
    scores = {path: torch.tensor(score_rows(load_judge(path, device), pairs, batch_size, progress), dtype=torch.float64)
              for path in dict.fromkeys([gold, *proxies])}
    sampled = meta_path(samples)
    result = {"tool": TOOL, "samples": str(samples), "sampled": json.loads(sampled.read_text()) if sampled.is_file() else None,
              "gold": str(gold), "k": k, "prompts": len(rows), "ns": ns,
              "curves": [{"proxy": str(p), **best_of_n_curve(scores[p], scores[gold], ns)} for p in proxies],
              "seconds": round(time.perf_counter() - start, 2)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for curve in result["curves"]:
        print(f"proxy {curve['proxy']}:")
        print("      n    KL (nats)   proxy         gold")
        for p in curve["points"]:
            print(f"  {p['n']:5d}  {p['kl']:9.3f}   {p['proxy_score']:+.3f}±{p['proxy_sem']:.3f}  {p['gold_score']:+.3f}±{p['gold_sem']:.3f}")
        if "gold" in curve["fit"]:
            f = curve["fit"]["gold"]
            print(f"  gold fit d(a - b d): a {f['a']:+.4g}, b {f['b']:+.4g}, fitted peak at KL (nats): {peak_text(f)}")
    print(f"wrote {out} ({len(rows)} prompts, K {k}, {result['seconds']} s)")
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", help="{\"prompt\", \"completions\"} rows: K samples of the initial policy per prompt (lit-instruct sample)")
    parser.add_argument("--gold", required=True, help="the gold reward model (its labels trained the proxies)")
    parser.add_argument("--proxy", action="append", required=True, help="a proxy reward model that picks the best of n; repeat per proxy")
    parser.add_argument("--out", required=True, help="JSON: per proxy, the points (n, KL, proxy and gold score) and the fits")
    parser.add_argument("--n", type=int, nargs="+", help="the n to evaluate (default: powers of 2 up to K, and K)")
    parser.add_argument("--batch-size", type=int, default=16, help="completions per forward pass (default 16)")
    args = parser.parse_args(argv)
    best_of_n(args.samples, args.gold, args.proxy, args.out, ns=args.n, batch_size=args.batch_size)
