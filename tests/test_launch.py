"""Multi-process training on CPU (gloo): the same losses as one process with twice the batch, resume, a killed
process ending the run, the accelerate command line, the shipped configs and the launch checks."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtune.errors import UserError
from llmtune.recipe import load_recipe
from llmtune.training.accelerate import check_launch, sharding_from_config
from llmtune.training.launch import LaunchOptions, launch_argv

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "accelerate"
STEPS = 6


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmtune", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def pt_recipe(tiny_recipe, tmp_path: Path):
    """Packed pretraining on text: every row is exactly max_length tokens, so each half-batch has as many tokens."""

    def make(name: str, batch: int, **train) -> Path:
        return tiny_recipe(
            stage="pt", method="full", name=name, data={"max_length": 64},
            train={"max_steps": STEPS, "batch_size": batch, "save_steps": 3, "lr": 1.0e-3, **train},
        )  # fmt: skip

    return make


@pytest.mark.slow
def test_two_processes_match_one_with_twice_the_batch_and_resume(pt_recipe, tmp_path: Path) -> None:
    """accelerate shards the global batch order batch by batch: with 2 processes of batch 2, step k trains rows
    4k..4k+1 on rank 0 and 4k+2..4k+3 on rank 1, the rows one process of batch 4 trains at step k; gradients are
    averaged over the same tokens, so the loss curves agree to float rounding."""
    two = pt_recipe("two", batch=2)
    result = cli("pt", "--recipe", str(two), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    one = pt_recipe("one", batch=4)
    assert cli("pt", "--recipe", str(one)).returncode == 0
    curve2, curve1 = losses(tmp_path / "two-out"), losses(tmp_path / "one-out")
    assert len(curve2) == len(curve1) == STEPS and curve1[-1] < curve1[0]
    assert curve2 == pytest.approx(curve1, rel=1e-4)
    run_dir = tmp_path / "two-out"
    assert "world size 2" in (run_dir / "recipe.yaml").read_text().splitlines()[0]
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    assert load_recipe(run_dir / "recipe.yaml").train.nproc == 2

    resumed = tmp_path / "resumed-out"
    shutil.copytree(run_dir, resumed, ignore=shutil.ignore_patterns(f"checkpoint-{STEPS}"))
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", "0",  # a free port: not 29500, which another test may be taking at this moment
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llmtune", "pt", "--recipe", str(two),
         "--set", f"output.dir={resumed}", "--resume"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert losses(resumed) == pytest.approx(curve2, rel=1e-4)


@pytest.mark.slow
def test_killed_process_ends_the_run_with_a_message(pt_recipe, tmp_path: Path) -> None:
    import psutil

    recipe = pt_recipe("killed", batch=2, max_steps=100_000, save_steps=100_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "pt", "--recipe", str(recipe), "--nproc", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = tmp_path / "killed-out" / "metrics.jsonl"
    try:
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if _local_rank(p) == "1"]
        assert len(workers) == 1
        workers[0].send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None)
    assert "Signal 9 (SIGKILL)" in stderr and "the distributed run failed" in stderr


def _local_rank(process) -> str | None:
    import psutil

    try:
        return process.environ().get("LOCAL_RANK")
    except psutil.Error:
        return None


def test_launch_argv_passes_multi_node_flags_to_accelerate(tiny_recipe) -> None:
    from accelerate.commands.launch import launch_command_parser

    recipe = load_recipe(tiny_recipe(), ["train.nproc=4", f"train.accelerate_config={CONFIGS / 'zero3.yaml'}"])
    options = LaunchOptions(num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29555)
    argv = launch_argv("sft", ["--recipe", "r.yaml"], recipe, options)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(argv[3:])
    assert (args.num_processes, args.num_machines, args.machine_rank) == (8, 2, 1)
    assert (args.main_process_ip, args.main_process_port) == ("10.0.0.1", 29555)
    assert args.config_file == str(CONFIGS / "zero3.yaml") and args.module
    assert [args.training_script, *args.training_script_args] == ["llmtune", "sft", "--recipe", "r.yaml"]
    one_machine = launch_command_parser().parse_args(launch_argv("sft", [], recipe, LaunchOptions())[3:])
    assert one_machine.main_process_port == 0  # accelerate picks a free port; 29500 races with a concurrent run


def test_shipped_configs_load_in_accelerate_and_shard_as_named() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {
        "ddp": ("ddp", False, False), "zero2": ("zero2", False, False), "zero3": ("zero3", False, False),
        "zero3_offload": ("zero3", True, True), "fsdp2": ("fsdp", False, False),
    }  # fmt: skip
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(expected)
    for name, (kind, off_opt, off_par) in expected.items():
        load_config_from_file(str(CONFIGS / f"{name}.yaml"))
        sharding = sharding_from_config(CONFIGS / f"{name}.yaml", 2)
        assert (sharding.kind, sharding.offload_optimizer, sharding.offload_params) == (kind, off_opt, off_par)


@pytest.mark.parametrize(
    ("method", "config", "sets", "message"),
    [
        ("qlora", "zero3.yaml", [], "cannot shard the 4-bit base"),
        ("qlora", "fsdp2.yaml", [], "cannot shard the 4-bit base"),
        ("lora", "zero3_offload.yaml", ["train.optimizer=adamw_torch"], "remove train.optimizer"),
        ("lora", "nowhere.yaml", [], "not found"),
    ],
)
def test_known_incompatibilities_fail_at_validation(tiny_recipe, method, config, sets, message) -> None:
    path = tiny_recipe(method=method)
    overrides = [f"train.accelerate_config={CONFIGS / config}", "train.nproc=2", *sets]
    with pytest.raises(UserError, match=message):
        check_launch(load_recipe(path, overrides), hardware=False)
    result = cli("recipe", "validate", str(path), *(x for s in overrides for x in ("--set", s)), timeout=120)
    assert result.returncode == 2 and message in result.stderr.replace("\n", " ")


def test_machine_checks_name_what_is_missing(tiny_recipe) -> None:
    recipe = load_recipe(tiny_recipe(), [f"train.accelerate_config={CONFIGS / 'zero2.yaml'}", "train.nproc=2"])
    with pytest.raises(UserError, match="pip install deepspeed"):
        check_launch(recipe)
    fsdp = load_recipe(tiny_recipe(), [f"train.accelerate_config={CONFIGS / 'fsdp2.yaml'}", "train.nproc=2"])
    check_launch(fsdp)  # FSDP2 runs on CPU processes too (tests/test_fsdp.py)
    with pytest.raises(UserError, match="--main-process-ip"):
        check_launch(load_recipe(tiny_recipe()), num_machines=2)
