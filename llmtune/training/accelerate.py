"""Multi-process settings as the memory estimate sees them: read an accelerate config into a Sharding.

`llmtune plan` uses it to divide weights, gradients and optimizer states over the processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from llmtune.errors import UserError
from llmtune.recipe import shipped_file
from llmtune.schema import Recipe

ShardKind = Literal["none", "ddp", "zero1", "zero2", "zero3", "fsdp"]


@dataclass(frozen=True)
class Sharding:
    """How a multi-process run splits its state: what is divided over `nproc` and what lives on the CPU."""

    kind: ShardKind = "none"
    nproc: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def label(self) -> str:
        names = {"none": "single process", "ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}
        name = names.get(self.kind, "FSDP2 full shard")
        offload = [w for w, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on]
        suffix = f" + CPU offload of {' and '.join(offload)}" if offload else ""
        return f"{name}{suffix}" + (f" over {self.nproc} processes" if self.nproc > 1 else "")

    @property
    def deepspeed(self) -> bool:
        return self.kind in ("zero1", "zero2", "zero3")

    @property
    def shards_states(self) -> bool:
        """Optimizer states (and fp32 master weights) divided over processes."""
        return self.kind in ("zero1", "zero2", "zero3", "fsdp")

    @property
    def shards_grads(self) -> bool:
        return self.kind in ("zero2", "zero3", "fsdp")

    @property
    def shards_weights(self) -> bool:
        return self.kind in ("zero3", "fsdp")


def find_accelerate_config(ref: str | Path) -> Path:
    """An accelerate config given as a path or as a shipped one's name (`accelerate/zero3`, or the checkout's
    `recipes/accelerate/zero3.yaml` from any directory); a local file wins. A missing one is a UserError."""
    local = Path(ref)
    found = local if local.is_file() else shipped_file(str(ref), ".yaml")
    if found is None:
        raise UserError(
            f"train.accelerate_config: {ref} not found, nor a shipped config of that name "
            "(shipped: accelerate/ddp, accelerate/zero2, accelerate/zero3, accelerate/zero3_offload, accelerate/fsdp2)"
        )
    return found


def deepspeed_file_args(config_file: Path) -> list[str]:
    """`--deepspeed_config_file ABS` when the config names a DeepSpeed JSON that is not found from the working
    directory but lies beside the config (a shipped config used outside a checkout); else nothing."""
    named = ((read_accelerate_config(config_file).get("deepspeed_config") or {}).get("deepspeed_config_file")) or ""
    beside = config_file.parent / Path(named).name
    if not named or Path(named).is_file() or not beside.is_file():
        return []
    return ["--deepspeed_config_file", str(beside.resolve())]


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    """The accelerate config file as a mapping; a missing or malformed file is a UserError naming the key."""
    file = find_accelerate_config(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"train.accelerate_config: {file} is not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"train.accelerate_config: {file} must be a mapping of accelerate settings")
    return data


def _deepspeed_stage(config: dict[str, Any], origin: Path) -> tuple[int, bool, bool]:
    ds = config.get("deepspeed_config") or {}
    ds_file = ds.get("deepspeed_config_file")
    if ds_file:
        import json

        ds_path = Path(ds_file) if Path(ds_file).is_file() else origin.parent / Path(ds_file).name
        try:
            zero = json.loads(ds_path.read_text(encoding="utf-8")).get("zero_optimization", {})
        except (OSError, ValueError) as exc:
            raise UserError(f"train.accelerate_config: cannot read deepspeed_config_file {ds_path} ({exc})") from None
        off_opt = (zero.get("offload_optimizer") or {}).get("device", "none")
        off_par = (zero.get("offload_param") or {}).get("device", "none")
        return int(zero.get("stage", 0)), off_opt not in ("none", None), off_par not in ("none", None)
    stage = int(ds.get("zero_stage", 0))
    return stage, ds.get("offload_optimizer_device", "none") != "none", ds.get("offload_param_device", "none") != "none"


def sharding_from_config(path: str | Path | None, nproc: int) -> Sharding:
    """Sharding of a run with `nproc` processes and an optional accelerate config (none: plain DDP)."""
    if path is None:
        return Sharding("ddp" if nproc > 1 else "none", nproc)
    config = read_accelerate_config(path)
    kind = str(config.get("distributed_type", "NO")).upper()
    if kind == "DEEPSPEED":
        stage, off_opt, off_par = _deepspeed_stage(config, find_accelerate_config(path))
        names: dict[int, ShardKind] = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}
        if stage not in names:
            raise UserError(f"train.accelerate_config: {path}: zero_stage must be 0, 1, 2 or 3 (got {stage})")
        return Sharding(names[stage], nproc, off_opt, off_par and stage == 3)
    if kind == "FSDP":
        fsdp = config.get("fsdp_config") or {}
        offload = bool(fsdp.get("fsdp_offload_params", False))
        if not fsdp.get("fsdp_reshard_after_forward", True):
            return Sharding("zero2", nproc, offload, False)
        return Sharding("fsdp", nproc, offload, offload)
    return Sharding("ddp" if nproc > 1 else "none", nproc)


def _check_static(recipe: Recipe, sharding: Sharding, config: dict[str, Any], path: str) -> None:
    """Combinations known to fail at the first step, refused while the recipe is read."""
    method = recipe.method.kind
    if method == "qlora" and sharding.shards_weights:
        raise UserError(
            f"train.accelerate_config: {path} shards parameters ({sharding.label.split(' over')[0]}), which cannot "
            "shard the 4-bit base llmtune loads for method.kind qlora (that needs zero3_init_flag, "
            "bnb_4bit_quant_storage equal to the model dtype and no fp32 upcast); use recipes/accelerate/zero2.yaml "
            "or ddp.yaml with qlora, or method.kind lora with ZeRO-3"
        )
    ds = config.get("deepspeed_config") or {}
    if sharding.deepspeed and ds.get("deepspeed_config_file") and recipe.train.optimizer:
        raise UserError(
            f"train.optimizer is {recipe.train.optimizer!r} but {path} names a DeepSpeed config whose optimizer "
            "DeepSpeed builds itself (CPU Adam when offloading); remove train.optimizer"
        )
    if sharding.offload_optimizer and sharding.deepspeed and not ds.get("deepspeed_config_file"):
        raise UserError(
            f"train.accelerate_config: {path} offloads the optimizer without a DeepSpeed optimizer section; DeepSpeed "
            "refuses a torch optimizer with ZeRO-Offload; use recipes/accelerate/zero3_offload.yaml"
        )


def _check_hardware(recipe: Recipe, sharding: Sharding, path: str | None) -> None:
    """What this machine must have: deepspeed installed, CUDA for DeepSpeed, enough GPUs (FSDP2 also runs on CPU
    processes over gloo, see llmtune.training.sharded)."""
    from llmtune.errors import require_module
    from llmtune.modeling import has_cuda

    if sharding.deepspeed:
        require_module("deepspeed", f"train.accelerate_config: {path} (DeepSpeed)")
    cuda = has_cuda()
    if sharding.deepspeed and not cuda:
        raise UserError(f"train.accelerate_config: {path} ({sharding.label}) needs CUDA GPUs; on CPU leave it unset")
    if cuda:
        import torch

        if recipe.train.nproc > torch.cuda.device_count():
            raise UserError(
                f"train.nproc is {recipe.train.nproc} but this machine has {torch.cuda.device_count()} GPUs"
            )


def check_launch(
    recipe: Recipe, num_machines: int = 1, main_process_ip: str | None = None, hardware: bool = True
) -> None:
    """Validate a multi-process setup before any process starts: config file, known incompatibilities, machine."""
    path = recipe.train.accelerate_config
    if num_machines > 1 and not main_process_ip:
        raise UserError("--num-machines above 1 needs --main-process-ip (the address of machine rank 0)")
    config = read_accelerate_config(path) if path else {}
    sharding = sharding_from_config(path, recipe.train.nproc)
    if path:
        _check_static(recipe, sharding, config, path)
    if hardware and (recipe.train.nproc > 1 or num_machines > 1 or path):
        _check_hardware(recipe, sharding, path)
