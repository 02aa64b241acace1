"""`llmtune clean` under a datatrove executor (clean.executor.kind: local, slurm or ray): the in-process steps as
datatrove stages that pass files through a work folder, each stage a `LocalPipelineExecutor`,
`SlurmPipelineExecutor` or `RayPipelineExecutor` depending on the one before.

    filter        RowReader -> LanguageFilter -> RulesFilter -> StageWriter (work/filtered/KIND/TASK.jsonl)
    for each row kind (deduplication compares rows of one kind):
    exact 1, 2    ExactDedupSignature (earlier files first), ExactFindDedups
    near 1        ExactDedupFilter -> NearSignature (datatrove's stage 1, the in-process signatures)
    near 2, 3     MinhashDedupBuckets (a task a band), VerifiedCluster (in-process rule on its pairs)
    write         StageReader -> ExactDedupFilter -> MinhashDedupFilter -> RowWriter (each input's format)
    finish        the report from the tasks' parts; the staging folder moved to --out
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep

from llmtune.data.clean.dedup import lsh_bands, near_settings
from llmtune.data.clean.merge import merged_report
from llmtune.data.clean.pipeline import parsed_rows
from llmtune.data.clean.rows import open_writer, row_kind
from llmtune.data.clean.spec import CleanSpec
from llmtune.errors import UserError
from llmtune.outdir import move_into_place

REPORT_NAME = "clean_report.json"


def file_kinds(files: list[Path]) -> tuple[list[str], list[str]]:
    """Each file's row format and kind, from its first row (a malformed first row is the usual UserError)."""
    formats = []
    for path in files:
        first = next(parsed_rows(path, str(path)), None)
        if first is None:
            raise UserError(f"{path}: no rows in the file; nothing to clean")
        formats.append(first[1])
    return formats, [row_kind(f) for f in formats]


def check_settings(spec: CleanSpec) -> None:
    """Settings the executors need, each a UserError naming its key, before anything is written."""
    ex = spec.executor
    if spec.perplexity.model:
        raise UserError("clean.executor.kind: the perplexity step runs only in one process; set "
                        "clean.executor.kind to null, or clean.perplexity.model to null")  # fmt: skip
    if ex.kind == "slurm":
        for key, what in (("partition", "the Slurm partition to submit to"), ("time", "each job's time limit")):
            if getattr(ex, key) is None:
                raise UserError(f"clean.executor.{key}: needed for kind slurm ({what})")
    if ex.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise UserError("clean.executor.kind: ray needs the `ray` package, which is not installed: "
                        "pip install 'llmtune[ray]'")  # fmt: skip
    if ex.kind == "slurm" and shutil.which("sbatch") is None:
        raise UserError("clean.executor.kind: slurm submits with `sbatch`, which is not on PATH; run this on a "
                        "Slurm login node")  # fmt: skip


def stages(files: list[Path], kinds: list[str], spec: CleanSpec, work: Path, staging: Path,
           finish: PipelineStep) -> list[tuple[str, list[Any], int]]:  # fmt: skip
    """(name, pipeline, tasks) of each stage, in order."""
    from llmtune.data.clean.trove import LanguageFilter, RowReader, RulesFilter, StageWriter

    parts, n = str(work / "parts"), spec.examples
    first: list[Any] = [RowReader([str(f) for f in files], kinds, parts)]
    first += [LanguageFilter(spec.lang, parts, n)] if spec.lang.languages else []
    first += [RulesFilter(spec.rules, parts, n)] if spec.rules.enabled else []
    first.append(StageWriter(str(work / "filtered")))
    found = [("filter", first, spec.executor.tasks)]
    for kind in dict.fromkeys(kinds):
        found += kind_stages(kind, files, spec, work, staging)
    return [*found, ("finish", [finish], 1)]


def kind_stages(kind: str, files: list[Path], spec: CleanSpec, work: Path,
                staging: Path) -> list[tuple[str, list[Any], int]]:  # fmt: skip
    """Deduplication and writing of the rows of one kind."""
    from datatrove.pipeline.dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupFilter
    from datatrove.utils.hashing import HashConfig

    from llmtune.data.clean.cluster import VerifiedCluster
    from llmtune.data.clean.trove import (
        DropRecorder,
        ExactClusters,
        NearSignature,
        RowWriter,
        StageReader,
        exact_content,
        first_file_first,  # fmt: skip
    )

    home, parts, tasks, n = work / kind, str(work / "parts"), spec.executor.tasks, spec.examples
    exact, near = str(home / "exact"), str(home / "near")
    config = ExactDedupConfig(content_getter=exact_content, document_priority=first_file_first,
                              hash_config=HashConfig(precision=64, hash_fc="sha1"))  # fmt: skip

    def read() -> StageReader:
        return StageReader(str(work / "filtered" / kind))

    def exact_filter(**kwargs: Any) -> list[Any]:
        return [ExactDedupFilter(f"{exact}/dups", config, **kwargs)] if spec.exact.enabled else []

    found: list[tuple[str, list[Any], int]] = []
    if spec.exact.enabled:
        found.append((f"exact1-{kind}", [read(), ExactDedupSignature(f"{exact}/sigs", config)], tasks))
        found.append((f"exact2-{kind}", [ExactFindDedups(f"{exact}/sigs", f"{exact}/dups", config)], 1))
    near_filter: list[Any] = []
    if spec.near.enabled:
        ngram, threshold, perms = near_settings(spec.near, kind)
        bands, rows = lsh_bands(threshold, perms)
        sign = NearSignature(near, ngram, perms, spec.near.seed, bands, rows)
        found.append((f"near1-{kind}", [read(), *exact_filter(), sign], tasks))
        found.append(
            (f"near2-{kind}", [MinhashDedupBuckets(f"{near}/sigs", f"{near}/dups", config=sign.config)], bands)
        )
        found.append((f"near3-{kind}", [VerifiedCluster(near, threshold, perms, parts, kind)], 1))
        recorder = DropRecorder(parts, "near", kind, n, reasons=f"{near}/reasons")
        near_filter = [MinhashDedupFilter(f"{near}/remove", exclusion_writer=recorder)]
    dropped = exact_filter(exclusion_writer=DropRecorder(parts, "exact", kind, n))
    dropped += [ExactClusters(parts, kind)] if spec.exact.enabled else []
    writer = RowWriter([str(f) for f in files], str(staging))
    return [*found, (f"write-{kind}", [read(), *dropped, *near_filter, writer], tasks)]


