"""`culturectl recipe`: check protocol recipe files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

recipe_app = typer.Typer(help="Protocol recipes: validate a recipe file.", no_args_is_help=True)


@recipe_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="recipe YAML file", dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Validate a recipe: print key, version, steps and content hash, or every problem (exit status 1)."""
    from app.protocol.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(file)
    except RecipeError as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, "file": str(file), "errors": exc.errors}))
        else:
            typer.echo(f"{file}: invalid recipe", err=True)
            for e in exc.errors:
                typer.echo(f"  {e}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"ok": True, "file": str(file), "key": recipe.key, "version": recipe.version,
                               "content_hash": recipe.content_hash, "steps": list(recipe.step_keys)}))
    else:
        typer.echo(f"ok {recipe.key} v{recipe.version}: {len(recipe.steps)} steps "
                   f"({', '.join(recipe.step_keys)}); content hash {recipe.content_hash}")
