"""Turn canonical rows into training tensors: template, loss masks, truncation, packing, statistics, cache.

`prepare(recipe, tokenizer)` is what the sft and pt stages call. Rows are tokenized as plain Python lists with
batched calls of the Rust tokenizer (1,000 rows a call, offsets included), then made into a Dataset once: 1.2-1.5x
faster than the same function under `Dataset.map(batched=True)` on 50k conversations, which converts every batch
to and from Arrow.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.data.cache import cache_key, load_cached, save_cached
from llmtune.data.formats import CHAT, IGNORE, PREFERENCE, TEXT, Row
from llmtune.data.load import read_splits, stage_kind
from llmtune.data.stats import summarize
from llmtune.data.templates import (
    ChatRenderer,
    Span,
    check_eos,
    generation_eos_ids,
    mark_trained,
    resolve_chat_template,
    template_name,
)
from llmtune.errors import UserError
from llmtune.schema import Recipe

if TYPE_CHECKING:
    import datasets

BATCH = 1000


@dataclass
class Prepared:
    """Tokenized data for the trainer: columns input_ids and labels (-100 = not trained), plus seq_lengths if packed."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    stats: dict[str, Any]
    cache_dir: Path


@dataclass
class Encoded:
    """Tokenized examples of one split, with what truncation did to them."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    full_lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    per_source: dict[str, list[int]] = field(default_factory=dict)
    """File label -> [examples, tokens] as trained (after the sampling weights, truncation and drops)."""


def _backend(tokenizer: Any) -> Any:
    """The Rust tokenizer, called directly: `tokenizer(texts)` gives the same ids but converts every encoding in
    Python, which took half the tokenizing time. None for slow tokenizers and split_special_tokens ones."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "split_special_tokens", False) or backend.encode_special_tokens:
        return None
    return backend


def _span_labels(enc: Any, spans: list[Span]) -> list[int]:
    """Labels: the ids of tokens overlapping a trained character span, IGNORE elsewhere."""
    ids, labels = enc.ids, [IGNORE] * len(enc.ids)
    for start, end in spans:
        first, last = enc.char_to_token(start), enc.char_to_token(end - 1) if end > start else None
        if first is None or last is None:
            return [tok if keep else IGNORE for tok, keep in zip(ids, mark_trained(enc.offsets, spans), strict=True)]
        labels[first : last + 1] = ids[first : last + 1]
    return labels


def _chat_batch(rows: list[Row], tokenizer: Any, renderer: ChatRenderer, loss_on: str) -> Iterator[tuple]:
    backend = _backend(tokenizer)
    if backend is None:
        raise UserError(f"chat loss masks need a fast tokenizer (a tokenizer.json); {tokenizer.name_or_path} has none")
    texts, spans = renderer.spans([row["messages"] for row in rows], loss_on, [row["origin"] for row in rows])
    for enc, row_spans in zip(backend.encode_batch(texts, add_special_tokens=False), spans, strict=True):
        yield enc.ids, _span_labels(enc, row_spans)


def _text_batch(rows: list[Row], tokenizer: Any) -> Iterator[tuple]:
    """Plain text is trained on every token, with the eos token appended so documents end."""
    texts, backend, eos = [row["text"] for row in rows], _backend(tokenizer), tokenizer.eos_token_id
    encoded = [e.ids for e in backend.encode_batch(texts)] if backend else tokenizer(texts)["input_ids"]
    for ids in encoded:
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        yield ids, list(ids)


def _fit(out: Encoded, row: Row, ids: list[int], labels: list[int], max_length: int | None, bad_rows: str) -> None:
    kept_ids, kept_labels = ids, labels
    if max_length is not None and len(ids) > max_length:
        kept_ids, kept_labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in kept_labels):
        first = next((i for i, label in enumerate(labels) if label != IGNORE), None)
        reason = "it has no trained token" if first is None else f"its first trained token is number {first + 1}"
        if bad_rows == "error":
            raise UserError(
                f"{row['origin']}: nothing left to train on after truncation to data.max_length={max_length} "
                f"({len(ids)} tokens; {reason}); raise data.max_length or set data.bad_rows: skip"
            )
        out.dropped += 1
        return
    out.truncated += len(kept_ids) < len(ids)
    out.full_lengths.append(len(ids))
    out.input_ids.append(kept_ids)
    out.labels.append(kept_labels)


def source_label(origin: str) -> str:
    """The file part of an origin ("data/a.jsonl:17" or "data/a.parquet: row 3" -> the path)."""
    return re.sub(r"(:\d+|: row \d+)$", "", origin)


