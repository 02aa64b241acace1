"""The `llmtune` app: global flags, the error boundary, and the command table assembled from one module per
command family (llmtune.cli.recipes, data, train, infer, models).

Heavy libraries (torch, transformers, trl, datasets, peft) are imported inside the command that needs them,
so `llmtune --help` starts instantly. A test keeps it that way.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmtune import __version__
from llmtune.cli import data, infer, models, recipes, tokenizer, train
from llmtune.errors import EXIT_USER_ERROR, UserError

app = typer.Typer(
    name="llmtune",
    help="Fine-tune language models: pretrain, SFT, reward models and DPO, from YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(recipes.app, name="recipe")
app.add_typer(tokenizer.app, name="tokenizer")
for _family in (data, train, infer, models):
    for _name, _command in _family.COMMANDS.items():
        app.command(_name)(_command)


def _version(value: bool) -> None:
    if value:
        print(f"llmtune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print debug output and library logs.")] = False,
) -> None:
    from llmtune import console

    console.set_verbosity(console.QUIET if quiet else console.VERBOSE if verbose else console.NORMAL)


def main() -> None:
    """Entry point: user errors become one message and exit code 2; bugs keep their traceback."""
    try:
        app()
    except UserError as exc:
        from llmtune import console

        console.error(str(exc))
        sys.exit(EXIT_USER_ERROR)
