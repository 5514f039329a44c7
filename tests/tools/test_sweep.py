"""Sweep files: every file in sweeps/ validates with W&B's engine and its command accepts the swept keys; broken
files get a message naming the file, the line and the problem before anything trains."""

import re
import textwrap
from pathlib import Path

import pytest
from helpers import ROOT

from lit_instruct.tools.sweep import (
    Sweep,
    SweepFileError,
    expand_command,
    load_sweep,
    run_name,
)

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def preflights(tmp_path_factory):
    """Every sweep file's first proposal and its preflight (the real command line parsed with ``--print_config``, a
    process each), all started together: each is one process, mostly Python start-up, so they share the cores."""
    from concurrent.futures import ThreadPoolExecutor

    sweeps = [Sweep(path, tmp_path_factory.mktemp("sweep") / "out") for path in SWEEP_FILES]

    def check(sweep):
        params = sweep.proposals(1)[0]
        try:
            sweep.preflight(params)
        except SweepFileError as error:
            return params, error
        return params, None

    with ThreadPoolExecutor(max_workers=len(SWEEP_FILES)) as pool:
        return dict(zip(SWEEP_FILES, pool.map(check, sweeps)))


def test_there_are_sweep_files_for_the_study_and_learning_rates():
    names = [f.name for f in SWEEP_FILES]
    assert "alignment_tax_tiny.yaml" in names and "sft_lr_tiny.yaml" in names
    grid = load_sweep(ROOT / "sweeps" / "alignment_tax_tiny.yaml")
    assert {"model.kl.kl_coef", "model.ptx.ptx_coef"} <= set(grid["parameters"])


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_validates_and_its_command_accepts_the_parameters(path, preflights):
    config = load_sweep(path)
    params, error = preflights[path]
    assert set(params) == set(config["parameters"])
    argv = expand_command(config["command"], params)
    for flag, value in zip(argv, argv[1:]):
        if flag == "--config":
            assert (ROOT / value).is_file(), f"{path.name} names {value}, which does not exist"
    assert all(f"--{key}={value}" in argv for key, value in params.items())
    assert error is None, str(error)  # the real command line parsed with --print_config: unknown keys or bad types fail


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


GOOD_COMMAND = """
command:
  - ${env}
  - lit-instruct
  - fit
  - --config
  - configs/ppo/tiny.yaml
  - ${args}
"""


@pytest.mark.parametrize("text, line, words", [
    ("method: grid\nparameters:\n  model.kl.kl_coef:\n    values: [0.01]\ncommand: [${env}, lit-instruct, fit, ${args}]\n",
     5, "block list"),
    ("method: grdi\nparameters:\n  model.kl.kl_coef:\n    values: [0.01]\n" + GOOD_COMMAND, 1, "'grdi' is not one of"),
    ("method: grid\nparameters:\n  model.kl.kl_coef:\n    values: [0.01]\n  model.ptx.ptx_coef:\n    valuess: [1, 2]\n" + GOOD_COMMAND,
     5, "parameter 'model.ptx.ptx_coef' has no valid form"),
    ("method: grid\nparameters:\n  model.kl.kl_coef:\n    distribution: uniform\n    min: 0.0\n    max: 1.0\n" + GOOD_COMMAND,
     1, "Grid search requires"),
    ("method: grid\nparameters:\n  model.kl.kl_coef:\n    values: [0.01]\ncommand:\n  - lit-instruct\n  - fit\n", 5, "${args}"),
], ids=["flow-list-command", "unknown-method", "bad-parameter-form", "grid-of-a-distribution", "no-args-macro"])
def test_a_broken_sweep_file_gets_file_line_and_reason(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(SweepFileError) as error:
        load_sweep(path)
    message = str(error.value)
    assert f"{path}:{line}:" in message and words in message, message


def test_an_unknown_parameter_is_refused_before_any_run(tmp_path, capsys):
    """``lit-instruct sweep`` (its entry point, in this process; the preflight it runs is a process of its own)."""
    from lit_instruct.tools.cli import main

    path = write(tmp_path, "method: grid\nparameters:\n  model.kl.kl_coeff:\n    values: [0.01, 0.1]\n" + GOOD_COMMAND)
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(path), "--out", str(tmp_path / "out")])
    stderr = capsys.readouterr().err + str(exit_.value.code)  # printed, or the message SystemExit carries to the shell
    assert exit_.value.code not in (0, None)
    assert re.search(rf"{re.escape(str(path))}:3: the command rejects the sweep's arguments", stderr), stderr[-2000:]
    assert "kl_coeff" in stderr
    assert not (tmp_path / "out" / "sweep.json").exists()


