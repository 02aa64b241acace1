"""MinHash stage 3 of the executors' path, verified: the in-process rule applied to datatrove's LSH pairs.

datatrove's stage 2 (`MinhashDedupBuckets`) writes, per band, each run of documents with equal band values as a
chain of pairs. Here, in input order, a document is dropped when the estimated Jaccard similarity of its 8-bit
signature to an earlier kept document sharing a run (among the first BUCKET_CAP kept of that run) reaches the
threshold: the in-process rule over the same candidates, so both paths drop the same rows. datatrove's own stage 3
drops every document of a connected set of pairs but one, similar or not: looser on rows of one template.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from llmtune.data.clean.dedup import BUCKET_CAP, checked_similarity
from llmtune.data.clean.trove import TOP_CLUSTERS, cluster_rank, save_part

LOW = 0xFFFFFFFF


def band_runs(dups: np.ndarray) -> list[list[int]]:
    """The runs of one bucket file (node: task << 32 | document): the documents sharing one band's values, which
    datatrove writes as a chain of pairs (a, b), (b, c), ..., sorted by task and document."""
    a = dups[:, 0].astype(np.int64) << 32 | dups[:, 1]
    b = dups[:, 2].astype(np.int64) << 32 | dups[:, 3]
    starts = np.flatnonzero(np.concatenate([[True], a[1:] != b[:-1]]))  # a run goes on while the pairs chain
    ends = [*starts[1:].tolist(), len(a)]
    return [[int(a[start]), *b[start:end].tolist()] for start, end in zip(starts.tolist(), ends, strict=True)]


class VerifiedCluster(PipelineStep):
    """Reads the bucket stage's pairs and the signature stage's 8-bit signatures and names; writes datatrove's
    `.remove` files (for `MinhashDedupFilter`), each dropped row's reason, and the largest clusters."""

    name, type = "🎯 llmtune verified clusters", "🫂 - DEDUP"

    def __init__(self, folder: str, threshold: float, perms: int, parts: str, label: str) -> None:
        super().__init__()
        self.folder, self.threshold, self.perms, self.parts, self.label = folder, threshold, perms, parts, label
        self._sigs: dict[int, np.ndarray] = {}

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        runs = [run for f in sorted((Path(self.folder) / "dups").glob("*.dups"))
                for run in band_runs(np.fromfile(f, dtype="<u4").reshape(-1, 4))]  # fmt: skip
        self.stat_update("runs", value=len(runs))
        dropped = self._first_kept(runs)
        self.stat_update("dropped", value=len(dropped))
        self._write(dropped)
        self._sigs = {}

    def _signatures(self, nodes: np.ndarray, width: int) -> np.ndarray:
        out = np.empty((len(nodes), width), dtype=np.uint8)
        task = nodes >> 32
        for t in np.unique(task).tolist():
            if t not in self._sigs:
                found = np.memmap(Path(self.folder) / "full" / f"{t:05d}.u8", dtype=np.uint8, mode="r")
                self._sigs[t] = found.reshape(-1, self.perms)
            pick = task == t
            out[pick] = self._sigs[t][nodes[pick] & LOW, :width]
        return out

    def _first_kept(self, runs: list[list[int]]) -> dict[int, tuple[int, float]]:
        """Dropped node -> (the most similar earlier kept node, similarity), deciding nodes in input order: a node's
        candidates are the first BUCKET_CAP kept nodes of each of its runs, as the in-process index holds them."""
        if not runs:
            return {}
        nodes = np.concatenate([np.asarray(r, dtype=np.int64) for r in runs])
        run_of = np.repeat(np.arange(len(runs)), [len(r) for r in runs])
        order = np.lexsort((run_of, nodes))
        nodes, run_of = nodes[order], run_of[order]
        starts = np.flatnonzero(np.concatenate([[True], nodes[1:] != nodes[:-1]]))
        kept_in: list[list[int]] = [[] for _ in runs]
        dropped: dict[int, tuple[int, float]] = {}
        for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(nodes)], strict=True):
            node, its_runs = int(nodes[start]), run_of[start:end].tolist()
            candidates = np.array(sorted({c for r in its_runs for c in kept_in[r]}), dtype=np.int64)
            if len(candidates):
                query = np.broadcast_to(self._signatures(np.array([node]), self.perms), (len(candidates), self.perms))
                similarity = checked_similarity(self._signatures, candidates, query, self.threshold)
                best = int(np.argmax(similarity))  # the first of the most similar: the earliest
                if similarity[best] >= self.threshold:
                    dropped[node] = (int(candidates[best]), float(similarity[best]))
                    continue
            for r in its_runs:
                if len(kept_in[r]) < BUCKET_CAP:
                    kept_in[r].append(node)
        return dropped

    def _names(self, nodes: set[int]) -> dict[int, list[Any]]:
        """[where, file, row in file] of these nodes, from the signature stage's names files."""
        found: dict[int, list[Any]] = {}
        for task in sorted({n >> 32 for n in nodes}):
            with (Path(self.folder) / "names" / f"{task:05d}.jsonl").open(encoding="utf-8") as handle:
                for doc, line in enumerate(handle):
                    if (task << 32 | doc) in nodes:
                        found[task << 32 | doc] = json.loads(line)
        return found

    def _write(self, dropped: dict[int, tuple[int, float]]) -> None:
        folder = Path(self.folder)
        names = self._names(set(dropped) | {kept for kept, _ in dropped.values()})
        removals: dict[int, list[int]] = {}
        reasons: dict[int, dict[str, str]] = {}
        sizes: Counter[int] = Counter()
        examples: dict[int, list[str]] = {}
        for node in sorted(dropped):
            kept, value = dropped[node]
            removals.setdefault(node >> 32, []).append(node & LOW)
            where = names[node][0]
            reasons.setdefault(node >> 32, {})[where] = f"near duplicate of {names[kept][0]} (Jaccard ~{value:.2f})"
            sizes[kept] += 1
            if len(examples.setdefault(kept, [])) < 3:
                examples[kept].append(where)
        (folder / "remove").mkdir(parents=True, exist_ok=True)
        (folder / "reasons").mkdir(parents=True, exist_ok=True)
        for task, docs in removals.items():
            (folder / "remove" / f"{task:06d}.remove").write_bytes(b"".join(struct.pack("<I", d) for d in docs))
            (folder / "reasons" / f"{task:05d}.json").write_text(json.dumps(reasons[task], ensure_ascii=False))
        clusters = [{"kept": names[k][0], "duplicates": n, "examples": examples[k], "order": names[k][1:]}
                    for k, n in sizes.items()]  # fmt: skip
        clusters = sorted(clusters, key=cluster_rank)[:TOP_CLUSTERS]
        save_part(self.parts, f"cluster-{self.label}", {"clusters": {"near": clusters}})
