"""The single training entry: every training stage (pt, sft, rm, dpo) runs through `run`.

It owns what makes a run trustworthy: the output-dir guarantees, the seed, the resolved recipe written next
to the outputs, resume, metrics, and an atomic final save. Stages only build a trainer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.modeling import check_method, checkpoint_share, count_parameters
from llmtune.outdir import apply_umask
from llmtune.schema import Recipe
from llmtune.stages.args import common_training_args
from llmtune.training import checkpoints, sharded
from llmtune.training.accelerate import read_accelerate_config
from llmtune.training.callbacks import line_printer, metrics_logger, partial_checkpointing, progress_printer
from llmtune.training.rundir import (
    check_output_dir,
    checkpoint_step,
    library_versions,
    output_guard,
    recipe_changes,
    truncate_metrics,
    write_recipe,
)

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


def save_final(trainer: Trainer, out: Path) -> None:
    """Save the adapter or model and the tokenizer into `.final-tmp`, then move each file into place."""
    tmp = out / ".final-tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    sharded.save_model(trainer, tmp)
    if not trainer.is_world_process_zero():
        return
    (tmp / "training_args.bin").unlink(missing_ok=True)
    apply_umask(tmp)  # safetensors writes the weights 0600
    for item in tmp.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()


CAUSAL_STAGES = ("pt", "sft", "dpo", "kto", "orpo", "cpo", "grpo", "rloo")


def write_stops(trainer: Trainer, recipe: Recipe, out: Path, is_main: bool = True) -> None:
    """A causal run's generation_config.json stops at the chat template's end-of-turn token too (so the run, its
    merged export and its GGUF stop where a turn ends); after sft, warn if greedy answers to a few training prompts
    do not stop within 32 tokens.

    With split weights (FSDP, ZeRO-3) every process calls this: generating gathers the weights from all of them.
    Only the main one writes and warns; the others generate the same tokens in step with it."""
    from llmtune.infer.generate import check_stops, set_stop_ids, stop_counts
    from llmtune.infer.prompts import sample_prompts

    model, tokenizer = trainer.model, trainer.processing_class
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    set_stop_ids(base, tokenizer)
    if is_main:
        base.generation_config.save_pretrained(out)
    if recipe.stage != "sft":
        return
    prompts, synced = sample_prompts(recipe), sharded.weights_split(trainer) and trainer.args.world_size > 1
    if is_main:
        check_stops(model, tokenizer, prompts, f"the {recipe.stage} run", synced=synced)
    elif synced and tokenizer.chat_template and prompts:  # the calls check_stops makes on the main process
        stop_counts(model, tokenizer, prompts, synced=True)


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


def _attach(trainer: Trainer, recipe: Recipe, out: Path, world_size: int) -> Any:
    """Add the metrics logger (returned, for its timings); drop the per-log printer when --quiet."""
    logger = metrics_logger(out / "metrics.jsonl")
    trainer.add_callback(logger)
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    had_bar = trainer.pop_callback(ProgressCallback) is not None
    if console.verbosity() != console.QUIET:
        trainer.add_callback(progress_printer() if had_bar else line_printer())
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
    if checkpoint is not None and (changed := recipe_changes(out, recipe)):
        console.info(f"resuming with changed settings: {', '.join(changed)}", markup=False)
    check_method(recipe)
    written, recipe = recipe, resolve_checkpointing(recipe)  # recipe.yaml keeps `auto`; the run uses its choice
    console.info(f"{recipe.stage}: writing the run to {out}", markup=False)
    console.quiet_libraries()

    from transformers import set_seed

    from llmtune.stages import get_stage

    state = sharded.process_state()
    set_seed(recipe.train.seed)
    trainer = get_stage(recipe.stage).build(recipe, sharded.trainer_args(common_training_args(recipe)))
    _cpu_kernels(trainer, recipe)
    if 0 < recipe.train.checkpoint_share < 1:
        trainer.add_callback(partial_checkpointing(recipe.train.checkpoint_share))
    logger = _attach(trainer, recipe, out, state.num_processes)
    checkpoints.install(trainer, out, recipe.train.save_total_limit)
    state.wait_for_everyone()  # every process has checked the dir before the main one moves old contents aside
    with output_guard(out, replace=recipe.output.overwrite and checkpoint is None, is_main=state.is_main_process):
        if state.is_main_process:
            with checkpoints.write_errors(out, "recipe.yaml and metrics.jsonl"):
                write_recipe(out, written, state.num_processes)
                if checkpoint is not None:
                    checkpoints.remove_incomplete(out)
                    truncate_metrics(out / "metrics.jsonl", checkpoint_step(checkpoint))
        state.wait_for_everyone()
        output, runtime = _train(trainer, out, checkpoint)
        result = _result(recipe, trainer, output, runtime, logger, state.num_processes)
        if recipe.stage in CAUSAL_STAGES and (state.is_main_process or sharded.weights_split(trainer)):
            write_stops(trainer, recipe, out, is_main=state.is_main_process)
        if state.is_main_process:
            summary = {**result.summary(), "versions": library_versions()}
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            _draw_curves(out)
    return result


def resolve_checkpointing(recipe: Recipe) -> Recipe:
    """The recipe with `train.gradient_checkpointing: auto` replaced by the share it picks for this model, batch
    and dtype (llmtune.modeling.checkpointing); said on screen when it turns checkpointing on."""
    if recipe.train.gradient_checkpointing != "auto":
        return recipe
    config = read_accelerate_config(recipe.train.accelerate_config) if recipe.train.accelerate_config else {}
    fsdp_checkpoints = (config.get("fsdp_config") or {}).get("fsdp_activation_checkpointing")
    main = os.environ.get("RANK", "0") == "0"  # say it once in a multi-process launch
    share = 0.0 if fsdp_checkpoints else checkpoint_share(recipe, say=main)  # FSDP recomputes on its own: never both
    train = recipe.train.model_copy(update={"gradient_checkpointing": share if 0 < share < 1 else share == 1})
    return recipe.model_copy(update={"train": train})


def _cpu_kernels(trainer: Trainer, recipe: Recipe) -> None:
    """Without CUDA: LoRA layers get llmtune.modeling.cpu_lora's branch (`train.cpu_fast_lora`), and sft / pt / dpo /
    kto score their log-probabilities with llmtune.modeling.fused_head (`train.cpu_fused_head`; frozen heads only).
    Not with sharded weights (FSDP, DeepSpeed), whose hooks gather a layer's weights only when it is called."""
    from llmtune.modeling import has_cuda

    if has_cuda() or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return
    if recipe.method.kind in ("lora", "qlora") and recipe.train.cpu_fast_lora:
        from llmtune.modeling.cpu_lora import speed_up_lora

        speed_up_lora(trainer.model)
    if recipe.stage in ("sft", "pt", "dpo", "kto") and recipe.train.cpu_fused_head:
        from llmtune.modeling.fused_head import install_cpu_head

        install_cpu_head(trainer)


def _draw_curves(out: Path) -> None:
    """DIR/curves.png; a plotting failure is a warning, never a failed run."""
    try:
        from llmtune.report.curves import write_run_curves

        write_run_curves(out)
    except Exception as exc:  # the run is trained and saved; a picture must not undo that
        console.warn(f"could not draw {out / 'curves.png'}: {type(exc).__name__}: {exc}")
