"""Crash and resume: a run killed at random moments (mid-step, mid-checkpoint-save) or stopped by a full disk keeps
its last complete checkpoint loadable, and `--resume` ends with exactly the weights and losses of a run never
interrupted.

The chain of interruptions is seeded; `make soak` runs a longer one (LLMTUNE_SOAK_KILLS kills). The read-only and
no-space cases use a real tmpfs where this machine lets the tests mount one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from freeze import run_slices, step_until
from safetensors.torch import load_file

from llmtune.recipe import load_recipe
from llmtune.training.checkpoints import SEAL, checkpoint_dirs, is_complete, last_complete
from llmtune.training.run import run
from llmtune.training.rundir import checkpoint_step

TRAIN = {"max_steps": 12, "batch_size": 4, "lr": 3.0e-3, "scheduler": "cosine", "logging_steps": 1,
         "save_steps": 2, "save_total_limit": 2, "seed": 0}  # fmt: skip
SOAK_KILLS = int(os.environ.get("LLMTUNE_SOAK_KILLS", "0"))


def write_recipe(path: Path, model: Path, data: Path, out: Path, cache: Path) -> Path:
    """A full fine-tune (so checkpoints are large enough to be caught mid-save) running two epochs of 32 rows."""
    recipe = {
        "stage": "sft",
        "model": {"name_or_path": str(model)},
        "method": {"kind": "full"},
        "data": {"train": [{"path": str(data / "sft_messages.jsonl")}], "max_length": 128, "cache_dir": str(cache)},
        "train": TRAIN,
        "output": {"dir": str(out), "overwrite": True},
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Reference:
    weights: dict[str, torch.Tensor]
    losses: list[float]
    final_loss: float


def loss_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def reference(workdir: Path, tiny_model_dir: Path, tiny_data_dir: Path) -> Reference:
    """The same recipe run once without interruption, in this process."""
    path = write_recipe(workdir / "ref.yaml", tiny_model_dir, tiny_data_dir, workdir / "ref", workdir / "cache")
    result = run(load_recipe(path))
    out = Path(result.output_dir)
    rows = loss_rows(out)
    assert [row["step"] for row in rows] == list(range(1, 13))
    return Reference(load_file(out / "model.safetensors"), [row["loss"] for row in rows], result.final_loss)


def start(recipe: Path, resume: bool, file_limit: int | None = None) -> subprocess.Popen:
    """`llmtune sft` in a child process; with file_limit, no file it writes may grow beyond that many bytes."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    cmd = [sys.executable, "-m", "llmtune", "sft", "--recipe", str(recipe), *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=recipe.parent,
                            preexec_fn=limit if file_limit else None)  # fmt: skip


def logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines if line.endswith("}")]
    return max(steps, default=0)


