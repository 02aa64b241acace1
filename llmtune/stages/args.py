"""THE translation of our schema's `train:` section into transformers/TRL config keywords, in one place.

Every stage builds its TRL config through `build_config(config_cls, common_training_args(recipe), **stage_keys)`;
`train.extra` is the explicit escape hatch and wins over everything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmtune import console
from llmtune.errors import UserError, require_module
from llmtune.modeling import checkpoint_share, has_cuda
from llmtune.schema import Recipe


def _precision(mode: str, cuda: bool) -> tuple[bool, bool]:
    import torch

    if mode == "auto":
        return (cuda and torch.cuda.is_bf16_supported()), False
    if mode == "fp16" and not cuda:
        raise UserError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on this machine")
    return mode == "bf16", mode == "fp16"


def resolve_optimizer(recipe: Recipe, cuda: bool, *, warn: bool = True) -> str | None:
    """The optimizer name: the recipe's, else qlora's default, else None (the trainer's default, which `plan`
    takes as adamw_torch_fused).

    Paged optimizers page states to CPU memory through CUDA, so without CUDA they become their non-paged twin.
    """
    name = recipe.train.optimizer or (recipe.method.qlora.optimizer if recipe.method.kind == "qlora" else None)
    if name and name.startswith("paged_") and not cuda:
        fallback = "adamw_8bit" if name.endswith("_8bit") else "adamw_torch"
        if warn:
            console.warn(f"optimizer {name} needs a CUDA GPU; falling back to {fallback} on this machine")
        return fallback
    return name


def common_training_args(recipe: Recipe) -> dict[str, Any]:
    """THE translation of TrainSpec into transformers/TRL config keywords; train.extra is merged last."""
    t = recipe.train
    for logger in t.report_to:
        require_module(logger, f"train.report_to: {logger}")
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
        "activation_checkpointing": checkpoint_share(recipe) > 0,  # a share below 1: llmtune.training.run
        "bf16": bf16,
        "fp16": fp16,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": None,  # llmtune.training.checkpoints rotates sealed checkpoints by step instead
        "eval_strategy": "steps" if has_eval and t.eval_steps else "no",
        "eval_steps": t.eval_steps,
        "report_to": list(t.report_to) or "none",
        "run_name": Path(recipe.output.dir).name,  # the trackers' name for the run
        "disable_tqdm": not console.live_progress(),
        "dataloader_pin_memory": cuda,
        "use_cpu": not cuda,  # without CUDA, launched processes join a gloo group (llmtune.training.launch)
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
