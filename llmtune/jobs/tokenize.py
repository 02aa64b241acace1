"""`llmtune tokenize`: tokenize and cache a recipe's data, print its statistics (llmtune.data.stats) and a few
examples with the trained tokens marked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune.data.formats import IGNORE
from llmtune.schema import Recipe

if TYPE_CHECKING:
    import datasets


def print_stats(stats: dict[str, Any]) -> None:
    """The statistics as a table on stdout."""
    from rich.table import Table

    from llmtune.console import stdout

    table = Table(title="tokenized training data" + (" (from the cache)" if stats.get("cached") else ""))
    table.add_column("statistic")
    table.add_column("value", justify="right")
    rows = [
        ("examples", f"{stats['examples']:,}"),
        ("rows" + (" (packed)" if stats["packed"] else ""), f"{stats['rows']:,}"),
        ("tokens", f"{stats['tokens']:,}"),
        ("trained tokens", f"{stats['trained_tokens']:,} ({stats['trained_fraction']:.1%})"),
        ("length p50 / p90 / p99 / max", f"{stats['length_p50']} / {stats['length_p90']} / "
                                         f"{stats['length_p99']} / {stats['length_max']}"),
        (f"truncated to {stats['max_length']}", f"{stats['truncated']:,}"),
        ("dropped (nothing to train)", f"{stats['dropped']:,}"),
        ("bad rows skipped", f"{stats['skipped_rows']:,}"),
        ("padding efficiency", f"{stats['padding_efficiency']:.1%}"),
        ("packing efficiency", f"{stats['packing_efficiency']:.1%}"),
        ("eval rows", f"{stats['eval_rows']:,}"),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    stdout().print(table)
    sources = Table(title="training tokens per source (after the sampling weights)")
    for column in ("source", "format", "rows read", "skipped", "weight", "examples", "tokens", "share"):
        sources.add_column(column, justify="left" if column in ("source", "format") else "right")
    for src in stats["sources"]:
        sources.add_row(src["path"], src["format"], f"{src['rows']:,}", f"{src['skipped']:,}",
                        f"{src.get('weight', 1.0):g}", f"{src.get('examples', 0):,}", f"{src.get('tokens', 0):,}",
                        f"{src.get('token_share', 0.0):.1%}")  # fmt: skip
    stdout().print(sources)


def examples(dataset: datasets.Dataset, n: int) -> list[tuple[list[int], list[int]]]:
    """The first `n` examples (input_ids, labels), packed rows split back into their examples."""
    out: list[tuple[list[int], list[int]]] = []
    for row in dataset:
        parts = row.get("seq_lengths") or [len(row["input_ids"])]
        start = 0
        for length in parts:
            out.append((row["input_ids"][start : start + length], row["labels"][start : start + length]))
            start += length
            if len(out) >= n:
                return out
    return out


def segments(ids: list[int], labels: list[int]) -> list[tuple[list[int], bool]]:
    """Runs of tokens that are (True) or are not trained; the first token never is, as nothing predicts it."""
    runs: list[tuple[list[int], bool]] = []
    for i, (tok, label) in enumerate(zip(ids, labels, strict=True)):
        trained = i > 0 and label != IGNORE
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(tok)
        else:
            runs.append(([tok], trained))
    return runs


def print_examples(dataset: datasets.Dataset, tokenizer: Any, n: int) -> None:
    """Decoded examples, trained text green and the rest dim on a terminal; [[trained]] markers otherwise."""
    from rich.text import Text

    from llmtune.console import stdout

    out = stdout()
    for number, (ids, labels) in enumerate(examples(dataset, n), start=1):
        runs = segments(ids, labels)
        trained = sum(len(run) for run, keep in runs if keep)
        out.print(Text(f"--- example {number}: {len(ids)} tokens, {trained} trained ---", style="bold"))
        text = Text()
        for run, keep in runs:
            piece = tokenizer.decode(run)
            if out.is_terminal:
                text.append(piece, style="green" if keep else "dim")
            else:
                text.append(f"[[{piece}]]" if keep else piece)
        out.print(text)


def tokenize_and_report(recipe: Recipe, show: int = 0) -> dict[str, Any]:
    """`llmtune tokenize`: prepare (or reuse) the cached data, print its statistics and `show` examples."""
    from llmtune import console, modeling
    from llmtune.data.readers import resolve_path
    from llmtune.data.tokenize import prepare
    from llmtune.errors import UserError

    if recipe.stage not in ("sft", "pt"):
        raise UserError(f"llmtune tokenize prepares sft and pt data; stage {recipe.stage} tokenizes pairs in training")
    for src in [*recipe.data.train, *recipe.data.eval]:
        resolve_path(src.path, src.revision, recipe.hub.endpoint)
    tokenizer = modeling.load_tokenizer(recipe)
    prepared = prepare(recipe, tokenizer, model_dir=modeling.model_dir(recipe))
    print_stats(prepared.stats)
    console.info(f"cache: {prepared.cache_dir}", markup=False)
    if show:
        print_examples(prepared.train, tokenizer, show)
    return prepared.stats
