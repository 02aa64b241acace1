"""Output directories, one way for every command: refuse to write over something that is not ours to replace,
and put a finished result in place so that a crash leaves either the old contents or the new, never a mix."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from llmtune.errors import UserError


def refuse_nonempty(out: Path, overwrite: bool, what: str, fix: str = "pass --overwrite to replace it") -> None:
    """Before anything is loaded: a file where a directory should go is an error, and so is a non-empty
    directory unless `overwrite`. `what` names the flag or key (--out, output.dir), `fix` says what to do."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{what}: {out} is a file, not a directory; choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{what}: {out} is not empty; choose an empty directory or {fix}")


def file_mode() -> int:
    """The mode a new file gets under the process's umask (0o644 under the usual 022)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def apply_umask(root: Path) -> None:
    """Give every file under `root` the umask's mode. safetensors writes weights 0600, so a model or adapter would
    be unreadable to the group and others who can read its config and tokenizer; our outputs are all one mode."""
    mode = file_mode()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def move_into_place(staging: Path, out: Path) -> None:
    """Rename a complete `staging` directory to `out` (its files given the umask's mode); old contents are moved
    aside first and restored if the rename fails, deleted once the new directory is in place."""
    apply_umask(staging)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        staging.rename(out)
        return
    backup = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    out.rename(backup)
    try:
        staging.rename(out)
    except BaseException:
        backup.rename(out)
        raise
    shutil.rmtree(backup, ignore_errors=True)
