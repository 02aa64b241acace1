"""What `llmtune clean` did: rows in and out per step and per file, reasons with a few examples each, the largest
duplicate clusters, and loud warnings for a step that dropped more than a set share of a file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SNIPPET = 160


def generic_reason(reason: str) -> str:
    """A reason without the row it names ("duplicate of a.jsonl:3" -> "duplicate"), for counting."""
    return reason.split(" of ", 1)[0] if reason.startswith(("duplicate", "near duplicate")) else reason


@dataclass
class StepCount:
    """Rows one step saw and dropped (in one file, or in all)."""

    seen: int = 0
    dropped: int = 0

    @property
    def kept(self) -> int:
        return self.seen - self.dropped


@dataclass
class FileReport:
    path: str
    out: str
    format: str
    kind: str
    rows_in: int = 0
    steps: dict[str, StepCount] = field(default_factory=dict)

    @property
    def rows_out(self) -> int:
        return self.rows_in - sum(c.dropped for c in self.steps.values())


@dataclass
class Report:
    step_names: list[str]
    examples_per_reason: int = 3
    files: list[FileReport] = field(default_factory=list)
    reasons: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    clusters: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def start_file(self, path: str, out: str, fmt: str, kind: str) -> FileReport:
        report = FileReport(path, out, fmt, kind, steps={name: StepCount() for name in self.step_names})
        self.files.append(report)
        return report

    def drop(self, step: str, where: str, text: str, reason: str) -> None:
        """Count a dropped row; keep its text as an example while its reason has fewer than the limit."""
        generic = generic_reason(reason)
        counter = self.reasons.setdefault(step, Counter())
        counter[generic] += 1
        shown = self.examples.setdefault(step, [])
        if counter[generic] <= self.examples_per_reason:
            shown.append({"where": where, "reason": reason, "text": text[:SNIPPET]})

    def total(self, step: str) -> StepCount:
        return StepCount(sum(f.steps[step].seen for f in self.files), sum(f.steps[step].dropped for f in self.files))

    def check_drops(self, fraction: float) -> None:
        for f in self.files:
            for step, count in f.steps.items():
                if count.seen and count.dropped / count.seen > fraction:
                    self.warnings.append(
                        f"{f.path}: step {step} dropped {count.dropped:,} of {count.seen:,} rows "
                        f"({count.dropped / count.seen:.0%}); check its settings for this kind of data ({f.kind})"
                    )

    def to_json(self) -> dict[str, Any]:
        steps = []
        for name in self.step_names:
            total = self.total(name)
            steps.append({"step": name, "in": total.seen, "dropped": total.dropped, "out": total.kept,
                          "reasons": dict(self.reasons.get(name, Counter()).most_common()),
                          "examples": self.examples.get(name, [])})  # fmt: skip
        files = [{"path": f.path, "out": f.out, "format": f.format, "kind": f.kind, "rows_in": f.rows_in,
                  "rows_out": f.rows_out,
                  "steps": {n: {"in": c.seen, "dropped": c.dropped, "out": c.kept} for n, c in f.steps.items()}}
                 for f in self.files]  # fmt: skip
        return {
            "rows_in": sum(f.rows_in for f in self.files),
            "rows_out": sum(f.rows_out for f in self.files),
            "steps": steps,
            "files": files,
            "largest_clusters": self.clusters,
            "warnings": self.warnings,
            "settings": self.settings,
        }


def print_report(data: dict[str, Any]) -> None:
    """The report (`Report.to_json()`) as tables on stdout; warnings loudly on stderr."""
    from rich.table import Table

    from llmtune import console
    from llmtune.console import stdout

    table = Table(title=f"llmtune clean: {data['rows_in']:,} rows in, {data['rows_out']:,} out")
    for column in ("step", "in", "dropped", "out", "top reasons"):
        table.add_column(column, justify="left" if column in ("step", "top reasons") else "right")
    for step in data["steps"]:
        top = "; ".join(f"{reason} ({n:,})" for reason, n in list(step["reasons"].items())[:3])
        table.add_row(step["step"], f"{step['in']:,}", f"{step['dropped']:,}", f"{step['out']:,}", top)
    stdout().print(table)
    for f in data["files"]:
        stdout().print(f"{f['path']} ({f['format']}, {f['kind']}): {f['rows_in']:,} -> {f['rows_out']:,} rows, "
                       f"written to {f['out']}", markup=False)  # fmt: skip
    for warning in data["warnings"]:
        console.warn(f"WARNING: {warning}")
