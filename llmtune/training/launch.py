"""The one module that knows about `accelerate launch`: a training command asked for N processes runs itself again
under it, and the parent waits and passes the exit code on.

Inside a launched process (accelerate and torchrun set LOCAL_RANK and WORLD_SIZE) nothing is relaunched, so
`accelerate launch -m llmtune sft --recipe r.yaml` works as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from llmtune import console
from llmtune.errors import UserError
from llmtune.schema import Recipe

LAUNCH_MODULE = "accelerate.commands.launch"
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class LaunchOptions:
    """Command-line launch settings; nproc and accelerate_config fall back to the recipe's train block."""

    nproc: int | None = None
    accelerate_config: str | None = None
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None

    def overrides(self) -> list[str]:
        """--set entries that make the recipe say what the command line asked for (the child re-reads them)."""
        sets = [f"train.nproc={self.nproc}"] if self.nproc is not None else []
        return sets + ([f"train.accelerate_config={self.accelerate_config}"] if self.accelerate_config else [])


def inside_launch() -> bool:
    """True in a process started by accelerate launch, torchrun or mpirun."""
    env = os.environ
    return "LOCAL_RANK" in env or int(env.get("WORLD_SIZE", env.get("PMI_SIZE", "1")) or 1) > 1


def is_replica() -> bool:
    """A launched process other than the global main one (rank 0)."""
    return inside_launch() and int(os.environ.get("RANK", os.environ.get("PMI_RANK", "0")) or 0) != 0


def wants_launch(recipe: Recipe, options: LaunchOptions) -> bool:
    """Several processes, several machines, or an accelerate config (ZeRO-3 offload is useful on one GPU too)."""
    many = recipe.train.nproc > 1 or options.num_machines > 1 or recipe.train.accelerate_config is not None
    return many and not inside_launch()


def launch_argv(command: str, recipe_args: list[str], recipe: Recipe, options: LaunchOptions) -> list[str]:
    """`python -m accelerate.commands.launch ... -m llmtune <command> <recipe_args>` for this recipe."""
    from llmtune.modeling import has_cuda

    total = recipe.train.nproc * options.num_machines
    argv = [sys.executable, "-m", LAUNCH_MODULE, "--num_processes", str(total)]
    argv += ["--num_machines", str(options.num_machines), "--machine_rank", str(options.machine_rank)]
    if options.main_process_ip:
        argv += ["--main_process_ip", options.main_process_ip]
    if options.num_machines > 1 or options.main_process_port:
        argv += ["--main_process_port", str(options.main_process_port or DEFAULT_PORT)]
    else:  # one machine: a free port of accelerate's choosing, so that two runs started at once do not both take
        argv += ["--main_process_port", "0"]  # 29500 (accelerate checks it is free, then binds it a moment later)
    if recipe.train.accelerate_config:
        from llmtune.training.accelerate import deepspeed_file_args, find_accelerate_config

        config_file = find_accelerate_config(recipe.train.accelerate_config)
        argv += ["--config_file", str(config_file), *deepspeed_file_args(config_file)]
    else:
        argv += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if not has_cuda():
        argv += ["--monitor_interval", "0.5"]
    verbosity = {console.QUIET: ["-q"], console.VERBOSE: ["-v"]}.get(console.verbosity(), [])
    return [*argv, "-m", "llmtune", *verbosity, command, *recipe_args]


def child_env() -> dict[str, str]:
    """The launched processes' environment: on a machine without CUDA, CPU processes talking over gloo (with an
    FSDP config they shard over it, see llmtune.training.sharded)."""
    from llmtune.modeling import has_cuda

    env = dict(os.environ)
    if not has_cuda():
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def launch(command: str, recipe_args: list[str], recipe: Recipe, options: LaunchOptions) -> int:
    """Run the command under accelerate launch and wait; a failed or killed process ends the whole run."""
    from llmtune.training.accelerate import check_launch

    check_launch(recipe, options.num_machines, options.main_process_ip)
    argv = launch_argv(command, recipe_args, recipe, options)
    total = recipe.train.nproc * options.num_machines
    console.info(f"launching {total} processes with accelerate ({recipe.train.nproc} on this machine)")
    console.debug(" ".join(argv))
    try:
        code = subprocess.run(argv, env=child_env(), check=False).returncode
    except KeyboardInterrupt:
        raise UserError("interrupted; the launched processes were stopped") from None
    if code != 0:
        console.error(
            f"the distributed run failed (exit code {code}): a process raised an error or was killed, and "
            "accelerate stopped the others; the first failure is reported above"
        )
    return code