def wait_until(proc: subprocess.Popen, ready, timeout: float = 300.0, poll: float = 0.001) -> bool:
    """Poll until ready() (True) or the process exits (False)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(poll)
    return True


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def digest(path: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()


def assert_loadable(checkpoint: Path) -> None:
    """Every part of a checkpoint that a resume reads back loads."""
    assert is_complete(checkpoint), checkpoint
    assert load_file(checkpoint / "model.safetensors")
    assert torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert torch.load(checkpoint / "scheduler.pt", weights_only=True)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == checkpoint_step(checkpoint)


@dataclass
class Chain:
    """What a chain of interrupted attempts went through."""

    kills: int = 0
    mid_save: int = 0
    disk_full: int = 0
    log: list[str] = field(default_factory=list)


def interrupt_once(recipe: Path, out: Path, how: str, rng: random.Random, chain: Chain) -> bool:
    """Start (or resume) the run and interrupt it as `how` says; False when it finished first."""
    before = last_complete(out)
    before_digest = digest(before) if before else None
    stale = {p for _, p in checkpoint_dirs(out) if not is_complete(p)}
    resume_step = checkpoint_step(before) if before else 0
    proc = start(recipe, resume=before is not None, file_limit=200_000 if how == "disk-full" else None)
    if how == "disk-full":
        _, err = proc.communicate()
        assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
        assert "could not write " in err and "File too large" in err and "--resume" in err, err
        chain.disk_full += 1
        left = {p for _, p in checkpoint_dirs(out) if not is_complete(p)}
        assert left <= stale, "the checkpoint it failed to write was removed"
    elif how == "final-save":
        if not wait_until(proc, lambda: logged_step(out) >= TRAIN["max_steps"], poll=0.005):
            return False
        if not step_until(proc, lambda: (out / ".final-tmp").exists()):
            return False
        kill(proc)
        chain.kills += 1
    elif how == "mid-save":
        unsealed = lambda: any(s > resume_step and not (p / SEAL).exists() for s, p in checkpoint_dirs(out))  # noqa: E731
        if not wait_until(proc, lambda: logged_step(out) > resume_step, poll=0.005):
            return False
        if not step_until(proc, unsealed):
            return False
        kill(proc)
        caught = [p for s, p in checkpoint_dirs(out) if s > resume_step and not is_complete(p)]
        chain.mid_save += bool(caught)
        chain.kills += 1
    else:
        # a random moment a few steps on: logged step `target`, then a random number of slices of run time (each
        # much shorter than a step, so the run cannot reach its end and the chain keeps its planned length)
        target, slices = min(resume_step + rng.randint(1, 3), TRAIN["max_steps"] - 1), rng.randint(0, 60)
        if not wait_until(proc, lambda: logged_step(out) >= target, poll=0.005):
            return False
        if not run_slices(proc, slices):
            return False
        kill(proc)
        chain.kills += 1
    after = last_complete(out)
    chain.log.append(f"{how}: from step {resume_step}, last complete now {after.name if after else None}")
    if before is not None:
        assert after is not None and checkpoint_step(after) >= resume_step, chain.log
        if after == before:
            assert digest(after) == before_digest, "the previous checkpoint changed"
    if after is not None:
        assert_loadable(after)
    return True


def run_chain(recipe: Path, out: Path, plan: list[str], seed: int) -> Chain:
    """Interrupt the run once per entry of `plan`, then resume it to the end."""
    rng, chain = random.Random(seed), Chain()
    for how in plan:
        if not interrupt_once(recipe, out, how, rng, chain):
            break
    final = start(recipe, resume=last_complete(out) is not None)
    _, err = final.communicate()
    assert final.returncode == 0, err[-3000:]
    return chain


def assert_same_as_reference(out: Path, reference: Reference) -> None:
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == reference.weights.keys()
    assert all(torch.equal(weights[k], reference.weights[k]) for k in weights), "final weights differ"
    rows = loss_rows(out)
    assert [row["step"] for row in rows] == list(range(1, 13)), "one loss row per step, none repeated"
    assert [row["loss"] for row in rows] == pytest.approx(reference.losses, abs=1e-6)
    assert json.loads((out / "summary.json").read_text())["final_loss"] == pytest.approx(reference.final_loss, abs=1e-6)
    assert all(is_complete(p) for _, p in checkpoint_dirs(out)) and len(checkpoint_dirs(out)) <= 2


def test_kills_mid_step_and_mid_save_and_a_full_disk_then_resume_give_the_uninterrupted_run(
    workdir: Path, reference: Reference, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    out = workdir / "chain"
    recipe = write_recipe(workdir / "chain.yaml", tiny_model_dir, tiny_data_dir, out, workdir / "cache")
    chain = run_chain(recipe, out, ["random", "mid-save", "disk-full", "random", "final-save"], seed=0)
    print(chain)
    assert chain.kills >= 4 and chain.mid_save >= 1 and chain.disk_full == 1, chain
    assert_same_as_reference(out, reference)


def test_resuming_a_finished_run_trains_no_step_past_the_end(workdir: Path, reference: Reference) -> None:
    """Resumed from its last checkpoint (as after a kill during the final save), a run does not train on."""
    out = workdir / "finished"
    shutil.copytree(workdir / "ref", out)
    (out / "summary.json").unlink()
    recipe = workdir / "finished.yaml"
    recipe.write_text((workdir / "ref.yaml").read_text().replace(str(workdir / "ref"), str(out)))
    result = run(load_recipe(recipe), resume=True)
    assert result.steps == 12 and last_complete(out).name == "checkpoint-12"
    assert_same_as_reference(out, reference)


def test_a_torn_checkpoint_is_never_resumed_from(workdir: Path, reference: Reference) -> None:
    """A checkpoint whose file lost its tail (power cut before the data reached the disk) fails its seal."""
    out = workdir / "ref"
    newest = last_complete(out)
    older = [p for _, p in checkpoint_dirs(out) if p != newest]
    optimizer = newest / "optimizer.pt"
    data = optimizer.read_bytes()
    optimizer.write_bytes(data[: len(data) // 2])
    try:
        assert not is_complete(newest) and last_complete(out) == older[-1]
    finally:
        optimizer.write_bytes(data)
    assert last_complete(out) == newest


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MB tmpfs: room for one checkpoint of the tiny model, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the file-size limit case still runs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def test_no_space_left_then_read_only_output_then_resume(
    small_disk: Path, workdir: Path, reference: Reference, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    out = small_disk / "run"
    recipe = write_recipe(workdir / "disk.yaml", tiny_model_dir, tiny_data_dir, out, workdir / "cache")

    full = start(recipe, resume=False)
    _, err = full.communicate()
    assert full.returncode == 2 and "Traceback" not in err, err[-3000:]
    message = " ".join(line for line in err.splitlines() if line.startswith("error:"))
    assert f"could not write checkpoint-4 to {out} (No space left on device" in message, err[-3000:]
    assert "the last complete checkpoint, checkpoint-2, is intact" in message and "--resume" in message
    assert [p.name for _, p in checkpoint_dirs(out)] == ["checkpoint-2"]
    assert_loadable(out / "checkpoint-2")
    kept = digest(out / "checkpoint-2")

    remount(small_disk, "ro")
    read_only = start(recipe, resume=True)
    _, err = read_only.communicate()
    assert read_only.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "(Read-only file system" in err and "make it writable" in err, err[-3000:]
    assert digest(out / "checkpoint-2") == kept

    remount(small_disk, "rw,size=64m")
    resumed = start(recipe, resume=True)
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err[-3000:]
    assert_same_as_reference(out, reference)


@pytest.mark.skipif(SOAK_KILLS == 0, reason="make soak sets LLMTUNE_SOAK_KILLS")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_soak_many_random_kills(seed: int, workdir: Path, reference: Reference, tiny_model_dir: Path,
                                tiny_data_dir: Path) -> None:  # fmt: skip
    out = workdir / f"soak-{seed}"
    recipe = write_recipe(workdir / f"soak-{seed}.yaml", tiny_model_dir, tiny_data_dir, out, workdir / "cache")
    rng = random.Random(seed)
    plan = [rng.choice(["random", "random", "mid-save", "disk-full"]) for _ in range(SOAK_KILLS - 1)] + ["final-save"]
    chain = run_chain(recipe, out, plan, seed=seed)
    print(f"soak seed {seed}: {chain.kills} kills ({chain.mid_save} mid-save), {chain.disk_full} disk-full; "
          f"{len(plan) - chain.kills - chain.disk_full} planned interruptions came after the run ended")  # fmt: skip
    assert_same_as_reference(out, reference)
