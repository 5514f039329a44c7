"""``lit-instruct sweep FILE``: run a W&B sweep file on this machine, offline, with W&B's own sweep engine.

The same file works online (``wandb sweep FILE`` then ``wandb agent ID``). Offline, the ``sweeps`` package (the
engine behind W&B's server) validates the file and proposes the grid / random / bayes runs; each run is the file's
``command`` with ``${args}`` expanded exactly as ``wandb agent`` expands it (``--model.kl.kl_coef=0.02``), plus an
overlay (``--config <run>/sweep_overlay.yaml``, inserted before ``${args}``) that gives the run its own folder,
export, checkpoints, CSV log and an offline W&B run grouped under the sweep's name.

``<out>/sweep.json`` records every run (parameters, command, exit status, wall time, final metrics); running the
same file with the same ``--out`` again skips the finished runs and carries on. ``lit-instruct study <out>`` draws
the ablation plots from it.

Seeds are a parameter like any other: ``seed_everything: {values: [1, 2, 3]}`` (LightningCLI's top-level key) runs
every cell of the grid once per seed, as ``--seed_everything=N``, in folders named ``...,seed=N``; a finished
(cell, seed) is not run again. Offline, a grid runs seed by seed (the whole grid at the first seed, then at the
next), so a sweep stopped early or given ``--count`` has covered every cell. A folder whose runs were swept over
other parameters (from before a seed axis was added, say) is refused rather than mixed in.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from lit_instruct.tools.configs import run_overlay

ARGS_MACRO = "${args}"

#: LightningCLI's seed key: as a sweep parameter, the seed axis.
SEED_KEY = "seed_everything"


class SweepFileError(ValueError):
    """A sweep file that cannot run; the message names the file, the line and what is wrong."""


def _require_sweeps():
    try:
        with warnings.catch_warnings():  # sweeps 0.3 declares a pydantic-v1 config key that pydantic 2 warns about
            warnings.simplefilter("ignore", UserWarning)
            import sweeps
    except ImportError as error:  # pragma: no cover - the package is a dependency of the [sweep] extra
        raise SystemExit("lit-instruct sweep needs W&B's sweep engine: pip install 'lit-instruct[sweep]'") from error
    return sweeps


def _node_line(root: yaml.Node | None, path: list) -> int | None:
    """1-based line of the YAML node at ``path`` (keys and list indices), or of its deepest existing parent."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in path:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(key)]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_sweep(path: str | Path) -> dict:
    """Read and validate a sweep file; raise :class:`SweepFileError` naming ``FILE:LINE`` for each problem."""
    path = Path(path)
    if not path.is_file():
        raise SweepFileError(f"{path}: no such sweep file")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        hint = ""
        if "${" in text and "[" in text:
            hint = " (write `command:` as a block list, one `- item` per line: `${env}` inside a flow list `[...]` is not valid YAML)"
        raise SweepFileError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}{hint}") from None
    if not isinstance(config, dict):
        raise SweepFileError(f"{path}:1: a sweep file is a mapping (method, metric, parameters, command), got {type(config).__name__}")

    sweeps = _require_sweeps()
    from sweeps.config.cfg import validator

    problems = []
    for error in validator.iter_errors(config):
        keys = list(error.absolute_path)
        message = error.message
        if "is not valid under any of the given schemas" in message and len(keys) == 2 and keys[0] == "parameters":
            message = (f"parameter {keys[1]!r} has no valid form: {error.instance!r}; use `value: V`, `values: [..]`, "
                       "or `distribution:` with `min`/`max` (W&B sweep parameter syntax)")
        problems.append(f"{path}:{_node_line(root, keys)}: {'.'.join(map(str, keys)) or 'sweep'}: {message}")
    if not problems:  # the engine's own checks beyond the schema (they carry no location)
        for message in sweeps.schema_violations_from_proposed_config(config):
            problems.append(f"{path}: {message}")
    command = config.get("command")
    if command is None:
        problems.append(f"{path}:1: command: missing; lit-instruct sweep runs the file's command, for example\n"
                        "  command:\n    - ${env}\n    - lit-instruct\n    - fit\n    - --config\n    - configs/ppo/tiny.yaml\n    - ${args}")
    elif not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        problems.append(f"{path}:{_node_line(root, ['command'])}: command: must be a list of strings")
    elif ARGS_MACRO not in command:
        problems.append(f"{path}:{_node_line(root, ['command'])}: command: needs the item `{ARGS_MACRO}` "
                        "(each run's parameters as --key=value flags, which LightningCLI reads)")
    if not problems and config.get("method") == "grid":
        try:
            sweeps.next_run(config, [])
        except ValueError as error:
            problems.append(f"{path}:{_node_line(root, ['method'])}: method: {error}")
    if problems:
        raise SweepFileError("invalid sweep file:\n  " + "\n  ".join(problems))
    return config


