"""Data commands: `llmtune synth-data`, `llmtune init-model`, `llmtune tokenize`, `llmtune clean`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmtune.cli.options import RecipeOpt, SetOpt


def synth_data(
    out_dir: Annotated[
        Path, typer.Argument(metavar="OUT_DIR", help="Directory to write the data files into.", show_default=False)
    ],
    train: Annotated[int, typer.Option("--train", min=1, help="Training rows per file.")] = 2000,
    eval_rows: Annotated[int, typer.Option("--eval", min=1, help="Held-out rows per eval file.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed writes the same bytes.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty directory.")] = False,
) -> None:
    """Write the built-in synthetic tasks in every supported format (SFT, preference, text), with eval splits."""
    from llmtune import console
    from llmtune.data import synth
    from llmtune.outdir import refuse_nonempty

    refuse_nonempty(
        out_dir,
        overwrite,
        "synth-data OUT_DIR",
        "pass --overwrite (files with the same names are replaced, others are left alone)",
    )
    for path in synth.write_builtin_data(out_dir, n_train=train, n_eval=eval_rows, seed=seed).values():
        console.info(f"wrote {path} ({synth.count_rows(path)} rows)")


def init_model_cmd(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Directory to write the model into.", show_default=False)],
    preset: Annotated[
        str, typer.Option("--preset", metavar="tiny|small", help="Model size preset.", show_default=False)
    ],
    corpus: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--corpus", metavar="FILE", help="Text or .jsonl file for the tokenizer (repeatable; default: built-in)."
        ),
    ] = None,
    vocab_size: Annotated[
        Optional[int], typer.Option("--vocab-size", metavar="N", help="Tokenizer size (default: preset's).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Seed for the built-in corpus and the weights.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")] = False,
) -> None:
    """Train a byte-level BPE tokenizer and write a randomly initialised LLaMA of a preset size, offline."""
    from llmtune.jobs.init_model import init_model as build

    build(out, preset=preset, corpus=corpus, vocab_size=vocab_size, seed=seed, overwrite=overwrite)


def tokenize(
    recipe: RecipeOpt,
    set_: SetOpt = None,
    show: Annotated[
        int, typer.Option("--show", metavar="N", min=0, help="Print N examples with the trained tokens marked.")
    ] = 0,
) -> None:
    """Apply template, loss masks, truncation and packing; cache the result and print its statistics."""
    from llmtune.jobs.tokenize import tokenize_and_report
    from llmtune.recipe import load_recipe

    tokenize_and_report(load_recipe(recipe, set_), show)


def clean(
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE...", help="Data files in any row format.", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory for the cleaned files and the report.")],
    recipe: Annotated[
        Optional[Path], typer.Option("--recipe", help="YAML file with a clean: section (all settings).")
    ] = None,
    set_: SetOpt = None,
    lang: Annotated[
        Optional[str], typer.Option("--lang", metavar="CODES", help="Keep only these languages, e.g. en,zh.")
    ] = None,
    near_threshold: Annotated[
        Optional[float], typer.Option("--near-threshold", metavar="J", help="Near-duplicate Jaccard threshold.")
    ] = None,
    no_rules: Annotated[bool, typer.Option("--no-rules", help="Skip the rule filters.")] = False,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help="Skip exact and near deduplication.")] = False,
    perplexity_model: Annotated[
        Optional[str], typer.Option("--perplexity-model", metavar="MODEL", help="Score rows with this causal LM.")
    ] = None,
    keep_fraction: Annotated[
        Optional[float], typer.Option("--keep-fraction", metavar="F", help="With a model: keep the best fraction.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")] = False,
) -> None:
    """Filter and deduplicate data files (language, rules, exact and near duplicates, perplexity), with a report."""
    from llmtune.data.clean.spec import CleanRecipe
    from llmtune.jobs.clean import clean as run
    from llmtune.recipe import load_validated

    flags = [*(set_ or [])]
    flags += [f"clean.lang.languages=[{lang}]"] if lang else []
    flags += [f"clean.near.threshold={near_threshold}"] if near_threshold is not None else []
    flags += ["clean.rules.enabled=false"] if no_rules else []
    flags += ["clean.exact.enabled=false", "clean.near.enabled=false"] if no_dedup else []
    flags += [f"clean.perplexity.model={perplexity_model}"] if perplexity_model else []
    flags += [f"clean.perplexity.keep_fraction={keep_fraction}"] if keep_fraction is not None else []
    spec = load_validated(recipe, flags, CleanRecipe).clean
    run(files, out, spec, overwrite=overwrite)


COMMANDS = {
    "synth-data": synth_data,
    "init-model": init_model_cmd,
    "tokenize": tokenize,
    "clean": clean,
}
