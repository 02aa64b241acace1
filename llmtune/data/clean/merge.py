"""The report of a run under an executor, merged from the parts its tasks wrote: rows read per file, rows each
step dropped per file with reasons and examples, and the largest clusters. Examples and clusters are taken in
input order, so they read as the in-process report's do."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from llmtune.data.clean.pipeline import step_names
from llmtune.data.clean.report import Report, generic_reason
from llmtune.data.clean.spec import CleanSpec
from llmtune.data.clean.trove import TOP_CLUSTERS, cluster_rank


def merged_report(spec: CleanSpec, files: list[Path], formats: list[str], kinds: list[str], out: Path,
                  parts_dir: Path) -> Report:  # fmt: skip
    report = Report(step_names(spec, False), examples_per_reason=spec.examples, settings=spec.model_dump(mode="json"))
    for path, fmt, kind in zip(files, formats, kinds, strict=True):
        report.start_file(str(path), str(out / path.name), fmt, kind)
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(parts_dir.glob("*.json"))]
    rows_in: Counter[int] = Counter()
    dropped: dict[str, Counter[int]] = {name: Counter() for name in report.step_names}
    examples: dict[str, list[dict[str, Any]]] = {}
    clusters: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        rows_in.update({int(k): v for k, v in part.get("rows", {}).items()})
        if "step" in part:
            step = part["step"]
            dropped[step].update({int(k): v for k, v in part["dropped"].items()})
            report.reasons.setdefault(step, Counter()).update(part["reasons"])
            examples.setdefault(step, []).extend(part["examples"])
        for name, found in part.get("clusters", {}).items():
            clusters.setdefault(name, []).extend(found)
    for i, f in enumerate(report.files):
        f.rows_in = seen = rows_in[i]
        for name in report.step_names:
            f.steps[name].seen, f.steps[name].dropped = seen, dropped[name][i]
            seen -= dropped[name][i]
    for step, found in examples.items():
        shown: Counter[str] = Counter()
        for example in sorted(found, key=lambda e: e["order"]):
            generic = generic_reason(example["reason"])
            shown[generic] += 1
            if shown[generic] <= spec.examples:
                report.examples.setdefault(step, []).append({k: example[k] for k in ("where", "reason", "text")})
    for name in ("exact", "near"):
        if name in report.step_names:
            top = sorted(clusters.get(name, []), key=cluster_rank)[:TOP_CLUSTERS]
            report.clusters[name] = [{k: c[k] for k in ("kept", "duplicates", "examples")} for c in top]
    return report