def test_random_and_bayes_sweeps_need_a_run_budget(tmp_path):
    path = write(tmp_path, "method: random\nparameters:\n  model.kl.kl_coef:\n    distribution: log_uniform_values\n"
                           "    min: 0.001\n    max: 0.1\n" + GOOD_COMMAND)
    with pytest.raises(SystemExit, match="--count"):
        Sweep(path, tmp_path / "out", check=False).run()
    proposed = Sweep(path, tmp_path / "out", count=3, dry_run=True, check=False).run()
    values = [run["params"]["model.kl.kl_coef"] for run in proposed]
    assert len(values) == 3 and all(0.001 <= v <= 0.1 for v in values) and len(set(values)) == 3


def test_the_study_grids_have_a_seed_axis_run_seed_by_seed_in_their_own_folders(tmp_path):
    """seed_everything is a sweep parameter: every (cell, seed) is one run, passed as --seed_everything=N, in a
    folder named after both; offline the grid runs seed by seed, so the first runs cover every cell once."""
    for path in (ROOT / "sweeps" / "alignment_tax_tiny.yaml", ROOT / "sweeps" / "alignment_tax_pythia-1.4b.yaml"):
        config = load_sweep(path)
        seeds = config["parameters"]["seed_everything"]["values"]
        cells = len(config["parameters"]["model.kl.kl_coef"]["values"]) * len(config["parameters"]["model.ptx.ptx_coef"]["values"])
        proposed = Sweep(path, tmp_path / path.stem, dry_run=True, check=False).run()
        assert len(seeds) >= 2 and len(proposed) == cells * len(seeds)
        assert [run["params"]["seed_everything"] for run in proposed] == [s for s in seeds for _ in range(cells)]
        first = {(r["params"]["model.kl.kl_coef"], r["params"]["model.ptx.ptx_coef"]) for r in proposed[:cells]}
        assert len(first) == cells  # the whole grid at the first seed before any second seed
        names = [run["name"] for run in proposed]
        assert len(set(names)) == len(names)
        for run in proposed:
            seed = run["params"]["seed_everything"]
            assert run["name"].endswith(f",seed={seed}") and f"--seed_everything={seed}" in run["command"]


def test_a_resumed_seed_sweep_runs_only_the_missing_cell_seed_pairs(tmp_path):
    """Finished (cell, seed) runs are not run again; a failed one is, first; --count takes the next seed's runs last."""
    path = ROOT / "sweeps" / "alignment_tax_tiny.yaml"
    sweep = Sweep(path, tmp_path, check=False)
    everything = sweep.proposals(None)
    finished, failed = everything[:14], everything[14]
    sweep.runs = [{"name": run_name(i + 1, p), "params": p, "state": "finished", "summary": {}} for i, p in enumerate(finished)]
    sweep.runs.append({"name": run_name(15, failed), "params": failed, "state": "failed"})
    sweep.save()
    rest = Sweep(path, tmp_path, check=False).proposals(None)
    key = lambda p: tuple(sorted(p.items()))
    assert {key(p) for p in rest} == {key(p) for p in everything[14:]} and len(rest) == len(everything) - 14
    assert rest[0] == failed
    assert Sweep(path, tmp_path, check=False).proposals(3) == everything[14:17]


def test_run_names_keep_the_seed_when_cut():
    params = {f"model.group{i}.a_long_parameter_name": 0.123456 for i in range(8)} | {"seed_everything": 12345}
    name = run_name(7, params)
    assert len(name) <= 120 and name.startswith("07-") and name.endswith(",seed=12345")
    assert run_name(1, {"model.kl.kl_coef": 0.02, "seed_everything": 3}) == "01-kl_coef=0.02,seed=3"


def test_a_sweep_folder_of_runs_without_the_seed_axis_is_refused(tmp_path):
    """Runs recorded before the file gained seed_everything are no points of its grid: adding the axis to a folder
    of single-seed runs would mix them in (pooled as an extra seed of code since changed); the sweep says so."""
    path = ROOT / "sweeps" / "alignment_tax_tiny.yaml"
    sweep = Sweep(path, tmp_path, check=False)
    params = {k: v for k, v in sweep.proposals(1)[0].items() if k != "seed_everything"}
    sweep.runs = [{"name": run_name(1, params), "params": params, "state": "finished", "summary": {}}]
    sweep.save()
    with pytest.raises(SystemExit, match="swept over other parameters"):
        Sweep(path, tmp_path, check=False)
