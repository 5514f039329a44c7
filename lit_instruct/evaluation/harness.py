"""The alignment tax on public NLP benchmarks, through EleutherAI's lm-evaluation-harness (``pip install
lit-instruct[tax]``).

The InstructGPT paper measured the tax as the regression of RLHF policies on public datasets (SQuADv2 and DROP F1,
WMT'15 French-to-English BLEU, HellaSwag, ...). The bundled ``eval_instructgpt_nlp.jsonl`` holds 100 items of each
of the first three from the paper's own evaluation; :data:`BUNDLED_TASKS` are harness task definitions
(``tasks/*.yaml``, ``dataset_path: json``) over that file, so nothing is downloaded. Any other harness task name
(``hellaswag``, ``wmt14-fr-en``, ...) is passed to the harness as it is, for machines that reach the hub, and a
path to a task YAML of one's own is loaded like the bundled ones.

:func:`evaluate` runs tasks on a model already in memory (the harness's ``HFLM`` wrapping it), so the ``eval``
command (an export loaded from disk) and :class:`~lit_instruct.callbacks.AlignmentTax` (the policy being trained)
give the same numbers on the same weights.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from lit_instruct import bundled
from lit_instruct.data.problems import DataError
from lit_instruct.data.records import read_rows

TASKS_DIR = Path(__file__).parent / "tasks"
#: The paper's items, one harness task each: SQuADv2 (F1, exact match), DROP (F1, exact match), FR->EN (BLEU), and
#: all 300 references scored by likelihood (bits per byte; a signal where a small model's answers score 0).
BUNDLED_TASKS = ("instructgpt_squadv2", "instructgpt_drop", "instructgpt_fr_to_en", "instructgpt_references")
#: Each bundled task's rows in the data file (its ``task`` column; None: every row).
TASK_ROWS = {"instructgpt_squadv2": "squadv2", "instructgpt_drop": "drop", "instructgpt_fr_to_en": "fr_to_en",
             "instructgpt_references": None}
ROW_TASKS = ("squadv2", "drop", "fr_to_en")
DEFAULT_DATA = "bundled:eval_instructgpt_nlp.jsonl"
#: The metric the pipeline report and the study show per task (all in the paper's units).
HEADLINE_METRICS = {"instructgpt_squadv2": "f1", "instructgpt_drop": "f1", "instructgpt_fr_to_en": "bleu",
                    "instructgpt_references": "bits_per_byte"}
#: Logged and reported names: ``tax/<task>/<metric>``.
PREFIX = "tax"
HEADLINE_KEYS = [f"{PREFIX}/{task}/{metric}" for task, metric in HEADLINE_METRICS.items()]


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as error:  # pragma: no cover - the extra is part of [dev]
        raise ImportError("the alignment-tax benchmarks need lm-evaluation-harness: pip install 'lit-instruct[tax]'") from error


def _check_row(row: dict) -> Optional[str]:
    task, prompt, refs = row.get("task"), row.get("prompt"), row.get("refs")
    if task not in ROW_TASKS:
        return f"'task' must be one of {list(ROW_TASKS)}, got {task!r}"
    if not isinstance(prompt, str) or not prompt.strip():
        return "'prompt' must be a non-empty string"
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        return "'refs' must be a non-empty list of non-empty strings (the reference answers)"
    return None


def check_data_file(path: str | Path, tasks: Sequence[str] = BUNDLED_TASKS) -> Path:
    """The bundled tasks' data file, resolved and validated before anything runs: JSON Lines (or JSON) with a
    ``task``, ``prompt`` and ``refs`` per row; every bad row is reported as ``FILE:LINE: problem``, and a task with
    no rows is an error too."""
    resolved = bundled.resolve(path)
    if not resolved.is_file():
        raise FileNotFoundError(f"{path}: the benchmark data file does not exist")
    if resolved.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: the benchmark data must be JSON Lines (.jsonl) or JSON (.json), the harness's json loader reads no other")
    rows = read_rows(resolved, _check_row)
    present = {row["task"] for _, row in rows}
    missing = [task for task in tasks if TASK_ROWS.get(task) and TASK_ROWS[task] not in present]
    if missing:
        raise DataError(f"{path}: no rows for {', '.join(missing)} (rows with task {', '.join(repr(TASK_ROWS[t]) for t in missing)})")
    return resolved.resolve()


def _loader(base: Path) -> type:
    """A YAML loader for harness task files whose ``!function module.name`` resolves next to the file (the bundled
    tasks' functions are :mod:`lit_instruct.evaluation.tasks.nlp`)."""

    class Loader(yaml.SafeLoader):
        pass

    def function(loader, node):
        module_name, _, name = loader.construct_scalar(node).rpartition(".")
        if base == TASKS_DIR:
            module = importlib.import_module(f"lit_instruct.evaluation.tasks.{module_name}")
        else:
            spec = importlib.util.spec_from_file_location(f"_lit_instruct_task_{module_name}", base / f"{module_name}.py")
            if spec is None or not (base / f"{module_name}.py").is_file():
                raise FileNotFoundError(f"{base / (module_name + '.py')}: named by a '!function {module_name}.{name}' entry, does not exist")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        return getattr(module, name)

    Loader.add_constructor("!function", function)
    return Loader


def task_config(task: str, data_file: str | Path = DEFAULT_DATA, max_gen_toks: Optional[int] = None,
                prompt_format=None) -> dict | str:
    """What :func:`evaluate` hands the harness for ``task``: a bundled task's config (its YAML with the data file
    filled in), a task YAML of one's own (a path ending ``.yaml``), or a harness task name as it is.

    ``prompt_format`` (a :class:`~lit_instruct.data.prompt_format.PromptFormat`): a bundled task's prompts go to the
    model wrapped in it, as the policy was trained to be asked, instead of as the paper's raw zero-shot text."""
    if task in BUNDLED_TASKS:
        path = TASKS_DIR / f"{task}.yaml"
    elif task.endswith((".yaml", ".yml")):
        path = Path(task).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{task}: the task file does not exist")
    else:
        return task
    with open(path) as handle:
        config = yaml.load(handle, Loader=_loader(path.parent))
    if not isinstance(config, dict) or "task" not in config:
        raise ValueError(f"{path}: not a harness task definition (a mapping with a 'task' key)")
    if task in BUNDLED_TASKS:
        config["dataset_kwargs"] = {"data_files": {config.get("test_split", "test"): str(data_file)}}
        if prompt_format is not None:
            config["doc_to_text"] = lambda doc: prompt_format.prompt(doc["prompt"])
    if max_gen_toks is not None:
        config.setdefault("generation_kwargs", {})["max_gen_toks"] = max_gen_toks
    return config


def task_configs(tasks: Sequence[str], data_file: str | Path = DEFAULT_DATA, max_gen_toks: Optional[int] = None,
                 prompt_format=None) -> list:
    """Every task's config, checked before any model runs: the data file (when a bundled task reads it), task files,
    and harness task names (unknown ones listed together)."""
    _require_lm_eval()
    if not tasks:
        raise ValueError("no benchmark tasks given")
    data = check_data_file(data_file, tasks) if any(t in BUNDLED_TASKS for t in tasks) else None
    configs = [task_config(t, data, max_gen_toks, prompt_format) for t in tasks]
    names = [c for c in configs if isinstance(c, str)]
    if names:
        known = set(_task_manager().all_tasks)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown benchmark task(s) {', '.join(unknown)}: neither bundled ({', '.join(BUNDLED_TASKS)}), "
                             "a task .yaml file, nor a task of the installed lm-evaluation-harness")
    return configs


