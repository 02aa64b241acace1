"""A bridge to lm-evaluation-harness (the `harness` extra): its tasks run on the model we already loaded (an
adapter too), through `HFLM(pretrained=<model object>)`, and its numbers join our table as `<task>/<metric>`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmtune.errors import UserError, require_module

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def parse_tasks(spec: str) -> list[str]:
    """ "mmlu_anatomy, hellaswag" -> ["mmlu_anatomy", "hellaswag"]."""
    tasks = [name.strip() for name in spec.split(",") if name.strip()]
    if not tasks:
        raise UserError("--harness: give one or more lm-eval task names, comma-separated (e.g. mmlu,hellaswag)")
    return tasks


def harness_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    *,
    include: str | None = None,
    shots: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    window: int | None = None,
) -> dict[str, float]:
    """lm_eval.simple_evaluate on `tasks` (found among its own and those under `include`), flattened to
    {"<task>/<metric>": value}; standard errors are kept as "<task>/<metric>_stderr"."""
    require_module("lm_eval", "llmtune eval --harness")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # it warns that a model object ignores model_args
    manager = task_manager(tasks, include)
    extra = {"max_length": window} if window else {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **extra)
    out = simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=shots, limit=limit, task_manager=manager, log_samples=False,
        bootstrap_iters=0,
    )  # fmt: skip
    return flatten_results(out["results"] if out else {})


@functools.cache
def _manager(include: str | None, defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=defaults)


def task_manager(tasks: Sequence[str], include: str | None) -> Any:
    """lm-eval's task index; only the tasks under `include` when they are all there (indexing its thousands of
    own task files takes tens of seconds), else its own as well."""
    if include and all(task in _manager(include, False).all_tasks for task in tasks):
        return _manager(include, False)
    manager = _manager(include, True)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        where = f" or under {include}" if include else ""
        raise UserError(f"--harness: no lm-eval task named {', '.join(unknown)} among its tasks{where}")
    return manager


def flatten_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"task": {"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}} -> {"task/acc": 0.5}."""
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metric, _, filt = key.partition(",")
                name = metric if filt in ("", "none") else f"{metric}[{filt}]"
                flat[f"{task}/{name}"] = float(value)
    return flat
