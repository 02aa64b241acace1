"""`llmtune recipe validate | show | list`."""

from __future__ import annotations

from pathlib import Path

import typer

from llmtune.cli.options import RecipeArg, SetOpt

app = typer.Typer(help="Validate, show and list recipes.", no_args_is_help=True)


def _recipes_root() -> Path:
    """Shipped recipes: ./recipes when run from a checkout, else the one beside the installed package."""
    local = Path("recipes")
    return local if local.is_dir() else Path(__file__).resolve().parent.parent / "recipes"


@app.command("validate")
def recipe_validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe against the schema; exit 2 with the problem if it is invalid."""
    from llmtune.recipe import load_recipe
    from llmtune.training.accelerate import check_launch

    resolved = load_recipe(recipe, set_)
    check_launch(resolved, hardware=False)
    print(f"{recipe}: ok ({resolved.stage}, {resolved.method.kind}, model {resolved.model.name_or_path})")


@app.command("show")
def recipe_show(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Print the fully resolved recipe (extends merged, overrides applied, defaults filled)."""
    from llmtune.recipe import dump_recipe, load_recipe

    print(dump_recipe(load_recipe(recipe, set_)), end="")


@app.command("list")
def recipe_list() -> None:
    """List the shipped recipes with their one-line descriptions."""
    from llmtune.recipe import describe_line

    root = _recipes_root()
    for path in sorted(root.rglob("*.yaml")):
        if "accelerate" in path.parts:
            continue
        print(f"{path.relative_to(root.parent)}  {describe_line(path)}")
