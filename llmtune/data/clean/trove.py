"""llmtune clean's steps as datatrove pipeline steps, for its executors (clean.executor.kind: local, slurm, ray).

A reader of our row formats that keeps each raw row in the Document's metadata, so the writer puts it back in the
input's own format; our language and rule steps as datatrove filters; stage files in JSON lines; MinHash stage 1
with the in-process signatures (stage 3, which verifies LSH candidates, is llmtune.data.clean.cluster); and
exclusion writers that record what each task dropped in a small JSON "part" for the report.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.hashing import HashConfig

from llmtune.data.clean.dedup import normalise
from llmtune.data.clean.minhash import signatures, word_hashes
from llmtune.data.clean.pipeline import parsed_rows
from llmtune.data.clean.report import SNIPPET, generic_reason
from llmtune.data.clean.rows import open_writer
from llmtune.data.clean.rules import LanguageStep, RegexWords, RuleStep
from llmtune.data.clean.spec import LangSpec, RulesSpec

TOP_CLUSTERS = 5


def shard(n_files: int, rank: int, world_size: int) -> range:
    """The input files of one task: a contiguous block, so (task, row in task) orders rows as the input does."""
    return range(n_files * rank // world_size, n_files * (rank + 1) // world_size)


def save_part(folder: str, name: str, data: dict[str, Any]) -> None:
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def exact_content(doc: Document) -> str:
    """What exact deduplication hashes: the normalised text, as in-process."""
    return normalise(doc.text)


def first_file_first(doc: Document) -> int:
    """datatrove keeps the duplicate of highest priority (then the lowest row of its task): earlier files win."""
    return max(1, 65535 - doc.metadata["file"])


class RowReader(PipelineStep):
    """Rows of the task's input files as Documents: the text the steps judge, the raw row and where it came from."""

    name, type = "📖 llmtune rows", "📖 - READER"

    def __init__(self, files: list[str], kinds: list[str], parts: str) -> None:
        super().__init__()
        self.files, self.kinds, self.parts = files, kinds, parts

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        rows: Counter[int] = Counter()
        for index in shard(len(self.files), rank, world_size):
            path = Path(self.files[index])
            for n, (where, _fmt, raw, text) in enumerate(parsed_rows(path, str(path))):
                rows[index] += 1
                self.stat_update("rows")
                meta = {"row": raw, "file": index, "n": n, "where": where, "kind": self.kinds[index]}
                yield Document(text=text, id=where, metadata=meta)
        save_part(self.parts, f"read-{rank:05d}", {"rows": rows})


class StageWriter(PipelineStep):
    """The documents a stage keeps, as JSON lines in FOLDER/KIND/TASK.jsonl (stdlib json: datatrove's JSONL steps
    need orjson, which llmtune does not install)."""

    name, type = "💽 llmtune stage rows", "💽 - WRITER"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> None:
        with ExitStack() as stack:
            handles: dict[str, Any] = {}
            for doc in data:
                kind = doc.metadata["kind"]
                if kind not in handles:
                    (Path(self.folder) / kind).mkdir(parents=True, exist_ok=True)
                    path = Path(self.folder) / kind / f"{rank:05d}.jsonl"
                    handles[kind] = stack.enter_context(path.open("w", encoding="utf-8"))
                row = {"text": doc.text, "id": doc.id, "metadata": doc.metadata}
                handles[kind].write(json.dumps(row, ensure_ascii=False) + "\n")
                self.stat_update("rows")


class StageReader(PipelineStep):
    """The documents of FOLDER's files, a contiguous block of files a task (the order of the input)."""

    name, type = "📖 llmtune stage rows", "📖 - READER"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = sorted(Path(self.folder).glob("*.jsonl"))
        for index in shard(len(files), rank, world_size):
            with files[index].open(encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line)
                    self.stat_update("rows")
                    yield Document(text=row["text"], id=row["id"], metadata=row["metadata"])


class DropRecorder(DiskWriter):
    """An exclusion writer that writes nothing: it counts each dropped document per input file and reason, keeps a
    few examples, and saves them as a report part when the task's step closes it."""

    name = "📝 llmtune drops"

    def __init__(self, parts: str, step: str, label: str, examples: int, reasons: str | None = None) -> None:
        super().__init__(parts, output_filename="unused")
        self.parts, self.step, self.label, self.limit, self.reasons_dir = parts, step, label, examples, reasons
        self.rank, self.dropped, self.reasons, self.examples = 0, Counter(), Counter(), []
        self._reasons: dict[str, str] | None = None

    def _write(self, document: dict, file_handler: Any, filename: str) -> None:
        raise NotImplementedError  # write() records instead

    def _reason(self, doc: Document) -> str:
        if self.reasons_dir is None:
            return doc.metadata.get("filter_reason") or "duplicate"
        if self._reasons is None:
            found = Path(self.reasons_dir) / f"{self.rank:05d}.json"
            self._reasons = json.loads(found.read_text(encoding="utf-8")) if found.is_file() else {}
        return self._reasons.get(doc.metadata["where"], "near duplicate")

    def write(self, document: Document, rank: int = 0, **kwargs: Any) -> None:
        self.rank = rank
        reason = self._reason(document)
        generic = generic_reason(reason)
        self.dropped[document.metadata["file"]] += 1
        self.reasons[generic] += 1
        if self.reasons[generic] <= self.limit:
            meta = document.metadata
            self.examples.append({"where": meta["where"], "reason": reason, "text": document.text[:SNIPPET],
                                  "order": [meta["file"], meta["n"]]})  # fmt: skip

    def close(self) -> None:
        if self.dropped:
            found = {"step": self.step, "dropped": self.dropped, "reasons": self.reasons, "examples": self.examples}
            save_part(self.parts, f"{self.step}-{self.label}-{self.rank:05d}", found)
        self.dropped, self.reasons, self.examples, self._reasons = Counter(), Counter(), [], None
        super().close()


