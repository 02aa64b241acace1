"""The single training entry: every training stage (pt, sft, rm, dpo) runs through `run`.

It owns what makes a run trustworthy: the output-dir guarantees, the seed, the resolved recipe written next
to the outputs, resume, metrics, and an atomic final save. Stages only build a trainer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import checkpoints, console
from llmtune.errors import UserError
from llmtune.modeling import check_method, count_parameters, has_cuda
from llmtune.rundir import (
    check_output_dir,
    checkpoint_step,
    library_versions,
    output_guard,
    truncate_metrics,
    write_recipe,
)
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from transformers import Trainer


@dataclass
class RunResult:
    """What a finished run reports (also written to DIR/summary.json)."""

    output_dir: str
    stage: str
    method: str
    steps: int
    final_loss: float | None
    mean_loss: float | None
    eval_loss: float | None
    runtime_s: float
    first_step_s: float | None
    step_s: float | None
    trainable_params: int
    total_params: int
    world_size: int
    trainer: Any = field(default=None, repr=False, compare=False)
    """The trainer, with the trained model in memory (not written to summary.json)."""

    def summary(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "trainer"}


def _precision(mode: str, cuda: bool) -> tuple[bool, bool]:
    import torch

    if mode == "auto":
        return (cuda and torch.cuda.is_bf16_supported()), False
    if mode == "fp16" and not cuda:
        raise UserError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on this machine")
    return mode == "bf16", mode == "fp16"


def resolve_optimizer(recipe: Recipe, cuda: bool) -> str | None:
    """The optimizer name: the recipe's, else qlora's default, else None (the trainer's default).

    Paged optimizers page states to CPU memory through CUDA, so without CUDA they become their non-paged twin.
    """
    name = recipe.train.optimizer or (recipe.method.qlora.optimizer if recipe.method.kind == "qlora" else None)
    if name and name.startswith("paged_") and not cuda:
        fallback = "adamw_8bit" if name.endswith("_8bit") else "adamw_torch"
        console.warn(f"optimizer {name} needs a CUDA GPU; falling back to {fallback} on this machine")
        return fallback
    return name


def common_training_args(recipe: Recipe) -> dict[str, Any]:
    """THE translation of TrainSpec into transformers/TRL config keywords; train.extra is merged last."""
    t = recipe.train
    cuda = has_cuda()
    bf16, fp16 = _precision(t.mixed_precision, cuda)
    has_eval = bool(recipe.data.eval) or recipe.data.eval_ratio > 0
    args: dict[str, Any] = {
        "output_dir": recipe.output.dir,
        "max_steps": t.max_steps,
        "num_train_epochs": t.epochs,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.lr,
        "weight_decay": t.weight_decay,
        "warmup_steps": float(t.warmup_ratio),
        "lr_scheduler_type": t.scheduler,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "data_seed": t.seed,
        "activation_checkpointing": t.gradient_checkpointing,
        "bf16": bf16,
        "fp16": fp16,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": None,  # llmtune.checkpoints rotates sealed checkpoints by step instead
        "eval_strategy": "steps" if has_eval and t.eval_steps else "no",
        "eval_steps": t.eval_steps,
        "report_to": list(t.report_to) or "none",
        "disable_tqdm": console.verbosity() == console.QUIET,
        "dataloader_pin_memory": cuda,
        "use_cpu": not cuda,  # without CUDA, launched processes join a gloo group (llmtune.launch)
    }
    optim = resolve_optimizer(recipe, cuda)
    if optim:
        args["optim"] = optim
    return {**args, **t.extra}


def build_config(config_cls: type, args_common: dict[str, Any], **stage_keys: Any) -> Any:
    """A TRL config from the stage's keys and the common ones (common, and so train.extra, win)."""
    try:
        return config_cls(**{**stage_keys, **args_common})
    except TypeError as exc:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if not match:
            raise
        raise UserError(
            f"train.extra: {match.group(1)!r} is not an argument of {config_cls.__name__}; see its documentation "
            "for the names it accepts"
        ) from None
    except ValueError as exc:
        raise UserError(f"train: {config_cls.__name__} rejects these settings: {exc}") from None


def _metrics_logger(path: Path) -> Any:
    """A light TrainerCallback: each log dict becomes a row of metrics.jsonl; it also times the first step."""
    from transformers import TrainerCallback

    class MetricsLogger(TrainerCallback):
        def __init__(self) -> None:
            self.train_begin = self.first_step_end = self.train_end = None
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begin = time.perf_counter()
            self.first_step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if self.first_step_end is None:
                self.first_step_end = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.train_end = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
                with checkpoints.write_errors(path.parent, path.name), path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

        def timings(self, steps: int) -> tuple[float | None, float | None]:
            if self.first_step_end is None or self.train_begin is None or self.train_end is None:
                return None, None
            later = steps - self.first_step - 1
            step_s = (self.train_end - self.first_step_end) / later if later > 0 else None
            return self.first_step_end - self.train_begin, step_s

    return MetricsLogger()


_SHOWN = ("loss", "eval_loss", "grad_norm", "learning_rate", "mean_token_accuracy", "rewards/accuracies")


def _progress_printer() -> Any:
    """transformers' progress bar, but each log is one readable line ("step 20/150  loss 4.915 ...") not a dict."""
    from transformers import ProgressCallback

    class ProgressPrinter(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and self.training_bar is not None and logs):
                return
            shown = [f"{k.replace('learning_rate', 'lr')} {v:.4g}" for k, v in logs.items() if k in _SHOWN]
            if shown:
                self.training_bar.write(f"step {state.global_step}/{state.max_steps}  " + "  ".join(shown))

    return ProgressPrinter()


def save_final(trainer: Trainer, out: Path) -> None:
    """Save the adapter or model and the tokenizer into `.final-tmp`, then move each file into place."""
    tmp = out / ".final-tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if not trainer.is_world_process_zero():
        return
    (tmp / "training_args.bin").unlink(missing_ok=True)
    for item in tmp.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()


def _last(history: list[dict], key: str) -> float | None:
    return next((row[key] for row in reversed(history) if key in row), None)


def _train(trainer: Trainer, out: Path, checkpoint: Path | None) -> tuple[Any, float]:
    started = time.perf_counter()
    output = checkpoints.resume_finished(trainer, checkpoint) if checkpoint else None
    output = output or trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    step = trainer.state.global_step
    evaluated = any("eval_loss" in row and row.get("step") == step for row in trainer.state.log_history)
    if trainer.eval_dataset is not None and not evaluated:
        trainer.evaluate()
    with checkpoints.write_errors(out, "the final model", partial=out / ".final-tmp"):
        save_final(trainer, out)
    return output, time.perf_counter() - started


def _quiet_library_noise() -> None:
    """Silence messages users cannot act on (unless --verbose): an optional bitsandbytes CPU kernel package, and
    a deprecated transformers attribute that peft still reads."""
    if console.verbosity() >= console.VERBOSE:
        return
    import logging
    import warnings

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _attach(trainer: Trainer, recipe: Recipe, out: Path, world_size: int) -> Any:
    """Add the metrics logger (returned, for its timings); drop the per-log printer when --quiet."""
    logger = _metrics_logger(out / "metrics.jsonl")
    trainer.add_callback(logger)
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if console.verbosity() != console.QUIET and trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_progress_printer())
    if recipe.train.nproc > world_size:
        console.warn(f"train.nproc is {recipe.train.nproc} but this is a single process; launch it with accelerate")
    return logger


