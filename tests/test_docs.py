"""The recipe reference is generated from the schema; this keeps the committed copy current."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from llmtune import docgen

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_reference_is_current() -> None:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        docgen.main()
    committed = (ROOT / "docs" / "recipes.md").read_text()
    assert buffer.getvalue() == committed, "docs/recipes.md is stale: run `python -m llmtune.docgen > docs/recipes.md`"


def test_every_schema_field_is_documented() -> None:
    text = (ROOT / "docs" / "recipes.md").read_text()
    undocumented = [line for line in text.splitlines() if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert undocumented == []
