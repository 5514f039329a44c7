"""Over-optimisation (Gao et al. 2022): ``lit-instruct best-of-n`` against a proxy scored by a gold model, and the
study's gold-vs-proxy curves and fits on fabricated run folders (the estimator and the fits themselves are tested
against brute force and known coefficients in test_objectives.py)."""

import csv
import json
import math

import pytest
from helpers import gained_reward_model, write_jsonl

import lit_instruct.tools.study as study_tool
from lit_instruct import RewardModel
from lit_instruct.data.problems import DataError
from lit_instruct.objectives import kl_best_of_n
from lit_instruct.tools.best_of_n import best_of_n
from lit_instruct.tools.cli import main as cli_main

SAMPLES = [
    {"prompt": "Say hello.", "completions": ["Hello!", "Goodbye, and never come back.", "hi there friend", "", "Hello!"]},
    {"prompt": "Name a colour.", "completions": ["Blue.", "The colour of the sky at noon is blue.", "7", "Green"]},
    {"prompt": [{"role": "user", "content": "Count to three."}], "completions": ["1 2 3", "one, two, three", "3", "1, 2, 3!"]},
]


def test_best_of_n_picks_by_the_proxy_and_scores_the_pick_by_gold(tiny_exports, tmp_path, capsys):
    gold = gained_reward_model(tiny_exports / "sft", tmp_path / "gold")
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES)
    proxy = str(tiny_exports / "rm")
    result = best_of_n(samples, str(gold), [proxy, str(gold)], tmp_path / "bon.json", progress=False)
    assert json.loads((tmp_path / "bon.json").read_text()) == json.loads(json.dumps(result))
    assert result["k"] == 4 and result["ns"] == [1, 2, 4] and result["prompts"] == 3
    assert "each uses its first 4" in capsys.readouterr().out  # the 5-sample row is cut to the common K
    by_proxy, by_gold = result["curves"]
    # by hand, at n = K: the proxy's favourite of each prompt's 4 samples, scored by gold; at n = 1: the plain means
    proxy_rm, gold_rm = RewardModel.from_pretrained(proxy), RewardModel.from_pretrained(gold)
    picked, means = [], []
    for row in SAMPLES:
        completions = row["completions"][:4]
        p = proxy_rm.score([row["prompt"]] * 4, completions).tolist()
        g = gold_rm.score([row["prompt"]] * 4, completions).tolist()
        picked.append(g[max(range(4), key=lambda i: p[i])])
        means.append(sum(g) / 4)
    points = {p["n"]: p for p in by_proxy["points"]}
    assert points[4]["gold_score"] == pytest.approx(sum(picked) / 3, abs=1e-5)
    assert points[1]["gold_score"] == pytest.approx(sum(means) / 3, abs=1e-5)
    for n, p in points.items():
        assert p["kl"] == pytest.approx(kl_best_of_n(n)) and p["d"] == pytest.approx(math.sqrt(kl_best_of_n(n)))
    assert points[4]["proxy_score"] >= points[2]["proxy_score"] >= points[1]["proxy_score"]  # the proxy's own max rises
    # a proxy that is the gold model: the pick's gold score is the proxy score
    for p in by_gold["points"]:
        assert p["gold_score"] == pytest.approx(p["proxy_score"], abs=1e-9)
    assert set(by_proxy["fit"]) == {"gold", "proxy"} and set(by_proxy["fit"]["gold"]) == {"a", "b", "d_peak", "kl_peak"}


