"""FSDP2 inside a launched process: on CPU processes (gloo) too, and a final model gathered into one directory.

accelerate 1.15 turns FSDP on only for device process groups (`AcceleratorState` checks for MULTI_GPU, MULTI_XPU,
...); a CPU group (MULTI_CPU, gloo) silently falls back to DDP, although PyTorch's `fully_shard` shards and trains
on CPU over gloo. So when the launcher asked for FSDP (ACCELERATE_USE_FSDP) on CPU processes (ACCELERATE_USE_CPU),
the gloo group is presented to accelerate as a device group before the trainer builds its Accelerator, and
transformers is told to keep that state (`use_configured_state`) instead of resetting it. Everything else (wrapping,
sharded checkpoints, resume) is accelerate's and transformers' own FSDP2 path. tests/test_fsdp.py fails if a
release changes this (the run would fall back to DDP and write no sharded checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import PartialState
    from transformers import Trainer


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def fsdp_on_cpu() -> bool:
    """True in a process launched with an FSDP config on a machine without CUDA (llmtune sets ACCELERATE_USE_CPU)."""
    return _flag("ACCELERATE_USE_FSDP") and _flag("ACCELERATE_USE_CPU")


def process_state() -> PartialState:
    """The process group of this run; for FSDP on CPU, a gloo group that accelerate will shard over."""
    from accelerate import PartialState

    state = PartialState(cpu=_flag("ACCELERATE_USE_CPU"))
    if fsdp_on_cpu() and state.num_processes > 1:
        from accelerate.utils import DistributedType

        # read by AcceleratorState: a device type is what lets it choose FSDP; the device stays the CPU
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return state


def trainer_args(common: dict[str, Any]) -> dict[str, Any]:
    """The trainer keywords, with transformers told to keep the state above (it resets it otherwise)."""
    if not fsdp_on_cpu():
        return common
    accelerator_config = {**(common.get("accelerator_config") or {}), "use_configured_state": True}
    return {**common, "accelerator_config": accelerator_config}


def weights_split(trainer: Trainer) -> bool:
    """True when each process holds only part of the weights (FSDP, DeepSpeed ZeRO-3): every forward pass then
    gathers them from all processes, so a generation after training must run on every process, not on the main
    one alone (which would wait for peers that have finished, and fail or hang)."""
    if trainer.is_fsdp_enabled:
        return True
    if trainer.is_deepspeed_enabled:
        from transformers.integrations import is_deepspeed_zero3_enabled

        return is_deepspeed_zero3_enabled()
    return False


def save_model(trainer: Trainer, out: Path) -> None:
    """Save the model (or adapter) as plain safetensors: under FSDP every process joins the gather of the full
    state dict, which is what transformers does at save time only for FULL_STATE_DICT configs."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
