"""`culturectl recipe`: check protocol recipe files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

recipe_app = typer.Typer(help="Protocol recipes: validate a recipe file, release one (QA, signed).",
                         no_args_is_help=True)


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


@recipe_app.command("release")
def release(
    file: Annotated[Path, typer.Argument(help="recipe YAML file", dir_okay=False)],
    user: Annotated[str, typer.Option("--user", help="the QA (or admin) user who signs the release")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="read the password from the first line of stdin")] = False,
    comment: Annotated[str | None, typer.Option("--comment", help="kept with the signature")] = None,
) -> None:
    """Release a recipe into the database, signed 'approved' by a QA user (password prompted)."""
    from app.auth import users
    from app.auth.principal import Principal, Role
    from app.cli.common import read_password, run_on_database
    from app.core.problems import Problem
    from app.protocol import recipes
    from app.protocol.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(file)
    except RecipeError as exc:
        typer.echo(f"{file}: invalid recipe", err=True)
        for e in exc.errors:
            typer.echo(f"  {e}", err=True)
        raise typer.Exit(1) from None
    password = read_password(password_stdin, confirm=False)

    async def action(conn: Any) -> tuple[dict[str, Any], bool]:
        row = await users.get_user_by_name(conn, user)
        if row is None:
            raise Problem(404, "user-not-found", "No such user", f"there is no user {user!r}")
        principal = Principal(kind="user", id=int(row["id"]), name=row["username"], role=Role(row["role"]))
        return await recipes.release_recipe_as(conn, recipe, principal, password, comment=comment, client="cli")

    view, created = run_on_database(action)
    verb = "released" if created else "already released (same content)"
    typer.echo(f"{verb}: {view['key']} v{view['version']} (id {view['id']}), content hash {view['content_hash']}")
