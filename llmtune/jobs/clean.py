"""`llmtune clean`: run the cleaning steps over each input file (llmtune.data.clean), optionally the perplexity
filter (llmtune.eval.measure), and write each file's kept rows to OUT under its own name and format, with
`clean_report.json` beside them. Everything is written to a staging directory and moved into place at the end."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from llmtune import console
from llmtune.data.clean.pipeline import Pipeline, Scanned, parsed_rows, raw_rows, step_names
from llmtune.data.clean.report import Report, print_report
from llmtune.data.clean.rows import WRITERS, open_writer
from llmtune.data.clean.spec import CleanSpec
from llmtune.errors import UserError
from llmtune.outdir import move_into_place, refuse_nonempty

REPORT_NAME = "clean_report.json"
SCORE_CHUNK = 256


def check_inputs(files: list[Path], out: Path) -> None:
    names: dict[str, Path] = {}
    for path in files:
        if not path.is_file():
            raise UserError(f"clean FILE: {path} is not a file (give data files: {', '.join(WRITERS)})")
        if path.suffix.lower() not in WRITERS:
            raise UserError(f"clean FILE: {path} has unsupported type {path.suffix!r} (use {', '.join(WRITERS)})")
        if path.name in names:
            raise UserError(f"clean FILE: {path} and {names[path.name]} have the same name; they would overwrite "
                            f"each other in --out")  # fmt: skip
        if path.name == REPORT_NAME:
            raise UserError(f"clean FILE: {path} is named like the report ({REPORT_NAME}); rename it")
        names[path.name] = path
        if path.resolve().parent == out.resolve():
            raise UserError(f"clean --out {out}: it holds the input {path}; write to another directory")


def perplexity_filter(spec: CleanSpec, scanned: list[Scanned], report: Report) -> None:
    """Score the rows still kept, then keep those under the threshold or the best fraction (over all files)."""
    from llmtune.eval.measure import document_perplexities
    from llmtune.infer.load import load_for_inference

    settings = spec.perplexity
    loaded = load_for_inference(settings.model)
    scores: list[tuple[float, int, int]] = []  # (perplexity, file number, row number)
    for file_no, item in enumerate(scanned):
        pending: list[tuple[int, str]] = []
        for row_no, (_where, _fmt, _raw, text) in enumerate(parsed_rows(item.path, str(item.path))):
            if item.keep[row_no]:
                pending.append((row_no, text))
            if len(pending) >= SCORE_CHUNK or (pending and row_no == len(item.keep) - 1):
                values = document_perplexities(loaded.model, loaded.tokenizer, [t for _, t in pending],
                                               context=settings.context, batch_size=settings.batch_size)  # fmt: skip
                scores += [(value, file_no, row) for value, (row, _) in zip(values, pending, strict=True)]
                pending = []
    if settings.max_perplexity is not None:
        cutoff, label = settings.max_perplexity, f"perplexity above {settings.max_perplexity:g}"
        dropped = [s for s in scores if s[0] > cutoff]
    else:
        ranked = sorted(scores)
        kept = max(1, round(len(ranked) * settings.keep_fraction)) if ranked else 0
        dropped, label = ranked[kept:], f"outside the best {settings.keep_fraction:.0%} by perplexity"
    for item in scanned:
        item.report.steps["perplexity"].seen = sum(item.keep)
    for value, file_no, row in sorted(dropped, key=lambda s: (s[1], s[2])):
        item = scanned[file_no]
        item.keep[row] = 0
        item.report.steps["perplexity"].dropped += 1
        report.drop("perplexity", f"{item.path} row {row + 1}", "", f"{label} ({value:.1f})")


def write_kept(item: Scanned, out_file: Path) -> None:
    with open_writer(out_file) as write:
        for raw, keep in zip(raw_rows(item.path), item.keep, strict=True):
            if keep:
                write(raw)


def run_under_executor(files: list[Path], out: Path, spec: CleanSpec, overwrite: bool) -> dict | None:
    """The same cleaning as datatrove stages under its local, Slurm or Ray executor (llmtune.data.clean.executors)."""
    from llmtune.data.clean.executors import run_pipeline

    data = run_pipeline(files, out, spec, overwrite=overwrite)
    if data is None:
        console.info(f"submitted to Slurm; the cleaned files and {REPORT_NAME} will be in {out} once the last job "
                     f"ends (logs: {spec.executor.logging_dir or 'the work folder'})", markup=False)  # fmt: skip
        return None
    print_report(data)
    console.info(f"report: {out / REPORT_NAME}", markup=False)
    return data


def clean(files: list[Path], out: Path, spec: CleanSpec, *, overwrite: bool = False) -> Report | dict | None:
    """Clean `files` into `out` (one output file per input, same name and format) and return the report."""
    check_inputs(files, out)
    refuse_nonempty(out, overwrite, "clean --out", "pass --overwrite to replace it")
    if spec.executor.kind:
        return run_under_executor(files, out, spec, overwrite)
    with_model = spec.perplexity.model is not None
    report = Report(step_names(spec, with_model), examples_per_reason=spec.examples,
                    settings=spec.model_dump(mode="json"))  # fmt: skip
    pipeline = Pipeline(spec, report)
    scanned = [pipeline.scan(path, out / path.name) for path in files]
    pipeline.finish()
    if with_model:
        perplexity_filter(spec, scanned, report)
    report.check_drops(spec.warn_drop_fraction)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    for item in scanned:
        write_kept(item, staging / item.path.name)
    (staging / REPORT_NAME).write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    move_into_place(staging, out)
    print_report(report.to_json())
    console.info(f"report: {out / REPORT_NAME}", markup=False)
    return report
