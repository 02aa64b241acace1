"""Exact and near-duplicate deduplication, streaming: the first row of a cluster is kept, later ones dropped.

Memory grows with the index (an 8-byte hash per kept row for exact; the LSH bands for near), not with the data.
Near duplicates use datasketch's MinHash over word n-grams and its MinHashLSH index; a candidate is confirmed by
its estimated Jaccard similarity, so LSH only decides which rows are compared.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from typing import Any

from llmtune.data.clean.rules import words
from llmtune.data.clean.spec import NearSpec

SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: what "the same text" means for exact deduplication."""
    return SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


class Clusters:
    """Counts of dropped duplicates per kept row, for the report's largest clusters."""

    def __init__(self) -> None:
        self.sizes: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, kept: str, dropped: str) -> None:
        self.sizes[kept] += 1
        shown = self.examples.setdefault(kept, [])
        if len(shown) < 3:
            shown.append(dropped)

    def largest(self, n: int = 5) -> list[dict[str, Any]]:
        top = sorted(self.sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [{"kept": kept, "duplicates": size, "examples": self.examples[kept]} for kept, size in top]


class ExactDedup:
    name = "exact"

    def __init__(self) -> None:
        self.seen: dict[bytes, str] = {}
        self.clusters = Clusters()

    def check(self, text: str, where: str) -> str | None:
        key = hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=8).digest()
        first = self.seen.get(key)
        if first is None:
            self.seen[key] = where
            return None
        self.clusters.add(first, where)
        return f"duplicate of {first}"


def shingles(text: str, n: int) -> set[bytes]:
    """Word n-grams of the normalised text (one shingle when shorter than n words)."""
    found = words(normalise(text))
    if len(found) <= n:
        return {" ".join(found).encode("utf-8")}
    return {" ".join(found[i : i + n]).encode("utf-8") for i in range(len(found) - n + 1)}


class NearDedup:
    name = "near"

    def __init__(self, spec: NearSpec) -> None:
        from datasketch import MinHash, MinHashLSH

        self.spec = spec
        self.template = MinHash(
            num_perm=spec.permutations, seed=spec.seed, scheme="affine32"
        )  # permutations made once, then shared
        self.index = MinHashLSH(threshold=spec.threshold, num_perm=spec.permutations, hashfunc=_band_key)
        self.signatures: dict[str, bytes] = {}  # uint32 hash values: affine32 MinHash values fit 32 bits
        self.clusters = Clusters()

    def signature(self, text: str) -> Any:
        from datasketch import MinHash

        sig = MinHash(
            num_perm=self.spec.permutations,
            seed=self.spec.seed,
            permutations=self.template.permutations,
            scheme="affine32",
        )
        sig.update_batch(list(shingles(text, self.spec.ngram)))
        return sig

    def check(self, text: str, where: str) -> str | None:
        import numpy as np

        sig = self.signature(text)
        values = sig.hashvalues.astype(np.uint32)
        best, similarity = None, 0.0
        for key in sorted(self.index.query(sig)):
            estimate = float(np.mean(np.frombuffer(self.signatures[key], dtype=np.uint32) == values))
            if estimate > similarity:
                best, similarity = key, estimate
        if best is not None and similarity >= self.spec.threshold:
            self.clusters.add(best, where)
            return f"near duplicate of {best} (Jaccard ~{similarity:.2f})"
        self.index.insert(where, sig)
        self.signatures[where] = values.tobytes()
        return None


def _band_key(band: bytes) -> bytes:
    """LSH band keys shortened to 8 bytes (datasketch would keep the whole band) to bound the index's memory."""
    return hashlib.blake2b(band, digest_size=8).digest()