def _result(recipe: Recipe, trainer: Trainer, output: Any, runtime: float, logger: Any, world_size: int) -> RunResult:
    trainable, total = count_parameters(trainer.model)
    first_step_s, step_s = logger.timings(output.global_step)
    history = trainer.state.log_history
    return RunResult(
        output_dir=recipe.output.dir,
        stage=recipe.stage,
        method=recipe.method.kind,
        steps=output.global_step,
        final_loss=_last(history, "loss"),
        mean_loss=output.training_loss,
        eval_loss=_last(history, "eval_loss"),
        runtime_s=round(runtime, 3),
        first_step_s=first_step_s,
        step_s=step_s,
        trainable_params=trainable,
        total_params=total,
        world_size=world_size,
        trainer=trainer,
    )


def run(recipe: Recipe, *, resume: bool = False) -> RunResult:
    """Train one recipe end to end and return its summary; the output dir is checked before anything heavy."""
    out = Path(recipe.output.dir)
    checkpoint = check_output_dir(out, recipe.output.overwrite, resume)
    check_method(recipe)
    _quiet_library_noise()

    from accelerate import PartialState
    from transformers import set_seed

    from llmtune.stages import get_stage

    state = PartialState()
    set_seed(recipe.train.seed)
    trainer = get_stage(recipe.stage).build(recipe, common_training_args(recipe))
    logger = _attach(trainer, recipe, out, state.num_processes)
    checkpoints.install(trainer, out, recipe.train.save_total_limit)
    state.wait_for_everyone()  # every process has checked the dir before the main one moves old contents aside
    with output_guard(out, replace=recipe.output.overwrite and checkpoint is None, is_main=state.is_main_process):
        if state.is_main_process:
            with checkpoints.write_errors(out, "recipe.yaml and metrics.jsonl"):
                write_recipe(out, recipe, state.num_processes)
                if checkpoint is not None:
                    checkpoints.remove_incomplete(out)
                    truncate_metrics(out / "metrics.jsonl", checkpoint_step(checkpoint))
        state.wait_for_everyone()
        output, runtime = _train(trainer, out, checkpoint)
        result = _result(recipe, trainer, output, runtime, logger, state.num_processes)
        if state.is_main_process:
            summary = {**result.summary(), "versions": library_versions()}
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result
