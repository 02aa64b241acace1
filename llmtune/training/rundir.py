"""The run directory: refusing to mix runs, moving old contents aside safely, finding checkpoints to resume,
and writing the resolved recipe next to the outputs.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmtune import console
from llmtune.errors import UserError
from llmtune.outdir import refuse_nonempty
from llmtune.schema import Recipe

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
LIBRARIES = ("llmtune", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


def last_checkpoint(out: Path) -> Path | None:
    """The highest complete checkpoint-N in `out` (complete: sealed, see llmtune.training.checkpoints)."""
    from llmtune.training.checkpoints import last_complete

    return last_complete(out)


def check_output_dir(out: Path, overwrite: bool, resume: bool) -> Path | None:
    """Refuse to mix runs: a non-empty dir needs overwrite or resume. Returns the checkpoint to resume from."""
    if out.exists() and not out.is_dir():
        refuse_nonempty(out, overwrite, "output.dir")
    if resume:
        checkpoint = last_checkpoint(out)
        if checkpoint is None:
            raise UserError(
                f"--resume: {out} has no checkpoint to resume from (no complete checkpoint-N); run without --resume "
                "(with --set output.overwrite=true to replace what is there)"
            )
        return checkpoint
    refuse_nonempty(
        out,
        overwrite,
        "output.dir",
        "pass --set output.overwrite=true to replace it, or --resume to continue its last checkpoint",
    )
    return None


@contextmanager
def output_guard(out: Path, replace: bool, is_main: bool = True) -> Iterator[None]:
    """Move old contents aside while the new run trains; delete them after it succeeds, restore them if it fails."""
    previous = None
    if is_main and replace and out.is_dir() and any(out.iterdir()):
        previous = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(previous)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if previous is not None:
            shutil.rmtree(out, ignore_errors=True)
            previous.rename(out)
            console.warn(f"the run failed; the previous contents of {out} are restored")
        elif created and is_main and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    if previous is not None:
        shutil.rmtree(previous)


RESUMABLE_CHANGES = (
    "train.max_steps",
    "train.epochs",
    "train.logging_steps",
    "train.save_steps",
    "train.eval_steps",
    "train.save_total_limit",
    "train.report_to",
    "output.",
    "train.nproc",
    "data.cache_dir",
    "hub.",
)
"""Recipe keys a resumed run may change: when it stops, how often it logs, saves and evaluates, where the run
directory is, how many processes share the batch (DDP), where caches and downloads come from.
Anything else (model, method, shapes, data, optimisation) changes what the checkpoint holds."""


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def recipe_changes(out: Path, recipe: Recipe) -> list[str]:
    """On --resume: the keys in which `recipe` differs from the one the run was started with (DIR/recipe.yaml).

    A change outside RESUMABLE_CHANGES is refused with every such key named; allowed changes are returned."""
    from llmtune.recipe import load_recipe

    saved_path = out / "recipe.yaml"
    if not saved_path.is_file():
        return []
    try:
        saved = _flat(load_recipe(saved_path).model_dump(mode="json"))
    except UserError as exc:
        raise UserError(f"--resume: cannot read the run's recipe {saved_path} ({exc})") from None
    given = _flat(_redacted(recipe).model_dump(mode="json"))
    changed = sorted(k for k in saved.keys() | given.keys() if saved.get(k) != given.get(k))
    refused = [k for k in changed if not k.startswith(RESUMABLE_CHANGES)]
    if refused:
        listed = "; ".join(f"{k}: {saved.get(k)!r} -> {given.get(k)!r}" for k in refused)
        raise UserError(
            f"--resume: the recipe differs from the one {out} was started with ({saved_path}) in {listed}. "
            "A checkpoint holds weights and optimizer state for the original settings, so these cannot change on "
            f"resume; resume with the run's own recipe, or start a new run. Keys that may change: "
            f"{', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in RESUMABLE_CHANGES)}"
        )
    return changed


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _redacted(recipe: Recipe) -> Recipe:
    """The recipe without secrets: credentials in a hub endpoint URL (https://user:token@host) are dropped."""
    from urllib.parse import urlsplit

    endpoint = recipe.hub.endpoint
    parts = urlsplit(endpoint) if endpoint else None
    if parts is None or "@" not in parts.netloc:
        return recipe
    clean = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    return recipe.model_copy(update={"hub": recipe.hub.model_copy(update={"endpoint": clean})})


def write_recipe(out: Path, recipe: Recipe, world_size: int) -> None:
    """DIR/recipe.yaml: the resolved recipe (reloadable with load_recipe), with versions in a comment header."""
    from llmtune.recipe import dump_recipe

    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    header = f"# written by llmtune at {time.strftime('%Y-%m-%d %H:%M:%S')}; world size {world_size}\n# {versions}\n"
    path = out / "recipe.yaml"
    path.write_text(header + dump_recipe(_redacted(recipe)), encoding="utf-8")


def truncate_metrics(path: Path, up_to_step: int) -> None:
    """On resume, drop rows logged after the checkpoint (those steps run again) and any half-written row."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut short by the kill
        if row.get("step", 0) <= up_to_step:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


def checkpoint_step(checkpoint: Path) -> int:
    match = CHECKPOINT_RE.match(checkpoint.name)
    if match is None:
        raise ValueError(f"not a checkpoint directory: {checkpoint}")
    return int(match.group(1))
