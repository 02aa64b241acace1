"""Load the recipe's data sources into canonical rows: read, convert, check, sample, weight, mix and split.

Every canonical row carries an `origin` column ("data/train.jsonl:17") so later steps can name the row they reject.
Bad rows stop the run with a message naming file, row and reason (data.bad_rows: error), or are skipped, counted
and reported (data.bad_rows: skip). Sampling is seeded, so the same recipe gives the same rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.data.formats import (
    CHAT,
    CLS,
    KIND_OF_FORMAT,
    KTO,
    PREFERENCE,
    PROMPT,
    TEXT,
    Row,
    RowError,
    apply_columns,
    convert,
    detect_format,
)
from llmtune.data.readers import read_raw, resolve_path
from llmtune.data.reshape import reshape
from llmtune.errors import UserError
from llmtune.schema import FORMATS_OF_STAGE, DataSource, Recipe

if TYPE_CHECKING:
    import datasets

KIND_OF_STAGE = {
    "pt": TEXT,
    "sft": CHAT,
    "rm": PREFERENCE,
    "dpo": PREFERENCE,
    "kto": KTO,
    "orpo": PREFERENCE,
    "cpo": PREFERENCE,
    "grpo": PROMPT,
    "rloo": PROMPT,
    "cls": CLS,
}
FORMATS_OF_KIND = {
    TEXT: FORMATS_OF_STAGE["pt"],
    CHAT: FORMATS_OF_STAGE["sft"],
    PREFERENCE: FORMATS_OF_STAGE["rm"],
    KTO: FORMATS_OF_STAGE["kto"],
    PROMPT: FORMATS_OF_STAGE["grpo"],
    CLS: FORMATS_OF_STAGE["cls"],
}
SHOWN_REASONS = 3


@dataclass
class SourceReport:
    """What one source gave: its format, rows kept, and the bad rows skipped with their first reasons."""

    label: str
    format: str
    rows: int = 0
    total: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    format_hint: str = ""


@dataclass
class Splits:
    """Canonical rows for training and evaluation (None: no eval data), with one report per source read."""

    train: list[Row]
    eval: list[Row] | None
    reports: list[SourceReport]

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.reports)


def stage_kind(stage: str) -> str:
    """The kind of rows a stage trains on: text (pt), chat (sft; text rows too), preference (rm, dpo, orpo, cpo), kto
    rows (kto; pairs split), prompts (grpo, rloo; the prompts of chat rows and pairs, with their answers) or labelled
    texts (cls)."""
    return KIND_OF_STAGE[stage]


def _source_format(src: DataSource, raw: Any, where: str, kind: str) -> str:
    if src.format is not None:
        fmt = src.format
    else:
        try:
            fmt = detect_format(apply_columns(raw, src.columns))
        except RowError as exc:
            raise UserError(f"{where}: {exc}") from None
    if fmt not in FORMATS_OF_KIND[kind]:
        raise UserError(
            f"{src.path} is in format {fmt!r} ({KIND_OF_FORMAT[fmt]} rows), but this stage trains on {kind} rows "
            f"(formats: {', '.join(FORMATS_OF_KIND[kind])}); use data in one of these formats, or the stage that "
            f"trains on {KIND_OF_FORMAT[fmt]} rows"
        )
    return fmt


def _format_hint(src: DataSource, raw: Any, fmt: str, kind: str) -> str:
    """When a row fails in the `format:` the recipe set but its columns say another format, the fix to name;
    skipping rows would drop them all, so that advice is not given. Empty when the columns agree or say nothing."""
    if src.format is None or not isinstance(raw, dict):
        return ""
    try:
        detected = detect_format(apply_columns(raw, src.columns))
    except RowError:
        return ""
    if detected == fmt:
        return ""
    columns = ", ".join(sorted(apply_columns(raw, src.columns)))
    hint = f"these columns ({columns}) look like {detected}, not {fmt}; set format: {detected} on this source"
    if detected not in FORMATS_OF_KIND[kind]:
        hint += f" ({detected} rows are {KIND_OF_FORMAT[detected]}: this stage trains on {kind} rows)"
    return hint


def read_source(
    src: DataSource,
    *,
    kind: str,
    bad_rows: str,
    seed: int,
    endpoint: str | None = None,
    system_prompt: str | None = None,
) -> tuple[list[Row], SourceReport]:
    """Canonical rows of one source (max_samples applied, not weighted) and its report."""
    local = resolve_path(src.path, src.revision, endpoint)
    report = SourceReport(label=src.path, format=_source_format(src, {}, src.path, kind) if src.format else "")
    rows: list[Row] = []
    for where, raw in read_raw(local, src.path, src.split, src.subset):
        report.total += 1
        try:
            if isinstance(raw, RowError):
                raise raw
            if not report.format and isinstance(raw, dict):
                report.format = _source_format(src, raw, where, kind)
            converted = reshape(convert(report.format, raw, src.columns), KIND_OF_FORMAT[report.format], kind)
        except RowError as exc:
            hint = _format_hint(src, raw, report.format, kind)
            if bad_rows == "error":
                fix = f"; {hint}" if hint else " (or set data.bad_rows: skip to skip bad rows)"
                raise UserError(f"{where}: {exc}{fix}") from None
            report.format_hint = report.format_hint or hint
            report.skipped += 1
            if len(report.reasons) < SHOWN_REASONS:
                report.reasons.append(f"{where}: {exc}")
            continue
        rows.extend({**add_system_prompt(row, system_prompt), "origin": where} for row in converted)
    _check_nonempty(report)
    if report.skipped:
        console.warn(
            f"{src.path}: skipped {report.skipped} of {report.total} rows (data.bad_rows: skip); "
            f"first: {'; '.join(report.reasons)}"
        )
    if src.max_samples is not None and len(rows) > src.max_samples:
        # Keyed by the file or dataset name, not the whole path: the same data moved elsewhere (another checkout,
        # a temporary directory) must give the same rows, as the same recipe and seed give the same weights.
        rng = random.Random(f"max_samples:{seed}:{Path(src.path).name}")
        keep = sorted(rng.sample(range(len(rows)), src.max_samples))
        rows = [rows[i] for i in keep]
    report.rows = len(rows)
    return rows, report


def _check_nonempty(report: SourceReport) -> None:
    if report.total == 0:
        raise UserError(f"{report.label}: no rows (the file is empty); add rows or remove this source from the recipe")
    if report.skipped == report.total:
        fix = f"; {report.format_hint}" if report.format_hint else ""
        raise UserError(
            f"{report.label}: none of its {report.total} rows is valid{fix}; "
            f"first problems: {'; '.join(report.reasons)}"
        )


def weighted(rows: list[Row], weight: float, rng: random.Random) -> list[Row]:
    """Each row floor(weight) times, plus a seeded sample of the fractional part (1.5 = all once + half again)."""
    whole = int(weight)
    extra = int((weight - whole) * len(rows) + 0.5)
    return rows * whole + rng.sample(rows, extra)


def hold_out(rows: list[Row], ratio: float, rng: random.Random) -> tuple[list[Row], list[Row]]:
    """Split off `ratio` of the rows for evaluation; rows from one raw row (ranked pairs) stay on one side."""
    origins = list(dict.fromkeys(row["origin"] for row in rows))
    n_eval = max(1, int(len(origins) * ratio + 0.5))
    if n_eval >= len(origins):
        raise UserError(f"data.eval_ratio {ratio} leaves no training rows out of {len(origins)}; lower it")
    held = set(rng.sample(origins, n_eval))
    return [r for r in rows if r["origin"] not in held], [r for r in rows if r["origin"] in held]


def read_rows(
    sources: Sequence[DataSource],
    *,
    kind: str,
    bad_rows: str = "error",
    seed: int = 0,
    endpoint: str | None = None,
    system_prompt: str | None = None,
    eval_ratio: float = 0.0,
    use_weights: bool = True,
) -> Splits:
    """Read, weight and shuffle `sources`; with eval_ratio, hold rows of each source out before weighting."""
    train: list[Row] = []
    held: list[Row] = []
    reports = []
    for i, src in enumerate(sources):
        rows, report = read_source(
            src, kind=kind, bad_rows=bad_rows, seed=seed, endpoint=endpoint, system_prompt=system_prompt
        )
        reports.append(report)
        if eval_ratio > 0:
            rows, out = hold_out(rows, eval_ratio, random.Random(f"eval:{seed}:{i}"))
            held.extend(out)
        train.extend(weighted(rows, src.weight, random.Random(f"weight:{seed}:{i}")) if use_weights else rows)
    random.Random(f"shuffle:{seed}").shuffle(train)
    random.Random(f"shuffle-eval:{seed}").shuffle(held)
    return Splits(train=train, eval=held if eval_ratio > 0 else None, reports=reports)


def read_splits(recipe: Recipe) -> Splits:
    """Train and eval rows for a recipe: eval sources when given (unweighted), else eval_ratio of the training rows."""
    data, kind = recipe.data, stage_kind(recipe.stage)
    common = {
        "kind": kind,
        "bad_rows": data.bad_rows,
        "seed": recipe.train.seed,
        "endpoint": recipe.hub.endpoint,
        "system_prompt": data.system_prompt,
    }
    splits = read_rows(data.train, eval_ratio=0.0 if data.eval else data.eval_ratio, **common)
    if data.eval:
        evals = read_rows(data.eval, use_weights=False, **common)
        splits = Splits(train=splits.train, eval=evals.train, reports=splits.reports + evals.reports)
    return splits


def to_dataset(rows: list[Row]) -> datasets.Dataset:
    """Rows -> a Dataset whose columns are the union of the rows' keys (None where a row lacks one)."""
    import datasets

    names = list(dict.fromkeys(key for row in rows for key in row))
    return datasets.Dataset.from_dict({name: [row.get(name) for row in rows] for name in names})


def load_rows(
    sources: Sequence[DataSource],
    *,
    bad_rows: str = "error",
    seed: int = 0,
    endpoint: str | None = None,
    system_prompt: str | None = None,
    kind: str = CHAT,
) -> datasets.Dataset:
    """Canonical rows of `sources`, weighted and shuffled, as a Dataset (columns: the canonical ones + origin)."""
    return to_dataset(
        read_rows(
            sources, kind=kind, bad_rows=bad_rows, seed=seed, endpoint=endpoint, system_prompt=system_prompt
        ).train
    )


def load_splits(recipe: Recipe) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, eval) canonical rows for a recipe; the stage decides the kind (pt text, sft chat, rm/dpo preference,
    cls labelled texts)."""
    splits = read_splits(recipe)
    return to_dataset(splits.train), to_dataset(splits.eval) if splits.eval is not None else None


def add_system_prompt(row: Row, system_prompt: str | None) -> Row:
    """Give a chat or preference row `system_prompt` as its first message when it has no system message."""
    if not system_prompt:
        return row
    key = "messages" if "messages" in row else "prompt" if "prompt" in row else None
    if key is None or row[key][0]["role"] == "system":
        return row
    return {**row, key: [{"role": "system", "content": system_prompt}, *row[key]]}
