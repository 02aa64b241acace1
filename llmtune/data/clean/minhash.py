"""Batched MinHash signatures and a compact hash table: what near deduplication needs, vectorised with numpy.

Signatures are datasketch's `affine32` MinHash (its permutations, its MurmurHash3 pre-mix), computed for a batch of
rows at once instead of one `MinHash` object per row; `tests/test_clean.py` checks them against datasketch's own
`MinHash.update_batch`. A shingle's 32-bit input hash combines the CRC-32 of its words, so hashing is one C call
per word. The index is an open-addressing table in two numpy arrays (12 bytes a slot, at most half full) rather
than datasketch's dict of sets (about 2.5 KB a row at 128 permutations), so memory stays small at a million rows.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from zlib import crc32

import numpy as np

from llmtune.data.clean.rules import words

M32 = np.uint32(0xFFFFFFFF)


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for this many permutations and seed."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 32-bit finaliser (datasketch's pre-mix for affine32), element-wise, wrapping."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def word_hashes(text: str) -> list[int]:
    """CRC-32 of each word of the text, after NFKC and lower case (a text without words counts as one empty word)."""
    found = words(unicodedata.normalize("NFKC", text).lower())
    return list(map(crc32, map(str.encode, found))) if found else [0]


_GRAM_MULTIPLIERS = np.random.RandomState(12345).randint(1, 2**63, size=64, dtype=np.int64).astype(np.uint64) | 1


def shingle_hashes(per_row: list[list[int]], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every word n-gram of each row (a row shorter than n words is one shingle), and the index of
    each row's first shingle. Rows are laid end to end; an n-gram never spans two rows."""
    lengths = np.fromiter(map(len, per_row), dtype=np.int64, count=len(per_row))
    flat = np.fromiter((h for row in per_row for h in row), dtype=np.uint64, count=int(lengths.sum()))
    ends = np.repeat(np.cumsum(lengths), lengths)
    starts = ends - np.repeat(lengths, lengths)
    at = np.arange(len(flat))
    combined = np.zeros(len(flat), dtype=np.uint64)
    for k in range(ngram):
        inside = at + k < ends
        combined[inside] += flat[at[inside] + k] * _GRAM_MULTIPLIERS[k % len(_GRAM_MULTIPLIERS)]
    keep = (at + ngram <= ends) | (at == starts)
    folded = ((combined[keep] >> np.uint64(32)) ^ combined[keep]) & np.uint64(0xFFFFFFFF)
    counts = np.minimum(lengths, np.maximum(lengths - ngram + 1, 1))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return folded.astype(np.uint32), offsets


