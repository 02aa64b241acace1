"""Exact and near-duplicate deduplication, streaming in batches: the first row of a cluster is kept, later ones dropped.

Memory grows with the index, not with the data: for exact, an 8-byte hash and a 4-byte row number per kept row in
a hash table (about 25 bytes); for near, each kept row's MinHash values (8 bits each: 128 bytes at 128
permutations) and its LSH band keys (a 4-byte key and a 4-byte position per band, about 17 bytes with the table's
slack: 18 bands, about 300 bytes). A row is a near duplicate when LSH finds an earlier kept row whose estimated
Jaccard similarity of word n-gram sets reaches the threshold.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from llmtune.data.clean.minhash import HashTable, band_keys, signatures, word_hashes
from llmtune.data.clean.spec import NearSpec

SPACES = re.compile(r"\s+")
LSH_WEIGHTS = (0.2, 0.8)  # (false positive, false negative) weights for datasketch's band choice
CHUNK = 1 << 14  # kept rows' signatures per block
VERIFY_CHUNK, ROUGH = 1 << 16, 32  # candidate pairs verified at a time; values of the first, rough estimate
BUCKET_CAP = 64  # kept rows an LSH bucket holds
TRAILING_NUMBER = re.compile(r"(.*?)(\d+)$", re.DOTALL)

# Near-duplicate defaults by row kind: (words per shingle, Jaccard threshold, permutations). Pretraining documents:
# 5-grams as FineWeb. Chat turns, instructions and prompts are short: a changed word removes 5 of ~20 5-grams, so
# word pairs; and rows of one template differ in a few words, so 256 permutations estimate their similarity more
# closely (one-word copies of 25-word rows sit at about 0.82, template-mates at 0.6; see docs/benchmarks.md).
NEAR_DEFAULTS: dict[str, tuple[int, float, int]] = {
    "text": (5, 0.7, 128),
    "chat": (2, 0.7, 256),
    "preference": (2, 0.7, 256),
    "prompt": (2, 0.7, 256),
}
LSH_PERMUTATIONS = 128  # LSH bands come from the first 128 values at most; more only sharpen the verification


def normalise(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: what "the same text" means for exact deduplication."""
    return SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def near_settings(spec: NearSpec, kind: str) -> tuple[int, float, int]:
    """(ngram, threshold, permutations) for a row kind: the spec's values, or the kind's defaults where null."""
    ngram, threshold, permutations = NEAR_DEFAULTS[kind]
    return spec.ngram or ngram, spec.threshold or threshold, spec.permutations or permutations


class RowNames:
    """Where each row came from ("data.jsonl:17") by row number, in about 4 bytes a row: a number under its file's
    prefix (any other shape of name is kept whole)."""

    def __init__(self) -> None:
        self.numbers = array("I")
        self.starts: list[int] = []
        self.prefixes: list[str] = []
        self.other: dict[int, str] = {}

    def add(self, where: str) -> int:
        row = len(self.numbers)
        found = TRAILING_NUMBER.match(where)
        if found and int(found.group(2)) < 2**32:
            if not self.prefixes or self.prefixes[-1] != found.group(1):
                self.starts.append(row)
                self.prefixes.append(found.group(1))
            self.numbers.append(int(found.group(2)))
        else:
            self.other[row] = where
            self.numbers.append(0)
        return row

    def __getitem__(self, row: int) -> str:
        if row in self.other:
            return self.other[row]
        return f"{self.prefixes[bisect_right(self.starts, row) - 1]}{self.numbers[row]}"


