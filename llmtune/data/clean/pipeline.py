"""The streaming pass of `llmtune clean`: read each file row by row, run the steps in order (language, rules,
exact, near), and keep one flag per row. Files are read again to write the kept rows, so memory holds the flags
and the dedup index, never the data. Deduplication spans all input files: the first occurrence wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.data.clean.dedup import Clusters, ExactDedup, NearDedup, RowNames
from llmtune.data.clean.report import FileReport, Report
from llmtune.data.clean.rows import row_format, row_kind, row_text
from llmtune.data.clean.rules import LanguageStep, RuleStep
from llmtune.data.clean.spec import CleanSpec
from llmtune.data.formats import RowError
from llmtune.data.readers import read_raw
from llmtune.errors import UserError

BATCH_ROWS = 1024  # rows per deduplication batch (signatures and index lookups are vectorised per batch)
BATCH_CHARS = 1_000_000  # ... or fewer, when the rows are long


@dataclass
class Scanned:
    """One input file after the pass: its report and a keep flag per row (1 kept, 0 dropped)."""

    path: Path
    report: FileReport
    keep: bytearray


def step_names(spec: CleanSpec, with_model: bool) -> list[str]:
    names = ["lang"] if spec.lang.languages else []
    names += ["rules"] if spec.rules.enabled else []
    names += ["exact"] if spec.exact.enabled else []
    names += ["near"] if spec.near.enabled else []
    return names + (["perplexity"] if with_model else [])


def parsed_rows(path: Path, label: str) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """(where, format, raw row, text) for each row; an unreadable or malformed row is a UserError naming it."""
    fmt = None
    for where, raw in read_raw(path, label, "train", None):
        try:
            if isinstance(raw, RowError):
                raise raw
            fmt = fmt or row_format(raw)
            yield where, fmt, raw, row_text(fmt, raw)
        except RowError as exc:
            raise UserError(f"{where}: {exc} (as {fmt or 'a row'}; fix or remove the row)") from None
        except (KeyError, TypeError) as exc:
            raise UserError(f"{where}: not a {fmt} row ({exc}); all rows of a file must share its format") from None


def raw_rows(path: Path) -> Iterator[Any]:
    """The file's raw rows again, for writing: the scan has checked them already."""
    for _where, raw in read_raw(path, str(path), "train", None):
        yield raw


class Pipeline:
    """The configured steps. Language and rules judge each row as it is read (rule steps are built per row kind when
    first met); the rows they keep go to deduplication in batches, which keeps the first row of each cluster."""

    def __init__(self, spec: CleanSpec, report: Report) -> None:
        self.spec, self.report = spec, report
        self.names = RowNames()
        self.lang = LanguageStep(spec.lang) if spec.lang.languages else None
        self.rules: dict[str, RuleStep] = {}
        self.exact = ExactDedup(self.names) if spec.exact.enabled else None
        self.near: dict[str, NearDedup] = {}
        self.near_clusters = Clusters(self.names)
        if spec.rules.enabled:
            RuleStep(spec.rules, "text")  # validate patterns before reading any data

    def steps(self, kind: str) -> tuple[list[Any], list[Any]]:
        """(per-row steps, batch steps) for a file of this row kind."""
        if self.spec.rules.enabled and kind not in self.rules:
            self.rules[kind] = RuleStep(self.spec.rules, kind)
        if self.spec.near.enabled and kind not in self.near:
            self.near[kind] = NearDedup(self.spec.near, kind, self.names, self.near_clusters)
        per_row = [s for s in (self.lang, self.rules.get(kind)) if s]
        return per_row, [s for s in (self.exact, self.near.get(kind)) if s]

    def scan(self, path: Path, out: Path) -> Scanned:
        keep = bytearray()
        report, per_row, batched = None, [], []
        pending: list[tuple[int, int, str, str]] = []  # (row in file, row number, where, text)
        size = 0
        for where, fmt, _raw, text in parsed_rows(path, str(path)):
            if report is None:
                report = self.report.start_file(str(path), str(out), fmt, row_kind(fmt))
                per_row, batched = self.steps(report.kind)
            report.rows_in += 1
            keep.append(1)
            row = self.names.add(where)
            for step in per_row:
                count = report.steps[step.name]
                count.seen += 1
                if reason := step.check(text):
                    count.dropped += 1
                    keep[-1] = 0
                    self.report.drop(step.name, where, text, reason)
                    break
            else:
                pending.append((len(keep) - 1, row, where, text))
                size += len(text)
                if len(pending) >= BATCH_ROWS or size >= BATCH_CHARS:
                    self._dedup(report, batched, pending, keep)
                    pending, size = [], 0
        if report is None:
            raise UserError(f"{path}: no rows in the file; nothing to clean")
        self._dedup(report, batched, pending, keep)
        return Scanned(path, report, keep)

    def _dedup(self, report: FileReport, steps: list[Any], pending: list[tuple[int, int, str, str]],
               keep: bytearray) -> None:  # fmt: skip
        for step in steps:
            if not pending:
                return
            count = report.steps[step.name]
            count.seen += len(pending)
            reasons = step.check_batch([p[3] for p in pending], [p[1] for p in pending])
            survivors = []
            for item, reason in zip(pending, reasons, strict=True):
                if reason:
                    count.dropped += 1
                    keep[item[0]] = 0
                    self.report.drop(step.name, item[2], item[3], reason)
                else:
                    survivors.append(item)
            pending = survivors

    def finish(self) -> None:
        if self.exact is not None:
            self.report.clusters["exact"] = self.exact.clusters.largest()
        if self.spec.near.enabled:
            self.report.clusters["near"] = self.near_clusters.largest()
