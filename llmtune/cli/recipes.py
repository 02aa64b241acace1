"""`llmtune recipe validate | show | list`."""

from __future__ import annotations

import typer

from llmtune.cli.options import RecipeArg, SetOpt

app = typer.Typer(help="Validate, show and list recipes.", no_args_is_help=True)


@app.command("validate")
def recipe_validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe against the schema and every local path it names; exit 2 with the problem if it is invalid."""
    from llmtune.hub.recipe_paths import check_recipe_paths
    from llmtune.recipe import load_recipe
    from llmtune.training.accelerate import check_launch

    resolved = load_recipe(recipe, set_)
    check_launch(resolved, hardware=False)
    hub_ids = check_recipe_paths(resolved, str(recipe))
    print(f"{recipe}: ok ({resolved.stage}, {resolved.method.kind}, model {resolved.model.name_or_path})")
    for key, name in hub_ids:
        print(f"  {key}: {name} is a Hub id, not fetched by validate (`llmtune download {name}` fetches it)")


@app.command("show")
def recipe_show(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Print the fully resolved recipe (extends merged, overrides applied, defaults filled)."""
    from llmtune.recipe import dump_recipe, load_recipe

    print(dump_recipe(load_recipe(recipe, set_)), end="")


@app.command("list")
def recipe_list() -> None:
    """List the shipped recipes by the name `--recipe` and `extends:` accept, each with its one-line description."""
    from llmtune.recipe import SHIPPED_DIR, describe_line

    paths = sorted(p for p in SHIPPED_DIR.rglob("*.yaml") if p.parent.name != "accelerate")
    names = [p.relative_to(SHIPPED_DIR).with_suffix("").as_posix() for p in paths]
    width = max(map(len, names), default=0)
    for name, path in zip(names, paths, strict=True):
        print(f"{name:<{width}}  {describe_line(path)}")
