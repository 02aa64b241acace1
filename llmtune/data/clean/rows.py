"""Rows of any of our formats for cleaning: the format and kind of a raw row, the text the filters judge, and writers
that put kept rows back in the input file's own format (a row is kept or dropped, never edited)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmtune.data.formats import KIND_OF_FORMAT, RowError, convert, detect_format

PROMPT = "prompt"
PROMPT_KIND = "prompt"
SKIPPED_KEYS = {"role", "from", "name", "id", "scores"}


def row_format(row: Any) -> str:
    """The row's format by its columns; a row with only a prompt (a prompt file for generate/bon) is "prompt"."""
    if isinstance(row, dict) and PROMPT in row and not {"chosen", "rejected", "responses"} & set(row):
        return PROMPT
    if not isinstance(row, dict):
        raise RowError(f"a row must be an object with named fields, not {type(row).__name__}")
    return detect_format(row)


def row_kind(fmt: str) -> str:
    """text (pretraining documents), chat, preference or prompt: the kind whose defaults apply."""
    return PROMPT_KIND if fmt == PROMPT else KIND_OF_FORMAT[fmt]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in SKIPPED_KEYS:
                yield from _strings(item)


def row_text(fmt: str, row: dict[str, Any]) -> str:
    """The text the filters judge: every message, instruction, answer or document of the row, in order.

    The row is checked against its format first (RowError when malformed), so a bad row is never written back."""
    if fmt == PROMPT:
        if not isinstance(row[PROMPT], (str, list)) or not row[PROMPT]:
            raise RowError("prompt must be a non-empty string or list of messages")
        return "\n".join(_strings(row[PROMPT]))
    convert(fmt, row)
    return "\n".join(s for s in _strings(row) if s.strip())


Writer = Callable[[dict[str, Any]], None]


@contextmanager
def _jsonl(path: Path) -> Iterator[Writer]:
    with path.open("w", encoding="utf-8") as handle:
        yield lambda row: handle.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextmanager
def _json(path: Path) -> Iterator[Writer]:
    with path.open("w", encoding="utf-8") as handle:
        first = [True]

        def write(row: dict[str, Any]) -> None:
            handle.write(("[\n" if first[0] else ",\n") + json.dumps(row, ensure_ascii=False))
            first[0] = False

        yield write
        handle.write("[]\n" if first[0] else "\n]\n")


@contextmanager
def _csv(path: Path) -> Iterator[Writer]:
    with path.open("w", encoding="utf-8", newline="") as handle:
        state: dict[str, Any] = {}

        def write(row: dict[str, Any]) -> None:
            if "writer" not in state:
                state["writer"] = csv.DictWriter(handle, fieldnames=list(row))
                state["writer"].writeheader()
            cells = {k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v for k, v in row.items()}
            state["writer"].writerow(cells)

        yield write


@contextmanager
def _parquet(path: Path, batch: int = 10_000) -> Iterator[Writer]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {}

    def flush() -> None:
        table = pa.Table.from_pylist(rows, schema=state.get("schema"))
        if "writer" not in state:
            state["schema"] = table.schema
            state["writer"] = pq.ParquetWriter(path, table.schema)
        state["writer"].write_table(table)
        rows.clear()

    def write(row: dict[str, Any]) -> None:
        rows.append(row)
        if len(rows) >= batch:
            flush()

    try:
        yield write
        if rows or "writer" not in state:
            flush() if rows else pq.write_table(pa.table({}), path)
    finally:
        if "writer" in state:
            state["writer"].close()


@contextmanager
def _txt(path: Path) -> Iterator[Writer]:
    with path.open("w", encoding="utf-8") as handle:
        first = [True]

        def write(row: dict[str, Any]) -> None:
            handle.write(("" if first[0] else "\n\n") + row["text"])
            first[0] = False

        yield write
        if not first[0]:
            handle.write("\n")


WRITERS = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet, ".txt": _txt}


def open_writer(path: Path):
    """A context manager yielding write(row) for `path`, in the format its suffix names."""
    return WRITERS[path.suffix.lower()](path)
