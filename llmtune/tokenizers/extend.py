"""Extend a byte-level BPE tokenizer with merges learned on a new corpus, as real vocabulary.

A BPE is trained on the corpus with the base's own normaliser and pre-tokenizer; its merges whose result the
base lacks are appended, in the order learned, after the base's merges, each with its resulting token as a new id
after the highest existing one. BPE applies the lowest-ranked merge first and no base merge involves a new token,
so a new merge only fires once no base merge can: the extended segmentation is the base one followed by new
merges, and text in which no new merge applies encodes exactly as before (checked by `check_extension`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llmtune.errors import UserError

GROWTH = 2  # the trainer's vocabulary is grown by this factor until it yields enough new merges


@dataclass
class Extension:
    """The extended backend as JSON, the new tokens in id order, and the merge each came from."""

    tokenizer_json: str
    new_tokens: list[str]
    new_ids: list[int]
    requested: int


def _pair(merge: Any) -> tuple[str, str]:
    if isinstance(merge, str):
        left, right = merge.split(" ", 1)
        return left, right
    return merge[0], merge[1]


def _check_byte_level(spec: dict[str, Any], where: str) -> None:
    model = spec.get("model") or {}
    pre = json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or '"ByteLevel"' not in pre:
        raise UserError(f"{where}: only byte-level BPE tokenizers (GPT-2, LLaMA 3, Qwen, ours) can be extended; "
                        f"this one is {model.get('type', 'unknown')} with pre-tokenizer {pre[:80]}")  # fmt: skip


def learn_merges(base_json: str, texts: Sequence[str], vocab_size: int) -> list[tuple[str, str]]:
    """Merges of a BPE of `vocab_size` trained on `texts` with the base's normaliser and pre-tokenizer."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    learner = Tokenizer.from_str(base_json)
    learner.model = BPE()
    trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    learner.train_from_iterator(texts, trainer)
    return [_pair(m) for m in json.loads(learner.to_str())["model"]["merges"]]


def extend_tokenizer(base_json: str, texts: Iterable[str], add: int, where: str = "BASE") -> Extension:
    """The base backend (tokenizer.json text) with up to `add` new tokens learned from `texts`."""
    if add < 1:
        raise UserError(f"--add {add}: add at least one token")
    spec = json.loads(base_json)
    _check_byte_level(spec, where)
    vocab: dict[str, int] = spec["model"]["vocab"]
    taken = set(vocab) | {t["content"] for t in spec.get("added_tokens", [])}
    corpus = [t for t in texts if t.strip()]
    if not corpus:
        raise UserError("--corpus: no text in the corpus files")
    size, new = 256 + GROWTH * add, []
    while True:
        merges = learn_merges(base_json, corpus, size)
        new = [(a, b) for a, b in merges if a + b not in taken]
        new = list(dict.fromkeys(new))  # a token learned twice is added once
        if len(new) >= add or 256 + len(merges) < size:  # enough, or the corpus gives no more merges
            break
        size *= GROWTH
    chosen, tokens = [], []
    for a, b in new:
        if a + b not in tokens:
            chosen.append([a, b])
            tokens.append(a + b)
        if len(tokens) == add:
            break
    next_id = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    ids = list(range(next_id, next_id + len(tokens)))
    vocab.update(zip(tokens, ids, strict=True))
    spec["model"]["merges"] = [list(_pair(m)) for m in spec["model"]["merges"]] + chosen
    return Extension(json.dumps(spec, ensure_ascii=False), tokens, ids, add)


def check_extension(base: Any, extended: Any, texts: Sequence[str], new_ids: Sequence[int]) -> int:
    """Every text round-trips, and each text whose extended encoding uses no new id encodes as the base did.

    Returns how many texts use a new token. Raises AssertionError on a broken extension (a bug, not a user error).
    """
    fresh, used = set(new_ids), 0
    for text in texts:
        old = base.encode(text, add_special_tokens=False)
        ids = extended.encode(text, add_special_tokens=False)
        if extended.decode(ids) != base.decode(old):
            raise AssertionError(f"extended tokenizer does not round-trip {text[:60]!r}")
        if fresh.intersection(ids):
            used += 1
        elif ids != old:
            raise AssertionError(f"extended tokenizer encodes {text[:60]!r} differently without new tokens")
    return used
