"""`llmtune tokenizer train` and `llmtune tokenizer extend` (a sub-app, registered in llmtune.cli.app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Train a tokenizer, or extend one with a new language or domain.", no_args_is_help=True)

CorpusOpt = Annotated[
    list[Path],
    typer.Option("--corpus", metavar="FILE", help="Data file in any row format, or .txt (repeatable).",
                 show_default=False),
]  # fmt: skip
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")]


@app.command("train")
def train(
    corpus: CorpusOpt,
    out: Annotated[Path, typer.Option("--out", help="Directory to write the tokenizer into.", show_default=False)],
    vocab_size: Annotated[int, typer.Option("--vocab-size", metavar="N", help="Vocabulary size.")] = 8192,
    kind: Annotated[
        str, typer.Option("--kind", metavar="bpe|sentencepiece", help="Byte-level BPE, or SentencePiece-style BPE.")
    ] = "bpe",
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a tokenizer with ChatML special tokens and chat template on the texts of any row format."""
    from llmtune.errors import UserError
    from llmtune.jobs.tokenizer import train as run

    if kind not in ("bpe", "sentencepiece"):
        raise UserError(f"--kind {kind!r}: choose bpe or sentencepiece")
    run(corpus, out, vocab_size=vocab_size, kind=kind, overwrite=overwrite)


@app.command("extend")
def extend(
    base: Annotated[str, typer.Argument(metavar="BASE", help="Model directory (or Hub id) to extend.")],
    corpus: CorpusOpt,
    add: Annotated[int, typer.Option("--add", metavar="N", help="New tokens to learn and add.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for the extended model.", show_default=False)],
    overwrite: OverwriteOpt = False,
) -> None:
    """Add N tokens learned from a corpus to a byte-level BPE tokenizer; resize and initialise the model's rows."""
    from llmtune.jobs.tokenizer import extend as run

    run(base, corpus, add, out, overwrite=overwrite)