def signatures(per_row: list[list[int]], ngram: int, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (rows x num_perm, uint32) of the rows' word n-gram sets, given their words' hashes."""
    hashes, offsets = shingle_hashes(per_row, ngram)
    a, b = permutations(num_perm, seed)
    a, b, mixed = a[:, None], b[:, None], fmix32(hashes)[None, :]
    out = np.empty((len(per_row), num_perm), dtype=np.uint32)
    chunk = max(1, (1 << 20) // num_perm)  # about 4 MB of permuted values at a time
    rows_at = np.searchsorted(offsets, np.arange(0, len(hashes), chunk), side="right") - 1
    bounds = [*rows_at.tolist(), len(per_row)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi <= lo:
            continue
        first, last = offsets[lo], offsets[hi] if hi < len(per_row) else len(hashes)
        permuted = a * mixed[:, first:last] + b  # permutations x shingles: each row's minimum is a contiguous run
        out[lo:hi] = np.minimum.reduceat(permuted, offsets[lo:hi] - first, axis=1).T
    return out


@lru_cache(maxsize=8)
def _band_multipliers(bands: int, rows: int) -> np.ndarray:
    return np.random.RandomState(54321).randint(1, 2**63, size=(bands, rows), dtype=np.int64).astype(np.uint64)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (row, band): a universal hash of the band's values (different for each band), mixed."""
    values = sigs[:, : bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    keys = (values * _band_multipliers(bands, rows)).sum(axis=2, dtype=np.uint64)
    keys ^= keys >> np.uint64(29)
    keys *= np.uint64(0xBF58476D1CE4E5B9)
    return keys ^ (keys >> np.uint64(32))


class HashTable:
    """Nonzero integer keys -> uint32 values by linear probing in two numpy arrays, 35-70% full; one key may hold
    several values (each in its own slot). Lookups and inserts take whole arrays of keys. 32-bit keys (LSH bands,
    whose candidates are verified anyway) take 8 bytes a slot; 64-bit keys (exact hashes) 12."""

    MAX_LOAD, GROWTH, REHASH_CHUNK, WINDOW = 0.7, 2, 1 << 18, 16

    def __init__(self, key_dtype: type = np.uint64, capacity: int = 1 << 16) -> None:
        self.dtype = np.dtype(key_dtype)
        self.keys = np.zeros(capacity, dtype=self.dtype)
        self.values = np.zeros(capacity, dtype=np.uint32)
        self.size = 0

    def prepare(self, keys: np.ndarray) -> np.ndarray:
        """The keys as the table stores them: in its type (64-bit keys cast to 32 bits keep their low half), 0 as 1."""
        keys = keys.astype(self.dtype)
        keys[keys == 0] = 1
        return keys

    def _prepare(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored form of the keys, and each one's home slot."""
        keys = self.prepare(keys)
        return keys, (keys % self.dtype.type(len(self.keys))).astype(np.int64)

    def _window(self, slot: np.ndarray, width: int) -> np.ndarray:
        """`width` slots from each of these on, wrapping around the end."""
        window = slot[:, None] + np.arange(width)
        window[window >= len(self.keys)] -= len(self.keys)
        return window

    def _width(self, step: int) -> int:
        """Slots a probe looks at in its `step`-th turn: one at first (most probes end there), then WINDOW, so a long
        run of equal or clustered keys costs a turn per WINDOW slots rather than per slot."""
        return 1 if step < 2 else self.WINDOW

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `keys`, value) for every stored entry whose key equals one of `keys`."""
        keys, slot = self._prepare(keys)
        which, step = np.arange(len(keys)), 0
        found_at, found_value = [], []
        while len(which):
            window = self._window(slot, self._width(step))
            stored = self.keys[window]
            before_empty = np.cumsum(stored == 0, axis=1) == 0  # a probe ends at the first empty slot
            hit = (stored == keys[which, None]) & before_empty
            if hit.any():
                found_at.append(np.repeat(which, hit.sum(axis=1)))
                found_value.append(self.values[window[hit]])
            going = before_empty[:, -1]
            which, slot, step = which[going], window[going, -1] + 1, step + 1
            slot[slot == len(self.keys)] = 0
        if not found_at:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint32)
        return np.concatenate(found_at), np.concatenate(found_value)

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        if self.size + len(keys) > self.MAX_LOAD * len(self.keys):
            self._grow(self.size + len(keys))
        keys, slot = self._prepare(keys)
        which, step = np.arange(len(keys)), 0
        while len(which):
            window = self._window(slot, self._width(step))
            free = self.keys[window] == 0
            found = free.any(axis=1)
            target = window[np.arange(len(which)), np.argmax(free, axis=1)]  # the first free slot in the window
            candidates = np.flatnonzero(found)
            _, first = np.unique(target[candidates], return_index=True)  # one claimant per free slot
            won = candidates[first]
            self.keys[target[won]] = keys[which[won]]
            self.values[target[won]] = values[which[won]]
            lost = np.ones(len(which), dtype=bool)
            lost[won] = False
            slot = np.where(found, target, window[:, -1]) + 1
            slot[slot == len(self.keys)] = 0
            which, slot, step = which[lost], slot[lost], step + 1
        self.size += len(keys)

    def _grow(self, entries: int) -> None:
        capacity = len(self.keys)
        while entries > self.MAX_LOAD * capacity:
            capacity = int(capacity * self.GROWTH)
        old_keys, old_values = self.keys, self.values
        self.keys = np.zeros(capacity, dtype=self.dtype)
        self.values = np.zeros(capacity, dtype=np.uint32)
        self.size = 0
        for start in range(0, len(old_keys), self.REHASH_CHUNK):  # in chunks: few temporaries
            used = np.flatnonzero(old_keys[start : start + self.REHASH_CHUNK]) + start
            self.insert(old_keys[used], old_values[used])