def expand_command(command: list, params: dict[str, Any], overlay: Path | None = None) -> list[str]:
    """The run's argv: ``${args}`` as ``wandb agent`` expands it (W&B's own helper), ``${envvar:NAME}`` macros,
    ``lit-instruct`` as this interpreter's module, and the overlay config just before the parameters."""
    from wandb.sdk.launch.sweeps.utils import (
        create_sweep_command,
        create_sweep_command_args,
    )

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(env=[], interpreter=[sys.executable], program=[])
    argv: list[str] = []
    for item in create_sweep_command([str(c) for c in command]):
        if item == ARGS_MACRO and overlay is not None:
            argv += ["--config", str(overlay)]
        if item.startswith("${") and item.endswith("}"):
            argv += sweep_vars.get(item[2:-1]) or []
        elif item == "lit-instruct" and not argv:
            argv += [sys.executable, "-m", "lit_instruct"]
        else:
            argv.append(item)
    return argv


def run_name(index: int, params: dict[str, Any]) -> str:
    """The run's folder name: its index, then each parameter's last key part and value, the seed last as ``seed=N``
    (kept whole when a long name is cut), so the runs of one cell at different seeds sit side by side."""
    def part(key: str, value: Any) -> str:
        return f"{key.split('.')[-1]}={value:.3g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"

    seed = f",seed={params[SEED_KEY]}" if SEED_KEY in params else ""
    parts = ",".join(part(key, value) for key, value in params.items() if key != SEED_KEY)
    name = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", f"{index:02d}-{parts}")
    return name[:120 - len(seed)] + re.sub(r"[^A-Za-z0-9_.=,+-]", "_", seed)


def final_metrics(run_dir: Path) -> dict[str, float]:
    meta = run_dir / "export" / "lit_instruct.json"
    if not meta.is_file():
        return {}
    return {k: v for k, v in json.loads(meta.read_text()).get("metrics", {}).items() if isinstance(v, (int, float))}


