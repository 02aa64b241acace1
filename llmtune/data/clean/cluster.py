"""MinHash stage 3 of the executors' path, verified: the in-process rule applied to datatrove's LSH pairs.

datatrove's stage 2 (`MinhashDedupBuckets`) writes, per band, each run of documents with equal band values as a
chain of pairs. Here every two documents of a run are candidates, as the in-process index makes them; a candidate
counts when the estimated Jaccard similarity of the two 8-bit signatures reaches the threshold; then, in input
order, a document is dropped when it is similar to an earlier document that is kept. datatrove's own stage 3
would drop every document of a connected set of pairs but one, similar or not: looser on rows of one template.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from llmtune.data.clean.dedup import NearDedup
from llmtune.data.clean.trove import TOP_CLUSTERS, cluster_rank, save_part

LOW = 0xFFFFFFFF
PAIRS_AT_ONCE = 1 << 16


def run_pairs(dups: np.ndarray) -> np.ndarray:
    """(earlier, later) node pairs (node: task << 32 | document) of every two documents in each run of a bucket."""
    a = dups[:, 0].astype(np.int64) << 32 | dups[:, 1]
    b = dups[:, 2].astype(np.int64) << 32 | dups[:, 3]
    starts = np.flatnonzero(np.concatenate([[True], a[1:] != b[:-1]]))  # a run continues while pairs chain
    pairs = [np.stack([a, b], axis=1)]
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(a)], strict=True):
        if end - start > 1:
            members = [int(a[start]), *b[start:end].tolist()]
            pairs.append(np.array(list(itertools.combinations(members, 2)), dtype=np.int64))
    found = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    return np.sort(found, axis=1)


class VerifiedCluster(PipelineStep):
    """Reads the bucket stage's pairs and the signature stage's 8-bit signatures and names; writes datatrove's
    `.remove` files (for `MinhashDedupFilter`), each dropped row's reason, and the largest clusters."""

    name, type = "🎯 llmtune verified clusters", "🫂 - DEDUP"

    def __init__(self, folder: str, threshold: float, perms: int, parts: str, label: str) -> None:
        super().__init__()
        self.folder, self.threshold, self.perms, self.parts, self.label = folder, threshold, perms, parts, label

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        folder = Path(self.folder)
        files = sorted((folder / "dups").glob("*.dups"))
        dups = [np.fromfile(f, dtype="<u4").reshape(-1, 4) for f in files]
        pairs = np.unique(np.concatenate([run_pairs(d) for d in dups if len(d)] or [np.zeros((0, 2), np.int64)]),
                          axis=0)  # fmt: skip
        self.stat_update("candidate pairs", value=len(pairs))
        similarity = self._similarity(pairs)
        close = similarity >= self.threshold
        dropped = self._first_kept(pairs[close], similarity[close])
        self.stat_update("dropped", value=len(dropped))
        self._write(dropped)

    def _signatures(self, nodes: np.ndarray, sigs: dict[int, np.ndarray]) -> np.ndarray:
        out = np.empty((len(nodes), self.perms), dtype=np.uint8)
        task = nodes >> 32
        for t in np.unique(task).tolist():
            if t not in sigs:
                sigs[t] = np.memmap(Path(self.folder) / "full" / f"{t:05d}.u8", dtype=np.uint8, mode="r")
                sigs[t] = sigs[t].reshape(-1, self.perms)
            pick = task == t
            out[pick] = sigs[t][nodes[pick] & LOW]
        return out

    def _similarity(self, pairs: np.ndarray) -> np.ndarray:
        sigs: dict[int, np.ndarray] = {}
        similarity = np.zeros(len(pairs))
        for lo in range(0, len(pairs), PAIRS_AT_ONCE):
            chunk = pairs[lo : lo + PAIRS_AT_ONCE]
            a, b = self._signatures(chunk[:, 0], sigs), self._signatures(chunk[:, 1], sigs)
            similarity[lo : lo + len(chunk)] = NearDedup._similarity(a, b)
        return similarity

    @staticmethod
    def _first_kept(pairs: np.ndarray, similarity: np.ndarray) -> dict[int, tuple[int, float]]:
        """Dropped node -> (the most similar earlier kept node, similarity), deciding nodes in input order."""
        dropped: dict[int, tuple[int, float]] = {}
        order = np.lexsort((pairs[:, 0], pairs[:, 1]))
        for (earlier, later), value in zip(pairs[order].tolist(), similarity[order].tolist(), strict=True):
            if earlier not in dropped and (later not in dropped or value > dropped[later][1]):
                dropped[later] = (earlier, value)
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