def seconds(time: str) -> int:
    days, _, clock = time.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def executors(plan: list[tuple[str, list[Any], int]], spec: CleanSpec, logs: Path) -> list[Any]:
    """One datatrove executor per stage, each depending on the one before."""
    ex, built = spec.executor, []
    for i, (name, pipeline, tasks) in enumerate(plan):
        common = dict(pipeline=pipeline, tasks=tasks, workers=ex.workers if tasks > 1 else 1,
                      logging_dir=str(logs / f"{i:02d}-{name}"), depends=built[-1] if built else None)  # fmt: skip
        if ex.kind == "local":
            from datatrove.executor import LocalPipelineExecutor

            built.append(LocalPipelineExecutor(**common, start_method="fork" if sys.platform == "linux" else "spawn"))
        elif ex.kind == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            venv = f"{sys.prefix}/bin/activate" if sys.prefix != sys.base_prefix and not ex.env_command else None
            built.append(SlurmPipelineExecutor(**common, time=ex.time, partition=ex.partition, qos=ex.qos,
                                               cpus_per_task=ex.cpus_per_task, mem_per_cpu_gb=ex.mem_per_cpu_gb,
                                               job_name=f"{ex.job_name}-{name}", env_command=ex.env_command,
                                               venv_path=venv, sbatch_args=dict(ex.sbatch_args)))  # fmt: skip
        else:
            from datatrove.executor import RayPipelineExecutor

            built.append(RayPipelineExecutor(**common, cpus_per_task=ex.cpus_per_task, mem_per_cpu_gb=ex.mem_per_cpu_gb,
                                             time=seconds(ex.time) if ex.time else None))  # fmt: skip
    return built


class Finish(PipelineStep):
    """The last stage: the report from the parts, an empty output for an input whose rows all went, and the
    staging folder moved into place; the work folder is emptied but for its logs."""

    name, type = "🏁 llmtune report", "🏁 - FINISH"

    def __init__(self, files: list[Path], formats: list[str], kinds: list[str], out: Path, staging: Path,
                 work: Path, spec: CleanSpec) -> None:  # fmt: skip
        super().__init__()
        self.files, self.formats, self.kinds, self.out, self.staging, self.work, self.spec = (
            files, formats, kinds, out, staging, work, spec)  # fmt: skip

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        report = merged_report(self.spec, self.files, self.formats, self.kinds, self.out, self.work / "parts")
        report.check_drops(self.spec.warn_drop_fraction)
        for path in self.files:
            if not (self.staging / path.name).exists():
                with open_writer(self.staging / path.name):
                    pass
        text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
        (self.staging / REPORT_NAME).write_text(text, encoding="utf-8")
        move_into_place(self.staging, self.out)
        for entry in self.work.iterdir():
            if entry.name != "logs":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def prepare_work(out: Path, spec: CleanSpec, overwrite: bool) -> Path:
    work = Path(spec.executor.work_dir) if spec.executor.work_dir else out.parent / f"{out.name}.datatrove"
    if work.exists() and any(work.iterdir()):
        if not overwrite:
            raise UserError(f"clean.executor.work_dir: {work} is not empty (a run before?); remove it, choose "
                            f"another, or pass --overwrite to replace it")  # fmt: skip
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def build(files: list[Path], out: Path, spec: CleanSpec, *, overwrite: bool = False) -> list[Any]:
    """The executors of every stage (the last one runs them all), after checking the settings and the files."""
    check_settings(spec)
    formats, kinds = file_kinds(files)
    work = prepare_work(out, spec, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    finish = Finish(files, formats, kinds, out, staging, work, spec)
    logs = Path(spec.executor.logging_dir) if spec.executor.logging_dir else work / "logs"
    return executors(stages(files, kinds, spec, work, staging, finish), spec, logs)


def run_pipeline(files: list[Path], out: Path, spec: CleanSpec, *, overwrite: bool = False) -> dict[str, Any] | None:
    """Run (local, ray) or submit (slurm) the stages; the report when it is there, None when submitted."""
    built = build(files, out, spec, overwrite=overwrite)
    try:
        built[-1].run()
    except BaseException:
        shutil.rmtree(built[-1].pipeline[0].staging, ignore_errors=True)  # the work folder keeps the logs
        raise
    report = out / REPORT_NAME
    return json.loads(report.read_text(encoding="utf-8")) if spec.executor.kind != "slurm" else None