class Sweep:
    def __init__(self, file: str | Path, out: Path, count: int | None = None, dry_run: bool = False,
                 check: bool = True) -> None:
        self.file, self.out, self.count, self.dry_run, self.check = Path(file), out, count, dry_run, check
        self.config = load_sweep(self.file)
        self.name = self.config.get("name") or self.file.stem
        self.project = self.config.get("project") or "lit-instruct"
        self.record_path = out / "sweep.json"
        self.runs: list[dict] = []
        if self.record_path.is_file():
            record = json.loads(self.record_path.read_text())
            if record.get("config", {}).get("command") != self.config["command"]:
                raise SystemExit(f"{out} holds runs of a sweep with another command ({record.get('file')}); "
                                 "use another --out, or delete that folder")
            self.runs = [r for r in record["runs"] if r["state"] == "finished"]
            swept = set(self.config["parameters"])
            other = next((r for r in self.runs if set(r["params"]) != swept), None)
            if other is not None:  # e.g. runs from before a seed axis was added: not points of this grid
                raise SystemExit(f"{out} holds runs swept over other parameters ({other['name']}: {sorted(other['params'])}; "
                                 f"this file sweeps {sorted(swept)}); use another --out, or delete that folder")

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.record_path.write_text(json.dumps({"file": str(self.file), "name": self.name, "config": self.config,
                                                "runs": self.runs}, indent=2) + "\n")

    def proposals(self, limit: int | None) -> list[dict[str, Any]]:
        """Parameters of the next runs the engine proposes, given the finished ones: all of a grid (seed by seed when
        it has a seed axis, :data:`SEED_KEY`) cut to ``limit``, or the next random / bayes run."""
        import sweeps

        known = [sweeps.SweepRun(name=r["name"], state=sweeps.RunState.finished,
                                 config={k: {"value": v} for k, v in r["params"].items()},
                                 summary_metrics=r.get("summary", {})) for r in self.runs]
        grid = self.config.get("method") == "grid"
        proposed = []
        while True:
            run = sweeps.next_run(self.config, known)
            if run is None:
                break
            proposed.append({k: v["value"] for k, v in run.config.items()})
            known.append(sweeps.SweepRun(name=f"proposed-{len(proposed)}", state=sweeps.RunState.running, config=run.config))
            if not grid:  # random / bayes: one at a time, bayes learns from the results
                break
        if grid and SEED_KEY in self.config["parameters"]:  # seed by seed; within a seed, the engine's order of cells
            spec = self.config["parameters"][SEED_KEY]
            seeds = spec.get("values", [spec.get("value")])
            proposed.sort(key=lambda p: seeds.index(p[SEED_KEY]) if p.get(SEED_KEY) in seeds else len(seeds))
        return proposed if limit is None else proposed[:limit]

    def preflight(self, params: dict[str, Any]) -> None:
        """Parse the first run's full command line with ``--print_config`` (no training): unknown keys, wrong types
        and missing config files fail here, before any run starts."""
        argv = expand_command(self.config["command"], params)
        if argv[1:3] != ["-m", "lit_instruct"]:
            return
        done = subprocess.run([*argv, "--print_config"], capture_output=True, text=True)
        if done.returncode != 0:
            error = "\n".join(done.stderr.strip().splitlines()[-8:])
            named = [key for key in params if re.search(rf"\b{re.escape(key.split('.')[-1])}\b", error)]
            where = ["parameters", named[0]] if named else ["parameters"]
            raise SweepFileError(f"{self.file}:{_node_line(yaml.compose(self.file.read_text()), where)}: "
                                 f"the command rejects the sweep's arguments {params}:\n{error}")

    def run(self) -> list[dict]:
        budget = self.count if self.count is not None else self.config.get("run_cap")
        method = self.config.get("method")
        if method != "grid" and budget is None:
            raise SystemExit(f"{self.file}: a {method} sweep never ends by itself; give --count N (or run_cap in the file)")
        started = 0
        while budget is None or started < budget:
            batch = self.proposals(None if budget is None else budget - started)
            if not batch:
                break
            for params in batch:
                if self.check and started == 0:
                    self.preflight(params)
                index = len(self.runs) + 1
                name = run_name(index, params)
                run_dir = self.out / name
                overlay = run_dir / "sweep_overlay.yaml"
                argv = expand_command(self.config["command"], params, overlay)
                print(f"[sweep {self.name}] run {index}: {params}", flush=True)
                started += 1
                if self.dry_run:
                    print("  " + " ".join(argv), flush=True)
                    self.runs.append({"name": name, "params": params, "state": "proposed", "command": argv})
                    continue
                run_dir.mkdir(parents=True, exist_ok=True)
                settings = run_overlay(run_dir, self.project, name=name, group=self.name, job_type="sweep", tags=["sweep", self.name])
                overlay.write_text(yaml.safe_dump(settings, sort_keys=False))
                record = {"name": name, "params": params, "command": argv, "folder": str(run_dir)}
                record.update(self.execute(argv, run_dir))
                if record["state"] != "finished":
                    self.runs.append(record)  # recorded, and retried when the sweep is run again
                    self.save()
                    raise SystemExit(f"[sweep {self.name}] run {name} failed (exit {record['exit_code']}); "
                                     f"its log: {run_dir / 'log.txt'}\n{record['log_tail']}")
                self.runs.append(record)
                self.save()
                shown = {k: round(v, 4) for k, v in record["summary"].items() if k.startswith("val/")}
                print(f"[sweep {self.name}] run {index} done in {record['seconds']:.0f} s: {shown}", flush=True)
        if not self.dry_run:
            print(f"[sweep {self.name}] {len(self.runs)} runs recorded in {self.record_path}", flush=True)
        return self.runs

    @staticmethod
    def execute(argv: list[str], run_dir: Path) -> dict:
        start = time.perf_counter()  # (W&B's mode comes from the environment: configure_wandb_env ran at start-up)
        with (run_dir / "log.txt").open("w", encoding="utf-8") as log:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in process.stdout:
                log.write(line)
                sys.stdout.write(line)
            code = process.wait()
        seconds = time.perf_counter() - start
        if code != 0:
            tail = "".join((run_dir / "log.txt").read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
            return {"state": "failed", "exit_code": code, "seconds": seconds, "log_tail": tail}
        return {"state": "finished", "exit_code": 0, "seconds": seconds, "summary": final_metrics(run_dir)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-instruct sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a W&B sweep YAML (sweeps/*.yaml)")
    parser.add_argument("--out", help="sweep folder (default: runs/sweeps/<file name>)")
    parser.add_argument("--count", type=int, help="at most this many new runs (needed for random and bayes)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the proposed runs' commands")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip parsing the first run's command line before starting")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path("runs/sweeps") / Path(args.file).stem
    try:
        Sweep(args.file, out, count=args.count, dry_run=args.dry_run, check=args.check).run()
    except SweepFileError as error:
        raise SystemExit(f"lit-instruct sweep: {error}") from None
