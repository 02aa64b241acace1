"""The tokenized-data cache: one directory per key, the key a hash of everything that changes the result.

Key inputs: llmtune's version, this cache's format, the stage, every source (its fields, and its file's content
or, for a file over HASH_LIMIT or the files of a directory, size and mtime), the data block except cache_dir, the
resolved packing, the seed, the tokenizer (its full serialization and special tokens) and the chat template text.
A cache is written into a temporary directory and renamed into place, so a killed run never leaves half a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import __version__
from llmtune.data.readers import resolve_path
from llmtune.schema import Recipe

if TYPE_CHECKING:
    import datasets

CACHE_FORMAT = 1
HASH_LIMIT = 64 * 1024 * 1024
STATS_FILE = "stats.json"


def _file_fingerprint(path: Path, hash_limit: int = HASH_LIMIT) -> str:
    stat = path.stat()
    if stat.st_size > hash_limit:
        return f"size={stat.st_size},mtime={stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_fingerprint(path: Path) -> dict[str, str]:
    """A file's content hash (size and mtime over HASH_LIMIT); size and mtime of each file under a directory
    (dataset directories and Hub snapshots can hold gigabytes, and are replaced rather than edited)."""
    if path.is_file():
        return {path.name: _file_fingerprint(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {str(p.relative_to(path)): _file_fingerprint(p, hash_limit=-1) for p in files}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's full serialization (vocab, merges, normalizer, post-processor) and special tokens."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    specials = {"map": tokenizer.special_tokens_map, "added": sorted(tokenizer.get_added_vocab().items())}
    digest.update(json.dumps(specials, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_key(recipe: Recipe, tokenizer: Any, template: str | None) -> str:
    """sha256 over every input that affects the tokenized datasets (see the module docstring)."""
    data = recipe.data
    sources = [
        {**src.model_dump(), "files": path_fingerprint(resolve_path(src.path, src.revision, recipe.hub.endpoint))}
        for src in [*data.train, *data.eval]
    ]
    material = {
        "llmtune": __version__,
        "format": CACHE_FORMAT,
        "stage": recipe.stage,
        "sources": sources,
        "data": data.model_dump(exclude={"cache_dir", "train", "eval"}),
        "packing": recipe.packing,
        "seed": recipe.train.seed,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template or "",
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_cached(path: Path) -> tuple[datasets.Dataset, datasets.Dataset | None, dict[str, Any]] | None:
    """(train, eval, stats) from a finished cache directory, or None when there is none."""
    if not (path / STATS_FILE).is_file():
        return None
    import datasets

    stats = json.loads((path / STATS_FILE).read_text(encoding="utf-8"))
    train = datasets.load_from_disk(str(path / "train"))
    evals = datasets.load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return train, evals, stats


def save_cached(path: Path, train: datasets.Dataset, evals: datasets.Dataset | None, stats: dict[str, Any]) -> None:
    """Write into a temporary sibling, then rename it to `path`; if another run got there first, keep theirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        train.save_to_disk(str(staging / "train"))
        if evals is not None:
            evals.save_to_disk(str(staging / "eval"))
        (staging / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        try:
            staging.rename(path)
        except OSError:
            if not (path / STATS_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