def encode(
    rows: list[Row],
    tokenizer: Any,
    renderer: ChatRenderer | None,
    *,
    loss_on: str,
    max_length: int | None,
    bad_rows: str,
    split: str = "train",
) -> Encoded:
    """Tokenize canonical chat/text rows; `max_length` None keeps long examples whole (pt packing splits them)."""
    out = Encoded()
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        chat = [row for row in batch if row.get("messages")]
        text = [row for row in batch if not row.get("messages")]
        if chat and renderer is None:
            resolve_chat_template(tokenizer, None, required=True)
        pieces = dict(zip(map(id, chat), _chat_batch(chat, tokenizer, renderer, loss_on), strict=True)) if chat else {}
        pieces.update(zip(map(id, text), _text_batch(text, tokenizer), strict=True))
        for row in batch:
            ids, labels = pieces[id(row)]
            before = len(out.input_ids)
            _fit(out, row, ids, labels, max_length, bad_rows)
            if len(out.input_ids) > before:
                counts = out.per_source.setdefault(source_label(row.get("origin", "")), [0, 0])
                counts[0] += 1
                counts[1] += len(out.input_ids[-1])
    if out.truncated:
        console.info(f"{split}: truncated {out.truncated} of {len(rows)} examples to data.max_length={max_length}")
    if out.dropped:
        console.warn(
            f"{split}: skipped {out.dropped} examples with nothing to train on within data.max_length={max_length} "
            "(data.bad_rows: skip)"
        )
    return out


def to_dataset(encoded: Encoded, *, pack: str | None, max_length: int) -> datasets.Dataset:
    """The tokenized examples as a Dataset, packed best-fit-decreasing (TRL's pack_dataset) when `pack` names how."""
    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": encoded.input_ids, "labels": encoded.labels})
    if pack is None or len(ds) == 0:
        return ds
    from trl.data_utils import pack_dataset

    return pack_dataset(ds, max_length, strategy=pack, map_kwargs={"batch_size": None})


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _template(recipe: Recipe, tokenizer: Any, model_dir: Path | None) -> str | None:
    """The chat template (sft only), set on the tokenizer so the trained model is saved with it; checks its eos."""
    if stage_kind(recipe.stage) != CHAT:
        return None
    template = resolve_chat_template(tokenizer, recipe.model.chat_template)
    if template is not None:
        tokenizer.chat_template = template
        check_eos(tokenizer, generation_eos_ids(model_dir, tokenizer), template)
    return template


def prepare(recipe: Recipe, tokenizer: Any, *, model_dir: Path | None = None) -> Prepared:
    """Tokenized train/eval data for the sft and pt stages, from the cache when the same inputs were seen before."""
    kind = stage_kind(recipe.stage)
    if kind == PREFERENCE:
        raise ValueError(f"prepare() builds sft/pt data; stage {recipe.stage} reads llmtune.data.load.load_splits()")
    if model_dir is None and Path(recipe.model.name_or_path).is_dir():
        model_dir = Path(recipe.model.name_or_path)
    template = _template(recipe, tokenizer, model_dir)
    path = Path(recipe.data.cache_dir) / cache_key(recipe, tokenizer, template)
    with _quiet_datasets():
        cached = load_cached(path)
        if cached is not None:
            train, evals, stats = cached
            console.info(f"tokenized data from the cache: {path}", markup=False)
            return Prepared(train, evals, {**stats, "cached": True}, path)
        splits = read_splits(recipe)
        renderer = ChatRenderer(template, tokenizer, template_name(recipe.model.chat_template)) if template else None
        pack = ("bfd_split" if kind == TEXT else "bfd") if recipe.packing else None
        options = {
            "loss_on": recipe.data.loss_on,
            "max_length": None if pack == "bfd_split" else recipe.data.max_length,
            "bad_rows": recipe.data.bad_rows,
        }
        encoded = encode(splits.train, tokenizer, renderer, **options)
        if not encoded.input_ids:
            raise UserError("no training example is left after truncation; raise data.max_length")
        train = to_dataset(encoded, pack=pack, max_length=recipe.data.max_length)
        evals = None
        if splits.eval:
            encoded_eval = encode(splits.eval, tokenizer, renderer, split="eval", **options)
            evals = (
                to_dataset(encoded_eval, pack=pack, max_length=recipe.data.max_length)
                if encoded_eval.input_ids
                else None
            )
        stats = summarize(encoded, train, recipe, splits, evals)
        save_cached(path, train, evals, stats)
    return Prepared(train, evals, {**stats, "cached": False}, path)
