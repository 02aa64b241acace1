"""Statistics of tokenized data (what `llmtune tokenize` prints, also stored beside the cache).

Efficiencies, both "real tokens / token slots":
  padding efficiency  with batches of train.batch_size rows in stored order, each padded to its longest row (what
                      the padding collator computes); 1.0 when packed, as packed batches are padding-free.
  packing efficiency  real tokens / (rows x data.max_length): how full fixed-length rows would be; packing raises it.
Length percentiles are of the examples before truncation, to help choose data.max_length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune.data.formats import IGNORE
from llmtune.schema import Recipe

if TYPE_CHECKING:
    import datasets

    from llmtune.data.load import Splits
    from llmtune.data.tokenize import Encoded


def row_lengths(dataset: datasets.Dataset) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.data.column("input_ids")).to_pylist()


def padding_efficiency(lengths: list[int], batch_size: int) -> float:
    slots = sum(
        len(lengths[i : i + batch_size]) * max(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size)
    )
    return sum(lengths) / slots if slots else 1.0


def summarize(
    encoded: Encoded, train: datasets.Dataset, recipe: Recipe, splits: Splits, evals: datasets.Dataset | None
) -> dict[str, Any]:
    """The numbers `llmtune tokenize` prints, also stored beside the cache."""
    import numpy as np

    lengths = row_lengths(train)
    tokens = sum(lengths)
    trained = sum(sum(1 for label in labels if label != IGNORE) for labels in encoded.labels)
    full = np.asarray(encoded.full_lengths)
    p50, p90, p99 = (int(v) for v in np.percentile(full, [50, 90, 99]))
    packed = "seq_lengths" in train.column_names
    max_length = recipe.data.max_length
    return {
        "examples": len(encoded.input_ids),
        "rows": len(lengths),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_fraction": trained / tokens if tokens else 0.0,
        "length_p50": p50,
        "length_p90": p90,
        "length_p99": p99,
        "length_max": int(full.max()),
        "truncated": encoded.truncated,
        "dropped": encoded.dropped,
        "skipped_rows": splits.skipped,
        "packed": packed,
        "max_length": max_length,
        "padding_efficiency": 1.0 if packed else padding_efficiency(lengths, recipe.train.batch_size),
        "packing_efficiency": tokens / (len(lengths) * max_length) if lengths else 0.0,
        "eval_rows": len(evals) if evals is not None else 0,
        "sources": [{**_source(r, encoded.per_source, tokens), "weight": w} for r, w in zip(splits.reports,
                     [s.weight for s in recipe.data.train] + [1.0] * len(splits.reports), strict=False)],
    }  # fmt: skip


def _source(report: Any, per_source: dict[str, list[int]], total: int) -> dict[str, Any]:
    """One source's rows read and, after its sampling weight, the examples and tokens it puts in training."""
    mine = [c for label, c in per_source.items() if label == report.label or label.startswith(report.label + "/")]
    examples, tokens = sum(c[0] for c in mine), sum(c[1] for c in mine)
    return {"path": report.label, "format": report.format, "rows": report.rows, "skipped": report.skipped,
            "examples": examples, "tokens": tokens, "token_share": tokens / total if total else 0.0}  # fmt: skip
