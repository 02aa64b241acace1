"""Checkpoints that survive a crash: sealed once complete, rotated by step, and save failures made clear.

transformers writes checkpoint-N file by file in place (Trainer._save_checkpoint, with no temporary directory), so
a kill or a full disk during a save leaves a directory that looks like a checkpoint and is not one. Here a checkpoint
counts only once its seal is in place: SEAL lists the size of every file, is written after those files are flushed
to disk, and is itself written aside and renamed, so it exists whole or not at all. `--resume` takes the newest
checkpoint whose seal matches its files and removes unsealed ones; rotation (save_total_limit) counts sealed
checkpoints by step, never by modification time. A failed write (disk full, file too large, unwritable directory)
becomes one UserError naming the directory and the last complete checkpoint, which is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.errors import UserError
from llmtune.outdir import apply_umask

if TYPE_CHECKING:
    from transformers import Trainer

SEAL = "checkpoint_complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed")
FULL_BELOW = 16e6  # bytes: a write that failed with less than this left was cut short by a full disk


def checkpoint_dirs(out: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint-N directory in `out`, sealed or not, oldest first."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def is_complete(checkpoint: Path) -> bool:
    """True when the seal is there and every file it lists has the size it records."""
    try:
        sizes = json.loads((checkpoint / SEAL).read_text(encoding="utf-8"))["files"]
        return bool(sizes) and all((checkpoint / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def last_complete(out: Path) -> Path | None:
    """The sealed checkpoint with the highest step, if any."""
    return next((path for _, path in reversed(checkpoint_dirs(out)) if is_complete(path)), None)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(checkpoint: Path) -> None:
    """Flush the checkpoint's files to disk, then write its seal aside and rename it into place."""
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != SEAL and not p.name.endswith(".tmp"))
    for path in files:
        _fsync(path)
    sizes = {str(p.relative_to(checkpoint)): p.stat().st_size for p in files}
    tmp = checkpoint / f"{SEAL}.tmp"
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump({"step": int(checkpoint.name.rsplit("-", 1)[1]), "files": sizes}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, checkpoint / SEAL)
    _fsync(checkpoint)


def _remove(checkpoint: Path) -> None:
    """Unseal first, so a kill in the middle of the removal leaves an unsealed (ignored) directory."""
    (checkpoint / SEAL).unlink(missing_ok=True)
    shutil.rmtree(checkpoint, ignore_errors=True)


def rotate(out: Path, keep: int | None, protect: str | None = None) -> None:
    """Delete sealed checkpoints older than the newest `keep` (None keeps all), except `protect` (the best one)."""
    if keep is None:
        return
    sealed = [path for _, path in checkpoint_dirs(out) if is_complete(path)]
    for path in sealed[: max(len(sealed) - keep, 0)]:
        if protect is None or Path(protect).resolve() != path.resolve():
            _remove(path)


def remove_incomplete(out: Path) -> None:
    """Before a resume: delete checkpoint dirs without a valid seal (a save cut short), saying which."""
    for _, path in checkpoint_dirs(out):
        if not is_complete(path):
            console.warn(f"removing {path}: an incomplete checkpoint (its save was interrupted)")
            _remove(path)


def _free_bytes(out: Path) -> float:
    """Bytes this process may still write on out's filesystem (root may use the reserved blocks too)."""
    try:
        fs = os.statvfs(out)
    except OSError:
        return float("inf")
    return (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize


def _write_failure(exc: BaseException, out: Path) -> str | None:
    """Why a write failed, if `exc` is a failed write (OSError, safetensors, torch's archive writer); else None.

    torch's writer reports a short write without its errno ("unexpected pos ..."): a nearly full disk explains it."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    torch_write = isinstance(exc, RuntimeError) and any(s in str(exc) for s in TORCH_WRITE_FAILURES)
    if not (torch_write or type(exc).__name__ == "SafetensorError"):
        return None
    if _free_bytes(out) < FULL_BELOW:
        return "No space left on device"
    return str(exc).strip().splitlines()[0]


@contextlib.contextmanager
def write_errors(out: Path, what: str, partial: Path | None = None) -> Iterator[None]:
    """Turn a failed write of `what` into one UserError naming `out` and the last complete checkpoint;
    `partial` (what was being written) is removed so it cannot be mistaken for a complete one."""
    try:
        yield
    except Exception as exc:
        reason = _write_failure(exc, out)
        if reason is None:
            raise
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        previous = last_complete(out)
        kept = f"the last complete checkpoint, {previous.name}, is intact" if previous else "no checkpoint was complete"
        raise UserError(
            f"could not write {what} to {out} ({reason}; {_free_bytes(out) / 1e6:,.1f} MB free there now); free space "
            f"on that disk or make it writable, then continue with --resume (or start over in another output.dir); "
            f"{kept}"
        ) from None


def resume_finished(trainer: Trainer, checkpoint: Path) -> Any | None:
    """For a checkpoint at the run's last step: its weights and state put in the trainer, and a TrainOutput, with no
    training; None when steps remain. transformers 5.23 resumed there trains one step past max_steps (its loop
    checks the step count only after a step), so a kill during the final save would change the result."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    target = trainer.args.max_steps if trainer.args.max_steps > 0 else state.max_steps
    if state.global_step < target:
        return None
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = state
    return TrainOutput(state.global_step, None, {})


def install(trainer: Trainer, out: Path, keep: int | None) -> None:
    """Make the trainer's checkpoint saves sealed, rotated by step and clear on failure.

    Trainer has no hook around a checkpoint save, and the stages build different trainer classes, so the bound
    `_save_checkpoint` of this one trainer is wrapped. Were transformers to rename it, reading it here fails at
    once; were it to stop calling it, no checkpoint would be sealed and the crash tests fail.
    """
    original = trainer._save_checkpoint

    def save_checkpoint(model: Any, trial: Any) -> None:
        path = out / f"checkpoint-{trainer.state.global_step}"
        main = trainer.is_world_process_zero()
        if main and path.is_dir():
            _remove(path)  # left by an interrupted save: never mix its files with the new ones
        trainer.accelerator.wait_for_everyone()
        with write_errors(out, path.name, partial=path if main else None):
            original(model, trial)
            trainer.accelerator.wait_for_everyone()
            if main:
                apply_umask(path)  # safetensors writes the weights 0600
                seal(path)
        if main:
            rotate(out, keep, protect=trainer.state.best_model_checkpoint)

    trainer._save_checkpoint = save_checkpoint