@functools.lru_cache(maxsize=1)
def _task_manager():
    """The harness's task index (built once per process: it reads every task file the harness ships)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@contextlib.contextmanager
def _this_process_alone():
    """The harness hands results back only where ``LOCAL_RANK`` is 0 (its own launchers shard the requests); an
    in-memory model here runs every request in every process, so each process is its own rank 0 meanwhile."""
    local_rank = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if local_rank is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = local_rank


@contextlib.contextmanager
def _quiet_harness():
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def evaluate(model: torch.nn.Module, tokenizer, tasks: Sequence[str] = BUNDLED_TASKS, *, data_file: str | Path = DEFAULT_DATA,
             limit: Optional[int] = None, batch_size: int = 16, max_gen_toks: Optional[int] = None,
             bootstrap_iters: int = 0, seed: int = 1234, configs: Optional[list] = None) -> dict[str, dict[str, float]]:
    """Run ``tasks`` on ``model`` (a causal LM in memory, on its own device and dtype) with the harness.

    Returns ``{task: {metric: value}}`` (with ``<metric>_stderr`` when ``bootstrap_iters`` > 0). Generation is
    greedy; ``limit`` takes the first items of each task; prompts longer than the model's context lose their start
    (the harness truncates on the left). The model is put in eval mode and given back in the mode it had.
    ``configs``: :func:`task_configs`'s result, when the caller checked the tasks already.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    configs = configs if configs is not None else task_configs(tasks, data_file, max_gen_toks)
    was_training = model.training
    model.eval()
    try:
        with _quiet_harness(), _this_process_alone(), torch.no_grad():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            output = simple_evaluate(model=lm, tasks=configs, task_manager=_task_manager(), limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False,
                                     random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                     fewshot_random_seed=seed, verbosity="ERROR")
    finally:
        model.train(was_training)
    results: dict[str, dict[str, float]] = {}
    for task, values in output["results"].items():
        metrics = {}
        for key, value in values.items():
            metric, _, _filter = key.partition(",")
            if _filter and isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[metric] = float(value)
        results[task] = metrics
    return results


def flat_metrics(results: dict[str, dict[str, float]], prefix: str = PREFIX) -> dict[str, float]:
    """``{"tax/<task>/<metric>": value}``, standard errors left out."""
    return {f"{prefix}/{task}/{metric}": value for task, metrics in results.items()
            for metric, value in metrics.items() if not metric.endswith("_stderr")}


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| task | metric | value | stderr |", "|---|---|---|---|"]
    for task, metrics in results.items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr")
            lines.append(f"| {task} | {metric} | {value:.2f} | {'' if stderr is None else f'{stderr:.2f}'} |")
    return "\n".join(lines) + "\n"


def headline(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The report's one number per bundled task, ``{"tax/<task>/<metric>": value}``."""
    return {f"{PREFIX}/{task}/{metric}": results[task][metric] for task, metric in HEADLINE_METRICS.items()
            if task in results and metric in results[task]}