class LanguageFilter(BaseFilter):
    name = "🌐 llmtune language"

    def __init__(self, spec: LangSpec, parts: str, examples: int) -> None:
        super().__init__(exclusion_writer=DropRecorder(parts, "lang", "all", examples))
        self.step = LanguageStep(spec)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = self.step.check(doc.text)
        return True if reason is None else (False, reason)


class RulesFilter(BaseFilter):
    """The rule step of each row's kind (built when first met), as in-process."""

    name = "📏 llmtune rules"

    def __init__(self, spec: RulesSpec, parts: str, examples: int) -> None:
        super().__init__(exclusion_writer=DropRecorder(parts, "rules", "all", examples))
        self.spec, self.steps = spec, {"text": RuleStep(spec, "text")}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        kind = doc.metadata["kind"]
        if kind not in self.steps:
            self.steps[kind] = RuleStep(self.spec, kind)
        reason = self.steps[kind].check(doc.text)
        return True if reason is None else (False, reason)


class NearSignature(MinhashDedupSignature):
    """datatrove's MinHash stage 1 with the in-process signatures (datasketch's affine32 MinHash of word n-grams):
    its bucket files of band values, plus each document's 8-bit signature and name for the verifying stage 3."""

    def __init__(self, folder: str, ngram: int, perms: int, seed: int, bands: int, rows: int) -> None:
        config = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows, seed=seed,
                               hash_config=HashConfig(precision=32, hash_fc="sha1"))  # fmt: skip
        super().__init__(f"{folder}/sigs", config=config, language=RegexWords())
        self.folder, self.perms, self.seed, self._full = folder, perms, seed, None

    def get_shingles(self, text: str) -> np.ndarray:
        return np.asarray(word_hashes(text), dtype=np.uint64)  # the words' hashes; get_signature makes the n-grams

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        sig = signatures([shingles.tolist()], self.config.n_grams, self.perms, self.seed)[0]
        self._full.write(sig.astype(np.uint8).tobytes())
        banded = np.minimum(sig, np.uint32(2**32 - 2))  # datatrove reserves the largest value
        per = self.config.hashes_per_bucket
        return [banded[i * per : (i + 1) * per].tolist() for i in range(self.config.num_buckets)]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> None:
        folder = Path(self.folder)
        for sub in ("full", "names"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        with (folder / "full" / f"{rank:05d}.u8").open("wb") as full, \
                (folder / "names" / f"{rank:05d}.jsonl").open("w", encoding="utf-8") as names:  # fmt: skip
            self._full = full

            def named(docs: DocumentsPipeline) -> DocumentsPipeline:
                for doc in docs:
                    names.write(json.dumps([doc.metadata["where"], doc.metadata["file"], doc.metadata["n"]]) + "\n")
                    yield doc

            super().run(named(data), rank, world_size)
        self._full = None


class ExactClusters(PipelineStep):
    """Passes documents on, noting the largest exact clusters: `ExactDedupFilter` gives each kept row the number of
    rows dropped as its copies (which rows they were, it does not say)."""

    name, type = "📊 llmtune exact clusters", "📊 - STATS"

    def __init__(self, parts: str, label: str) -> None:
        super().__init__()
        self.parts, self.label = parts, label

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        clusters: list[dict[str, Any]] = []
        for doc in data:
            if count := doc.metadata.get("duplicate_count"):
                meta = doc.metadata
                clusters.append({"kept": meta["where"], "duplicates": count, "examples": [],
                                 "order": [meta["file"], meta["n"]]})  # fmt: skip
                clusters = sorted(clusters, key=cluster_rank)[:TOP_CLUSTERS]
            yield doc
        save_part(self.parts, f"exact-clusters-{self.label}-{rank:05d}", {"clusters": {"exact": clusters}})


class RowWriter(PipelineStep):
    """Each kept row, as it was read, into its input file's name in the staging folder and in the input's format
    (all rows of a file are in one task)."""

    name, type = "💽 llmtune rows", "💽 - WRITER"

    def __init__(self, files: list[str], staging: str) -> None:
        super().__init__()
        self.files, self.staging = files, staging

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> None:
        with ExitStack() as stack:
            writers: dict[int, Any] = {}
            for doc in data:
                index = doc.metadata["file"]
                if index not in writers:
                    out = Path(self.staging) / Path(self.files[index]).name
                    writers[index] = stack.enter_context(open_writer(out))
                writers[index](doc.metadata["row"])
                self.stat_update("rows")


def cluster_rank(cluster: dict[str, Any]) -> tuple[int, list[int]]:
    return -cluster["duplicates"], cluster["order"]