def test_a_response_that_never_ended_is_scored_without_eos_as_ppo_scores_it(tiny_exports):
    """``ended[i]`` False: no EOS appended, the reward read at the response's last token, as the rollout's scoring
    reads a cut response; True (or no flags): EOS appended, as the reward stage trains."""
    import torch

    from lit_instruct.data.prompt_format import encode_pair

    rm = RewardModel.from_pretrained(tiny_exports / "rm")
    prompts, completions = ["Say hello.", "Say hello."], ["Hello there, my friend", "Hello there, my friend"]
    scores = rm.score(prompts, completions, ended=[True, False])
    assert torch.equal(scores[:1], rm.score(prompts[:1], completions[:1]))  # default: ended
    fmt = rm.format()
    ids, _ = encode_pair(rm.tokenizer, rm.tokenizer(fmt.prompt("Say hello."), add_special_tokens=False)["input_ids"],
                         completions[0], 512, fmt, eos=False)
    assert ids[-1] != rm.tokenizer.eos_token_id
    direct = rm(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    torch.testing.assert_close(scores[1:], direct)
    assert scores[0] != scores[1]
    with pytest.raises(ValueError, match="ended flags"):
        rm.score(prompts, completions, ended=[True])


def test_the_reward_stage_reads_a_cut_completion_without_eos(tiny_exports, tmp_path, tokenizer):
    """Labelled rows keep ``ended``: the reward stage encodes a completion sampled without EOS without it, and
    refuses an ``ended`` that does not match the completions."""
    from lit_instruct import RewardDataModule
    from lit_instruct.data.rankings import check_ranked_row

    row = {"prompt": "Say hello.", "completions": ["Hello there", "Goodbye"], "ranking": [0, 1], "ended": [False, True]}
    data = RewardDataModule(train_file=write_jsonl(tmp_path / "r.jsonl", [row]), max_length=64)
    data.connect(tokenizer, 64)
    from lit_instruct.data.module import Stats

    encoded = data.encode(row, data.prompt_format(), Stats())
    first, second = encoded["input_ids"]
    assert first[-1] != tokenizer.eos_token_id and second[-1] == tokenizer.eos_token_id
    assert "'ended' must be a list of 2 booleans" in check_ranked_row({**row, "ended": [True]})
    assert check_ranked_row(row) is None


def test_best_of_n_refuses_bad_input_before_loading(tiny_exports, tmp_path, capsys, monkeypatch):
    import lit_instruct.tools.best_of_n as tool

    monkeypatch.setattr(tool, "load_judge", lambda *a, **k: pytest.fail("loaded a model for bad input"))
    rm = str(tiny_exports / "rm")
    bad = write_jsonl(tmp_path / "bad.jsonl", [SAMPLES[0], {"prompt": "no samples"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*completions"):
        best_of_n(bad, rm, [rm], tmp_path / "o.json")
    bad = write_jsonl(tmp_path / "bad_ended.jsonl", [{**SAMPLES[1], "ended": [True, False]}])
    with pytest.raises(DataError, match=r"bad_ended.jsonl:1: .*'ended' must be a list of 4 booleans"):
        best_of_n(bad, rm, [rm], tmp_path / "o.json")
    good = write_jsonl(tmp_path / "good.jsonl", SAMPLES)
    for flags, expected in ((["--n", "8"], "--n must lie in [1, K=4]"),
                            (["--gold", str(tiny_exports / "sft")], "not a reward model")):
        args = ["best-of-n", good, "--proxy", rm, "--out", str(tmp_path / "o.json"), *flags]
        if "--gold" not in flags:
            args += ["--gold", rm]
        with pytest.raises(SystemExit):
            cli_main(args)
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


A_RL, B_RL, A_BON, B_BON = 0.9, 0.3, 1.2, 0.5


def fake_gold_run(folder, proxy: str, seed: int, ds, offset: float):
    """A finished PPO run against ``proxy`` with a gold model, as the study reads it: its export metadata, the
    config.yaml LightningCLI saves and a CSV log whose validations lie on Gao's RL form (plus ``offset``, the initial
    policy's gold score)."""
    (folder / "export").mkdir(parents=True)
    (folder / "csv" / "version_0").mkdir(parents=True)
    metrics = {"val/score": 0.0, "val/kl": ds[-1] ** 2, "val/pretrain_loss": 5.0, "val/response_length": 9.0,
               "val/gold_score": 0.0, "val/reward_model_score": 0.0, "val/sqrt_kl": ds[-1]}
    meta = {"stage": "ppo", "hparams": {"kl": {"kl_coef": 0.0}, "ptx": {"ptx_coef": 0.0}}, "metrics": metrics,
            "reward_model": proxy}
    (folder / "export" / "lit_instruct.json").write_text(json.dumps(meta))
    (folder / "config.yaml").write_text(
        f"seed_everything: {seed}\nmodel:\n  init_args:\n    policy_name_or_path: sft\n    reward_model_path: {proxy}\n"
        "    gold_path: gold\ndata:\n  init_args: {}\n")
    with (folder / "csv" / "version_0" / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "train/loss", "val/sqrt_kl", "val/gold_score", "val/reward_model_score"])
        writer.writeheader()
        for step, d in enumerate(ds):
            writer.writerow({"step": 10 * step, "train/loss": 1.0})  # a training row: no point
            writer.writerow({"step": 10 * step + 9, "val/sqrt_kl": d, "val/gold_score": offset + d * (A_RL - B_RL * math.log(d)),
                             "val/reward_model_score": 0.5 + 2 * d})


def test_the_study_draws_and_fits_gold_and_proxy_for_rl_and_best_of_n(tmp_path, monkeypatch):
    runs = tmp_path / "overopt"
    fake_gold_run(runs / "ppo-proxy-a-seed1", "proxies/a/export", 1, [0.2, 0.8, 1.5, 3.0], offset=0.2)
    fake_gold_run(runs / "ppo-proxy-a-seed2", "proxies/a/export", 2, [0.5, 1.1, 2.2], offset=0.2)
    ns = [1, 2, 4, 8, 16]
    points = [{"n": n, "kl": kl_best_of_n(n), "d": math.sqrt(kl_best_of_n(n)), "proxy_score": 0.3 + math.sqrt(kl_best_of_n(n)),
               "gold_score": -0.1 + math.sqrt(kl_best_of_n(n)) * (A_BON - B_BON * math.sqrt(kl_best_of_n(n)))} for n in ns]
    (runs / "bon.json").write_text(json.dumps({"tool": "lit-instruct best-of-n", "k": 16, "prompts": 20, "curves": [
        {"proxy": "proxies/a/export", "points": points, "fit": {"gold": {"a": A_BON, "b": B_BON, "d_peak": 1.2, "kl_peak": 1.44}}}]}))
    calls = []

    def measure(model_args, data_args, *, policy, reference, reward_model, **kwargs):
        calls.append((policy, reward_model, model_args["gold_path"]))
        return {"score": 0.4, "kl": 0.0, "pretrain_loss": 5.0, "response_length": 9.0, "reward_model_score": 0.5, "gold_score": 0.2}

    monkeypatch.setattr(study_tool, "measure_policy", measure)
    out = tmp_path / "docs"
    result = study_tool.study(runs, out)
    assert calls == [("sft", "proxies/a/export", "gold")]  # the initial policy, once per proxy, with the run's gold
    (rl,), (bon,) = result["rl"], result["best_of_n"]
    assert len(rl["runs"]) == 2 and sum(len(r["points"]) for r in rl["runs"]) == 7
    assert rl["fit"]["a"] == pytest.approx(A_RL, rel=1e-9) and rl["fit"]["b"] == pytest.approx(B_RL, rel=1e-9)
    assert rl["fit"]["kl_peak"] == pytest.approx(math.exp(A_RL / B_RL - 1) ** 2)
    first = rl["runs"][0]["points"][0]
    assert first["gold_gain"] == pytest.approx(first["gold_score"] - 0.2) and first["proxy_gain"] == pytest.approx(0.4)
    assert rl["best_observed"]["gold_gain"] == pytest.approx(max(d * (A_RL - B_RL * math.log(d)) for d in (0.2, 0.8, 1.5, 3.0, 0.5, 1.1, 2.2)))
    assert bon["fit"]["a"] == A_BON and bon["points"][0]["gold_gain"] == 0.0
    assert bon["points"][-1]["proxy_gain"] == pytest.approx(points[-1]["d"])
    assert (out / "overoptimization.png").stat().st_size > 10_000
    md = (out / "overoptimization.md").read_text()
    assert "| RL (2 run(s)) | a | 7 | +0.900 | +0.3000 |" in md and "| best-of-n (K 16, 20 prompts) | a | 5 | +1.200 | +0.5000 |" in md
    study_tool.study(runs, out)  # the initial policy's measurement is cached
    assert len(calls) == 1


def test_a_fit_that_starts_downward_reports_no_peak():
    """RL's form with a <= 0 only rises over a sliver above d = 0: no peak is reported, and none for b <= 0."""
    from lit_instruct.tools.overoptimization import _fit_cells

    assert "falls from the start" in _fit_cells({"a": -0.3, "b": 0.15, "d_peak": 0.05, "kl_peak": 0.0026})
    assert "never (b <= 0)" in _fit_cells({"a": 0.5, "b": -0.1, "d_peak": math.inf, "kl_peak": math.inf})
    assert "| 1.44 |" in _fit_cells({"a": 1.2, "b": 0.5, "d_peak": 1.2, "kl_peak": 1.44})
