"""The streaming pass of `llmtune clean`: read each file row by row, run the steps in order (language, rules,
exact, near), and keep one flag per row. Files are read again to write the kept rows, so memory holds the flags
and the dedup index, never the data. Deduplication spans all input files: the first occurrence wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.data.clean.dedup import ExactDedup, NearDedup
from llmtune.data.clean.report import FileReport, Report
from llmtune.data.clean.rows import row_format, row_kind, row_text
from llmtune.data.clean.rules import LanguageStep, RuleStep
from llmtune.data.clean.spec import CleanSpec
from llmtune.data.formats import RowError
from llmtune.data.readers import read_raw
from llmtune.errors import UserError


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


class Pipeline:
    """The configured steps; rule steps are built per row kind (text, chat, preference, prompt) when first met."""

    def __init__(self, spec: CleanSpec, report: Report) -> None:
        self.spec, self.report = spec, report
        self.lang = LanguageStep(spec.lang) if spec.lang.languages else None
        self.rules: dict[str, RuleStep] = {}
        self.exact = ExactDedup() if spec.exact.enabled else None
        self.near = NearDedup(spec.near) if spec.near.enabled else None
        if spec.rules.enabled:
            RuleStep(spec.rules, "text")  # validate patterns before reading any data

    def steps(self, kind: str) -> list[Any]:
        if self.spec.rules.enabled and kind not in self.rules:
            self.rules[kind] = RuleStep(self.spec.rules, kind)
        rules = self.rules.get(kind)
        return [s for s in (self.lang, rules) if s] + [s for s in (self.exact, self.near) if s]

    def scan(self, path: Path, out: Path) -> Scanned:
        keep = bytearray()
        report, steps = None, []
        for where, fmt, _raw, text in parsed_rows(path, str(path)):
            if report is None:
                report = self.report.start_file(str(path), str(out), fmt, row_kind(fmt))
                steps = self.steps(report.kind)
            report.rows_in += 1
            keep.append(1)
            for step in steps:
                count = report.steps[step.name]
                count.seen += 1
                reason = step.check(text, where) if step.name in ("exact", "near") else step.check(text)
                if reason:
                    count.dropped += 1
                    keep[-1] = 0
                    self.report.drop(step.name, where, text, reason)
                    break
        if report is None:
            raise UserError(f"{path}: no rows in the file; nothing to clean")
        return Scanned(path, report, keep)

    def finish(self) -> None:
        for dedup in (self.exact, self.near):
            if dedup is not None:
                self.report.clusters[dedup.name] = dedup.clusters.largest()
