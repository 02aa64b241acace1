"""Every local path a recipe names, checked before anything is imported or fetched (`llmtune recipe validate`).

A missing local path is a UserError naming its key; a Hub id is only reported, since fetching it is a download.
Relative paths are read from the working directory, as training reads them. `train.accelerate_config` is checked
by `training.accelerate.check_launch`, which also accepts a shipped config's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llmtune.errors import UserError
from llmtune.hub.local import looks_like_path
from llmtune.schema import Recipe

TEMPLATE_SUFFIXES = (".jinja", ".j2")


def named_paths(recipe: Recipe) -> Iterator[tuple[str, str]]:
    """(key, value) for each field that holds a local path or a Hub id."""
    yield "model.name_or_path", recipe.model.name_or_path
    if recipe.model.adapter:
        yield "model.adapter", recipe.model.adapter
    template = recipe.model.chat_template
    if template and "{" not in template and ("/" in template or template.endswith(TEMPLATE_SUFFIXES)):
        yield "model.chat_template", template  # a file; a bare name is a shipped template, checked when used
    for section in ("train", "eval"):
        for i, source in enumerate(getattr(recipe.data, section)):
            yield f"data.{section}[{i}].path", source.path
    if recipe.stage == "dpo" and recipe.dpo.reference:
        yield "dpo.reference", recipe.dpo.reference


def check_recipe_paths(recipe: Recipe, origin: str) -> list[tuple[str, str]]:
    """Raise one UserError naming every missing local path; return the (key, Hub id) pairs not fetched here."""
    missing, hub_ids = [], []
    for key, value in named_paths(recipe):
        if Path(value).expanduser().exists():
            continue
        if looks_like_path(value) or key == "model.chat_template":
            missing.append(f"{key}: {value} does not exist{_hint(value)}")
        else:
            hub_ids.append((key, value))
    if missing:
        raise UserError(f"{origin}: {'; '.join(missing)} (relative paths are read from {Path.cwd()})")
    return hub_ids


def _hint(value: str) -> str:
    """What would create a missing path the shipped recipes name."""
    parts = Path(value).parts
    if parts[:2] == ("data", "builtin"):
        return " (`llmtune synth-data data/builtin` writes the built-in data)"
    if parts[:1] == ("runs",):
        return " (an earlier run's output.dir? train that recipe first)"
    return ""