class Clusters:
    """Counts of dropped duplicates per kept row, for the report's largest clusters."""

    def __init__(self, names: RowNames) -> None:
        self.names = names
        self.sizes: Counter[int] = Counter()
        self.examples: dict[int, list[int]] = {}

    def add(self, kept: int, dropped: int) -> None:
        self.sizes[kept] += 1
        shown = self.examples.setdefault(kept, [])
        if len(shown) < 3:
            shown.append(dropped)

    def largest(self, n: int = 5) -> list[dict[str, Any]]:
        top = sorted(self.sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [{"kept": self.names[kept], "duplicates": size, "examples": [self.names[d] for d in self.examples[kept]]}
                for kept, size in top]  # fmt: skip


class ExactDedup:
    name = "exact"

    def __init__(self, names: RowNames) -> None:
        self.names, self.table, self.clusters = names, HashTable(), Clusters(names)

    def check_batch(self, texts: list[str], rows: list[int]) -> list[str | None]:
        digests = b"".join(hashlib.blake2b(normalise(t).encode("utf-8"), digest_size=8).digest() for t in texts)
        keys = np.frombuffer(digests, dtype=np.uint64)
        at, first = self.table.find(keys)
        earlier: dict[Any, int] = dict(zip(at.tolist(), first.tolist(), strict=True))
        reasons: list[str | None] = []
        fresh: dict[int, int] = {}
        new: list[int] = []
        for i, (key, row) in enumerate(zip(keys.tolist(), rows, strict=True)):
            kept = earlier.get(i, fresh.get(key))
            if kept is None:
                fresh[key] = row
                new.append(i)
                reasons.append(None)
            else:
                self.clusters.add(kept, row)
                reasons.append(f"duplicate of {self.names[kept]}")
        self.table.insert(keys[new], np.asarray(rows, dtype=np.uint32)[new])
        return reasons


def b_bit_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of pairs of 8-bit signatures (Li and Koenig's b-bit estimator)."""
    equal = np.count_nonzero(a == b, axis=-1) / a.shape[-1]
    return np.maximum(0.0, (equal - 1 / 256) / (1 - 1 / 256))


def checked_similarity(stored: Callable[[np.ndarray, int], np.ndarray], picks: np.ndarray, query: np.ndarray,
                       threshold: float) -> np.ndarray:  # fmt: skip
    """Similarity of the stored signatures `stored(picks, width)` to the query rows. Rows of one template share
    bands with many of their mates, so a 32-value estimate comes first and a pair more than 0.25 under the
    threshold by it (over 3 standard deviations) gets 0: most candidates cost 32 bytes, not all."""
    rough = b_bit_similarity(stored(picks, ROUGH), query[:, :ROUGH])
    close = np.flatnonzero(rough >= threshold - 0.25)
    out = np.zeros(len(picks))
    out[close] = b_bit_similarity(stored(picks[close], query.shape[1]), query[close])
    return out


class NearDedup:
    """MinHash LSH over word n-grams for one row kind (shingles of different sizes are not comparable).

    A band key's bucket holds the first BUCKET_CAP kept rows with it: rows of one template can share a band with
    thousands of their mates, and checking every one made the step quadratic. A copy shares several of its
    source's bands (4.5 of 18 at Jaccard 0.82), most of them rare, so a full bucket costs little recall."""

    name = "near"

    def __init__(self, spec: NearSpec, kind: str, names: RowNames, clusters: Clusters) -> None:
        self.ngram, self.threshold, self.perms = near_settings(spec, kind)
        self.seed = spec.seed
        self.bands, self.band_rows = lsh_bands(self.threshold, self.perms)
        self.names, self.clusters = names, clusters
        self.table = HashTable(np.uint32)  # band key -> position among the kept rows
        self.chunks: list[np.ndarray] = []  # the kept rows' signatures, CHUNK rows a block (no copying to grow)
        self.row_of = array("I")  # position among the kept rows -> row number

    def check_batch(self, texts: list[str], rows: list[int]) -> list[str | None]:
        sigs = signatures([word_hashes(t) for t in texts], self.ngram, self.perms, self.seed)
        keys = self.table.prepare(band_keys(sigs, self.bands, self.band_rows).ravel()).reshape(len(rows), -1)
        low = sigs.astype(np.uint8)  # b-bit MinHash: 8 bits of each value, equal by chance 1 in 256 (corrected for)
        at, position = self.table.find(keys.ravel())
        filled = np.bincount(at, minlength=keys.size).reshape(keys.shape)  # entries of each key in the index
        earlier = self._best_in_index(at, position, low)
        within = self._pairs_in_batch(keys, low)
        # keys met twice in the batch are counted row by row (their buckets also give in-batch candidates); a key
        # met once goes in its bucket if the index holds fewer than BUCKET_CAP rows with it
        _, where, count = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
        repeated = (count[where] > 1).reshape(keys.shape)
        admitted = (filled < BUCKET_CAP) & ~repeated
        shared = {i: [(b, k, f) for b, k, f, r in zip(range(self.bands), ks, fs, rs, strict=True) if r]
                  for i, (ks, fs, rs) in enumerate(zip(keys.tolist(), filled.tolist(), repeated.tolist(), strict=True))
                  if any(rs)}  # fmt: skip
        buckets: dict[int, list[int]] = {}  # repeated key -> batch rows kept and put in its bucket
        reasons: list[str | None] = []
        for i, row in enumerate(rows):
            best, similarity = earlier.get(i, (None, 0.0))
            if i in within:
                reachable = {j for _, key, _ in shared[i] for j in buckets.get(key, ())}
                for j, estimate in within[i]:
                    if j in reachable and estimate > similarity:
                        best, similarity = rows[j], estimate
            if best is not None and similarity >= self.threshold:
                self.clusters.add(best, row)
                reasons.append(f"near duplicate of {self.names[best]} (Jaccard ~{similarity:.2f})")
                continue
            reasons.append(None)
            for band, key, in_index in shared.get(i, ()):
                bucket = buckets.setdefault(key, [])
                if in_index + len(bucket) < BUCKET_CAP:
                    bucket.append(i)
                    admitted[i, band] = True
        kept = [i for i, reason in enumerate(reasons) if reason is None]
        self._add(kept, admitted, low, keys, rows)
        return reasons

    def _stored(self, position: np.ndarray, width: int) -> np.ndarray:
        """The first `width` values of the kept rows' signatures at these positions."""
        out = np.empty((len(position), width), dtype=np.uint8)
        order = np.argsort(position, kind="stable")
        ordered = position[order]
        bounds = np.searchsorted(ordered, np.arange(len(self.chunks) + 1) * CHUNK)
        for chunk, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
            if hi > lo:
                out[order[lo:hi]] = self.chunks[chunk][ordered[lo:hi] - chunk * CHUNK, :width]
        return out

    def _best_in_index(self, at: np.ndarray, stored: np.ndarray, low: np.ndarray) -> dict[int, tuple[int, float]]:
        """For each batch row with LSH candidates among the kept rows: (the most similar one's row, similarity)."""
        if not len(at):
            return {}
        pairs = np.unique((at // self.bands).astype(np.int64) << 32 | stored.astype(np.int64))
        batch_row, position = pairs >> 32, pairs & 0xFFFFFFFF
        similarity = np.zeros(len(pairs))
        for lo in range(0, len(pairs), VERIFY_CHUNK):  # bounded temporaries
            rows, where = batch_row[lo : lo + VERIFY_CHUNK], position[lo : lo + VERIFY_CHUNK]
            similarity[lo : lo + len(rows)] = checked_similarity(self._stored, where, low[rows], self.threshold)
        order = np.lexsort((position, -similarity, batch_row))  # per row: most similar first, then the earliest
        first = order[np.concatenate([[True], np.diff(batch_row[order]) != 0])]
        return {int(i): (self.row_of[int(p)], float(v))
                for i, p, v in zip(batch_row[first], position[first], similarity[first], strict=True)}  # fmt: skip

    def _pairs_in_batch(self, keys: np.ndarray, low: np.ndarray) -> dict[int, list[tuple[int, float]]]:
        """For each batch row, the earlier rows of the batch sharing a band with it, with their similarity."""
        pairs = shared_band_pairs(keys.ravel(), self.bands)
        if not len(pairs):
            return {}
        before, later = pairs.T
        similarity = checked_similarity(lambda p, w: low[p, :w], before, low[later], self.threshold)
        found: dict[int, list[tuple[int, float]]] = {}
        for i, j, v in zip(later.tolist(), before.tolist(), similarity.tolist(), strict=True):
            found.setdefault(i, []).append((j, v))
        return found

    def _add(self, kept: list[int], admitted: np.ndarray, low: np.ndarray, keys: np.ndarray, rows: list[int]) -> None:
        first = len(self.row_of)
        for n, i in enumerate(kept, start=first):
            if n % CHUNK == 0:
                self.chunks.append(np.zeros((CHUNK, self.perms), dtype=np.uint8))
            self.chunks[-1][n % CHUNK] = low[i]
        self.row_of.extend(rows[i] for i in kept)
        positions = np.broadcast_to(
            np.arange(first, first + len(kept), dtype=np.uint32)[:, None], (len(kept), self.bands)
        )
        chosen = admitted[kept]
        self.table.insert(keys[kept][chosen], positions[chosen])


def shared_band_pairs(keys: np.ndarray, bands: int) -> np.ndarray:
    """(earlier, later) pairs of the rows sharing a band key, given the keys of rows x bands, flattened."""
    order = np.argsort(keys, kind="stable")  # equal keys stay in row order
    ranked = keys[order]
    bounds = np.flatnonzero(np.concatenate([[True], ranked[1:] != ranked[:-1], [True]]))
    shared = np.flatnonzero(np.diff(bounds) > 1)  # runs of two or more rows with one band key
    pairs: set[tuple[int, int]] = set()
    for start, end in zip(bounds[shared].tolist(), bounds[shared + 1].tolist(), strict=True):
        run = sorted(set((order[start:end] // bands).tolist()))
        pairs.update((run[n], later) for k, later in enumerate(run) for n in range(k))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def lsh_bands(threshold: float, perms: int) -> tuple[int, int]:
    """(bands, values a band): datasketch's choice for the threshold over the first 128 values at most, with a
    missed pair weighing four times a false candidate (every candidate is verified, so a false one costs a
    comparison and a missed one a duplicate)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=min(perms, LSH_PERMUTATIONS), weights=LSH_WEIGHTS)
    return lsh.b, lsh.r
