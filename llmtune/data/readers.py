"""Raw rows from a data file, each with where it came from ("data/train.jsonl:17") for error messages.

A reader yields (where, row) pairs; a row that cannot even be parsed (a bad JSON line) comes as a RowError,
so the caller treats it like any other bad row.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmtune.data.formats import RowError
from llmtune.errors import UserError, not_utf8

Raw = Iterator[tuple[str, Any]]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _read_jsonl(path: Path, label: str) -> Raw:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{label}:{line_no}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{label}:{line_no}", RowError(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _read_json(path: Path, label: str) -> Raw:
    """A JSON list of objects; a file that is really JSON lines (one object per line) is read as such."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            yield from _read_jsonl(path, label)
            return
        raise UserError(f"{label}:{exc.lineno}: not valid JSON ({exc.msg}); expected a list of objects") from None
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise UserError(f"{label}: expected a JSON list of rows (or an object holding one list), got an object")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise UserError(f"{label}: expected a JSON list of rows, got {type(data).__name__}")
    for i, row in enumerate(data, start=1):
        yield f"{label}: row {i}", row


def _cell(value: str) -> Any:
    """CSV cells are text; a cell holding a JSON list or object (messages, history, scores) is decoded."""
    stripped = value.strip()
    if stripped and stripped[0] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def _read_csv(path: Path, label: str) -> Raw:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        start = 2
        for record in reader:
            if None in record:
                yield f"{label}:{start}", RowError(f"more cells than the {len(reader.fieldnames or [])} columns")
            elif any(value is None for value in record.values()):
                yield f"{label}:{start}", RowError("fewer cells than columns")
            else:
                yield f"{label}:{start}", {key: _cell(value) for key, value in record.items()}
            start = reader.line_num + 1


def _read_parquet(path: Path, label: str) -> Raw:
    """Row group by row group (a batch of rows in memory at a time, not the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    i = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                i += 1
                yield f"{label}: row {i}", row
    except pa.ArrowException as exc:
        raise UserError(f"{label}: not a readable Parquet file ({exc})") from None


def _read_txt(path: Path, label: str) -> Raw:
    """One document per blank-line-separated paragraph, located by the line it starts on."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start, para = 0, []
    for line_no, line in enumerate([*lines, ""], start=1):
        if line.strip():
            start = start or line_no
            para.append(line)
        elif para:
            yield f"{label}:{start}", {"text": "\n".join(para)}
            start, para = 0, []


def _read_dataset(dataset: Any, label: str) -> Raw:
    for i, row in enumerate(dataset, start=1):
        yield f"{label}: row {i}", row


def _split_files(path: Path, split: str, subset: str | None, label: str) -> list[Path]:
    """The data files of one split of a folder of files (a Hub dataset snapshot), as `datasets` lays splits out."""
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # a snapshot without a dataset card is fine; don't say so
    try:
        builder = datasets.load_dataset_builder(str(path), name=subset)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(f"{label}: cannot find data files{f' of subset {subset!r}' if subset else ''}: {exc}") from None
    finally:
        datasets.logging.set_verbosity(level)
    files = dict(builder.config.data_files or {})
    if split not in files:
        raise UserError(f"{label}: no split {split!r} (splits: {', '.join(map(str, files)) or 'none'}); set split")
    return [Path(f) for f in files[split]]


def _read_directory(path: Path, split: str, subset: str | None, label: str) -> Raw:
    """A `save_to_disk` directory, or a folder of data files read file by file (rows located in their own file)."""
    import datasets

    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"{label}: no split {split!r} (splits: {', '.join(loaded)}); set split on the source")
            loaded = loaded[split]
        yield from _read_dataset(loaded, label)
        return
    files = _split_files(path, split, subset, label)
    if any(f.suffix.lower() not in READERS for f in files):
        yield from _read_dataset(datasets.load_dataset(str(path), name=subset, split=split), label)
        return
    for file in files:
        yield from READERS[file.suffix.lower()](file, f"{label}/{file.relative_to(path)}")


READERS: dict[str, Callable[[Path, str], Raw]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".txt": _read_txt,
}


def resolve_path(path: str, revision: str, endpoint: str | None) -> Path:
    """A local file or directory as is; a missing path shaped like owner/name is fetched from the Hub."""
    local = Path(path).expanduser()
    if local.exists():
        return local
    if HUB_ID.match(path) and not path.endswith(tuple(READERS)):
        from llmtune import hub

        return Path(hub.ensure_local(path, revision, "dataset", endpoint))
    raise UserError(
        f"data file {path} not found (a path relative to {Path.cwd()}, or a Hub dataset id such as owner/name)"
    )


def read_raw(local: Path, label: str, split: str, subset: str | None) -> Raw:
    """Rows of a file by its suffix, or of a dataset directory."""
    if local.is_dir():
        return _guard_decode(_read_directory(local, split, subset, label), label, None)
    reader = READERS.get(local.suffix.lower())
    if reader is None:
        raise UserError(f"{label}: unsupported file type {local.suffix!r} (use {', '.join(READERS)} or a directory)")
    return _guard_decode(reader(local, label), label, local)


def _guard_decode(rows: Raw, label: str, file: Path | None) -> Raw:
    """Undecodable text becomes one UserError naming the file and, for a single file, the line."""
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        if file is not None:
            raise not_utf8(label, file.read_bytes(), "re-save the file as UTF-8") from None
        raise UserError(f"{label}: not UTF-8 text ({exc.reason}); re-save its files as UTF-8") from None
