"""``lit-instruct pipeline``: pretrain -> SFT -> reward model -> PPO-ptx, plus a plain-PPO control and a held-apart
judge (a second reward model, trained differently, that PPO never optimises), in one run folder.

Each stage runs as its own ``lit-instruct fit`` process with its config and an overlay the pipeline writes (run
folder, export paths, the previous stages' exports, a CSV logger beside W&B). A stage whose export exists and
whose fingerprint (its resolved config, its overlay, and its inputs' fingerprints) is unchanged is reused;
``--force`` redoes every stage. Then the SFT policy, the PPO control and the PPO-ptx policy are measured on the
same held-out prompts and held-out pretraining text (scored by the optimised reward model and by the judge) and on
public NLP benchmarks (``tax_tasks``, lm-evaluation-harness), and ``report.json`` / ``report.md`` (with PNG plots)
are written (:mod:`lit_instruct.tools.report`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lit_instruct.evaluation import harness, measure_policy
from lit_instruct.tools.configs import load_config, merge, run_overlay
from lit_instruct.tools.report import POLICIES, pipeline_report

STAGES = ("pretrain", "sft", "reward", "judge", "ppo", "ppo_ptx")

#: Overrides that shrink every stage to a few steps (``--smoke``): for tests and a quick look.
SMOKE = {
    "pretrain": {"trainer": {"max_steps": 4, "limit_val_batches": 2, "val_check_interval": 2}},
    "sft": {"trainer": {"max_steps": 4, "limit_val_batches": 2, "val_check_interval": 2}},
    "reward": {"trainer": {"max_steps": 4, "limit_val_batches": 2, "val_check_interval": 2},
               "data": {"init_args": {"normalization_rows": 16}}},
    "judge": {"trainer": {"max_steps": 4, "limit_val_batches": 2, "val_check_interval": 2},
              "data": {"init_args": {"normalization_rows": 16}}},
    "ppo": {"trainer": {"val_check_interval": 1}, "model": {"init_args": {"total_episodes": 32}},
            "data": {"init_args": {"max_val_prompts": 4, "max_val_pretrain_blocks": 4}}},
    "ppo_ptx": {"trainer": {"val_check_interval": 1}, "model": {"init_args": {"total_episodes": 32}},
                "data": {"init_args": {"max_val_prompts": 4, "max_val_pretrain_blocks": 4}}},
}


@dataclass
class PipelineConfig:
    """What the pipeline runs: per stage a config file, or a list of them composed in order (for example a stage
    config and a trainer config). ``pretrain`` may be ``None`` when SFT starts from a pretrained model."""

    pretrain: str | list[str] | None = "configs/pretrain/tiny.yaml"
    sft: str | list[str] = "configs/sft/tiny.yaml"
    reward: str | list[str] = "configs/reward/tiny.yaml"
    # The held-apart judge: a reward model PPO never optimises, which scores every policy beside the optimised one
    # (None: no judge). It starts from the pretrained model (``judge_from: pretrain``, when the pipeline pretrains),
    # from the SFT export (``sft``), or from what its own config names (``config``).
    judge: str | list[str] | None = "configs/reward/tiny_judge.yaml"
    judge_from: str = "pretrain"
    ppo: str | list[str] = "configs/ppo/tiny_plain.yaml"
    ppo_ptx: str | list[str] = "configs/ppo/tiny.yaml"
    overrides: dict = field(default_factory=dict)  # per stage: a nested dict merged into its overlay
    # Select the SFT model by this reward model's score on validation generations (the paper's selection) instead
    # of keeping the last weights: a reward export from an earlier run, or "auto" for <out>/reward/export when an
    # earlier run left one. Off by default: it changes the SFT stage, so everything downstream reruns.
    sft_selection_reward_model: str | None = None
    eval_prompts: int = 32  # held-out prompts each policy is scored on in the report
    # The alignment tax on public NLP benchmarks for each policy (lm-evaluation-harness, the ``tax`` extra): bundled
    # task names, task .yaml files or harness task names; [] or null: none. ``tax_limit``: the first N items per task.
    tax_tasks: list[str] | None = field(default_factory=lambda: list(harness.BUNDLED_TASKS))
    tax_limit: int | None = None
    samples: int = 4  # prompts shown side by side in report.md

    @classmethod
    def load(cls, path: str | None) -> "PipelineConfig":
        if path is None:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown pipeline keys {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})")
        config = cls(**data)
        for stage in STAGES:
            try:
                load_config(*config.files(stage))  # each file, and every fragment it composes, exists and reads
            except FileNotFoundError as error:
                raise FileNotFoundError(f"{path}: stage {stage!r}: {error}") from None
        return config

    def files(self, stage: str) -> list[str]:
        value = getattr(self, stage)
        return [] if value is None else [value] if isinstance(value, str) else list(value)


def fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class Pipeline:
    def __init__(self, config: PipelineConfig, out: Path, force: bool = False, smoke: bool = False) -> None:
        self.config, self.out, self.force, self.smoke = config, out, force, smoke
        self.fingerprints: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def export(self, stage: str) -> Path:
        return self.out / stage / "export"

    def overlay(self, stage: str) -> dict:
        """The settings the pipeline lays over a stage's own config: its folder (which the pipeline owns: a stage it
        redoes starts over there) and the previous stages' exports."""
        overlay = run_overlay(self.out / stage, name=f"pipeline-{stage}")
        model_args = overlay["model"]["init_args"]
        if stage == "sft" and self.config.pretrain:
            model_args["model_name_or_path"] = str(self.export("pretrain"))
        if stage == "reward":
            model_args["model_name_or_path"] = str(self.export("sft"))
        if stage in ("reward", "judge"):  # the gain of the normalisation: from the policy PPO starts from
            model_args["gain"] = {"policy": str(self.export("sft"))}
        if stage == "judge" and self.judge_from() != "config":
            model_args["model_name_or_path"] = str(self.export(self.judge_from()))
        if stage in ("ppo", "ppo_ptx"):
            model_args["policy_name_or_path"] = str(self.export("sft"))
            model_args["reward_model_path"] = str(self.export("reward"))
            if self.config.judge:
                model_args["judge_path"] = str(self.export("judge"))
        selector = self.selection_reward_model()
        if stage == "sft" and selector:
            overlay["trainer"]["callbacks"].append({"class_path": "lit_instruct.callbacks.RewardModelSelection",
                                                    "init_args": {"reward_model_path": selector}})
        if self.smoke:
            overlay = merge(overlay, SMOKE[stage])
        return merge(overlay, self.config.overrides.get(stage, {}))

    def selection_reward_model(self) -> str | None:
        choice = self.config.sft_selection_reward_model
        if choice == "auto":
            if not hasattr(self, "_earlier_reward"):  # decided once, before this run trains a new reward model
                earlier = self.export("reward")
                self._earlier_reward = str(earlier) if (earlier / "lit_instruct.json").is_file() else None
            return self._earlier_reward
        return choice

    def judge_from(self) -> str:
        """Where the judge starts: ``pretrain`` (only when the pipeline pretrains), ``sft`` or ``config``."""
        choice = self.config.judge_from
        if choice not in ("pretrain", "sft", "config"):
            raise ValueError(f"judge_from: {choice!r} is not one of pretrain, sft, config")
        return "config" if choice == "pretrain" and not self.config.pretrain else choice

    def inputs(self, stage: str) -> list[str]:
        judge = ["judge"] if self.config.judge else []
        return {"pretrain": [], "sft": ["pretrain"] if self.config.pretrain else [], "reward": ["sft"],
                "judge": ["sft"] + (["pretrain"] if self.judge_from() == "pretrain" else []),
                "ppo": ["sft", "reward", *judge], "ppo_ptx": ["sft", "reward", *judge]}[stage]

    def run_stage(self, stage: str) -> None:
        files = self.config.files(stage)
        folder = self.out / stage
        overlay = self.overlay(stage)
        fp = fingerprint(stage, load_config(*files), overlay, [self.fingerprints[i] for i in self.inputs(stage)])
        self.fingerprints[stage] = fp
        stamp = folder / "pipeline_stage.json"
        if not self.force and self.export(stage).is_dir() and stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fp:
            print(f"[pipeline] {stage}: reusing {self.export(stage)} (unchanged; --force redoes it)", flush=True)
            self.timings[stage] = json.loads(stamp.read_text()).get("seconds", 0.0)
            return
        folder.mkdir(parents=True, exist_ok=True)
        overlay_path = folder / "pipeline_overlay.yaml"
        overlay_path.write_text(yaml.safe_dump(overlay, sort_keys=False))
        command = [sys.executable, "-m", "lit_instruct", "fit"]
        for file in [*files, str(overlay_path)]:
            command += ["--config", file]
        print(f"[pipeline] {stage}: {' '.join(command[2:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"[pipeline] stage {stage} failed (exit {done.returncode}); its folder: {folder}")
        self.timings[stage] = seconds
        stamp.write_text(json.dumps({"fingerprint": fp, "seconds": seconds, "configs": files}, indent=2) + "\n")
        print(f"[pipeline] {stage}: done in {seconds:.0f} s", flush=True)

    def evaluate(self) -> dict:
        """Score the SFT, PPO and PPO-ptx policies on the same held-out prompts and pretraining text."""
        ppo_config = load_config(*self.config.files("ppo_ptx"))
        model_args = dict(ppo_config["model"].get("init_args", {}))
        data_args = merge(dict(ppo_config["data"].get("init_args", {})), self.overlay("ppo_ptx").get("data", {}).get("init_args", {}))
        data_args["max_val_prompts"] = min(data_args.get("max_val_prompts", 64), self.config.eval_prompts) if not self.smoke else 4
        judge = str(self.export("judge")) if self.config.judge else None
        results = {name: measure_policy(model_args, data_args, policy=str(self.export(name)), reference=str(self.export("sft")),
                                        reward_model=str(self.export("reward")), judge=judge, samples=self.config.samples,
                                        root=str(self.out / "eval" / name))
                   for name in POLICIES}
        for name in POLICIES if self.config.tax_tasks else ():
            results[name].update(self.tax(name))
        results["max_new_tokens"] = (model_args.get("sampling") or {}).get("max_new_tokens")
        for stage in ("reward", "judge") if judge else ("reward",):
            meta = json.loads((self.export(stage) / "lit_instruct.json").read_text())
            metrics = meta["metrics"]
            results[stage] = {"accuracy": metrics.get("val/accuracy"), "length_baseline_accuracy": metrics.get("val/length_baseline_accuracy"),
                              "normalization": meta.get("normalization"), "started_from": meta.get("hparams", {}).get("model_name_or_path")}
        return results

    def tax(self, name: str) -> dict[str, float]:
        """A policy's benchmark numbers (``tax/<task>/<metric>``), also written to ``<out>/<name>/tax.json`` / ``.md``."""
        from lit_instruct.tools.tax import default_out, evaluate_export, write_results

        print(f"[pipeline] {name}: alignment-tax benchmarks ({', '.join(self.config.tax_tasks)})", flush=True)
        result = evaluate_export(self.export(name), self.config.tax_tasks, limit=2 if self.smoke else self.config.tax_limit,
                                 bootstrap_iters=0)
        write_results(result, default_out(self.export(name)))
        return harness.flat_metrics(result["results"])

    def peak_memory(self) -> dict[str, float | None]:
        """Each stage's ``memory/peak_gib`` from its export's metrics (``None`` for an export from before it was logged)."""
        memory = {}
        for stage in self.timings:
            meta = self.export(stage) / "lit_instruct.json"
            memory[stage] = json.loads(meta.read_text()).get("metrics", {}).get("memory/peak_gib") if meta.is_file() else None
        return memory

    def run(self) -> dict:
        start = time.perf_counter()
        if self.config.tax_tasks:  # the harness, its data and the task names, before any stage trains
            harness.task_configs(self.config.tax_tasks)
        self.out.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            if (stage == "pretrain" and not self.config.pretrain) or (stage == "judge" and not self.config.judge):
                continue
            self.run_stage(stage)
        print("[pipeline] evaluating SFT, PPO and PPO-ptx on held-out prompts and pretraining text", flush=True)
        results = self.evaluate()
        pipeline_report(self.out, results, self.timings, time.perf_counter() - start, self.peak_memory())
        print(f"[pipeline] wrote {self.out / 'report.json'} and {self.out / 'report.md'}", flush=True)
        return results


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-instruct pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="pipeline YAML (stage config files, per-stage overrides); default: the embedded tiny one")
    parser.add_argument("--out", default="runs/pipeline", help="run folder (default: runs/pipeline)")
    parser.add_argument("--force", action="store_true", help="redo every stage even when its export is up to date")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage (tests, a quick look)")
    args = parser.parse_args(argv)
    Pipeline(PipelineConfig.load(args.config), Path(args.out), force=args.force, smoke=args.smoke).run()
