"""Released protocol recipes: immutable, signed, cached by id once validated (a released recipe never changes)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import asyncpg

from app.auth.principal import Principal, Role
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol.common import json_ready, not_found
from app.protocol.recipe import Recipe
from app.records import audit, signatures
from app.records.signatures import SignatureInput, Signer


@signatures.register_signable("recipe", description="a released protocol recipe: key, version, content hash",
                              requires={"release": ("approved",)})
async def _load_recipe(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow("SELECT id, key, version, title, content_hash, released_at, released_by FROM recipe "
                              "WHERE id = $1", int(entity_id))
    return dict(row) if row is not None else None


RECIPE_COLUMNS = "id, key, version, title, content, content_hash, released_at, released_by"
_RECIPES: dict[tuple[int, str], Recipe] = {}


def recipe_view(row: Mapping[str, Any], *, with_content: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {k: row[k] for k in ("id", "key", "version", "title", "content_hash", "released_at",
                                               "released_by")}
    out["steps"] = [s["key"] for s in json.loads(row["content"])["steps"]]
    if with_content:
        out["content"] = json.loads(row["content"])
    return dict(json_ready(out))


def recipe_of(row: Mapping[str, Any]) -> Recipe:
    """The validated recipe of a recipe row, cached: a released recipe never changes. The key is the row's id and
    its content, not the id alone: one process may read several databases (a restored copy, another site's
    database, each test module's), where the same id is another recipe."""
    key = (int(row["id"]), str(row["content"]))
    if key not in _RECIPES:
        _RECIPES[key] = Recipe.model_validate(json.loads(row["content"]))
    return _RECIPES[key]


async def recipe_row(conn: DBConnection, recipe_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {RECIPE_COLUMNS} FROM recipe WHERE id = $1", recipe_id)
    if row is None:
        raise not_found("recipe", f"there is no recipe with id {recipe_id}")
    return row


async def find_recipe(conn: DBConnection, key: str, version: int | None = None) -> asyncpg.Record:
    """A released recipe by key and version (the newest version when None); 404 names what was asked."""
    if version is None:
        row = await conn.fetchrow(f"SELECT {RECIPE_COLUMNS} FROM recipe WHERE key = $1 ORDER BY version DESC "
                                  "LIMIT 1", key)
    else:
        row = await conn.fetchrow(f"SELECT {RECIPE_COLUMNS} FROM recipe WHERE key = $1 AND version = $2",
                                  key, version)
    if row is None:
        v = "any version" if version is None else f"version {version}"
        raise not_found("recipe", f"recipe {key!r} {v} is not released")
    return row


async def list_recipes(conn: DBConnection) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {RECIPE_COLUMNS} FROM recipe ORDER BY key, version")
    return [recipe_view(r) for r in rows]


async def release_recipe(conn: DBConnection, recipe: Recipe, *, principal: Principal, signer: Signer,
                         signature: SignatureInput, client: str | None) -> tuple[dict[str, Any], bool]:
    """Release `recipe`, signed: (view, True) when released now; (view, False) when this exact content is
    already released; 409 rule recipe_version_conflict when key + version is released with other content."""
    if signature.meaning != "approved":
        raise Problem(422, "signature-meaning", "Wrong signature meaning",
                      f"a recipe release is signed with the meaning 'approved', not {signature.meaning!r}",
                      rule="signature_meaning")
    async with conn.transaction():
        # No row lock (the service role may not UPDATE recipe, and FOR UPDATE needs that): the unique key decides
        # between concurrent releases (ON CONFLICT DO NOTHING), then the existing row is compared.
        row = await conn.fetchrow(
            f"INSERT INTO recipe (key, version, title, content, content_hash, released_by) "
            f"VALUES ($1, $2, $3, $4::jsonb, $5, $6) ON CONFLICT (key, version) DO NOTHING RETURNING {RECIPE_COLUMNS}",
            recipe.key, recipe.version, recipe.title, json.dumps(recipe.model_dump(mode="json")),
            recipe.content_hash, principal.label)
        if row is None:
            existing = await conn.fetchrow(f"SELECT {RECIPE_COLUMNS} FROM recipe WHERE key = $1 AND version = $2",
                                           recipe.key, recipe.version)
            assert existing is not None
            if existing["content_hash"] != recipe.content_hash:
                raise Problem(409, "recipe-version-conflict", "Recipe version already released",
                              f"recipe {recipe.key!r} version {recipe.version} is already released with content "
                              f"hash {existing['content_hash']}, not {recipe.content_hash}: a released version "
                              "never changes; release the change as a new version", rule="recipe_version_conflict",
                              released_hash=existing["content_hash"], posted_hash=recipe.content_hash)
            return recipe_view(existing, with_content=True), False
        assert row is not None
        await audit.record(conn, actor=principal, action="recipe.release", entity_type="recipe", entity_id=row["id"],
                           old=None, new={"key": recipe.key, "version": recipe.version,
                                          "content_hash": recipe.content_hash, "title": recipe.title},
                           reason=signature.comment or "recipe released", client=client)
        await signatures.sign_within(conn, signer, signature, entity_type="recipe", entity_id=str(row["id"]),
                                     client=client)
        return recipe_view(row, with_content=True), True


async def release_recipe_as(conn: DBConnection, recipe: Recipe, principal: Principal, password: str, *,
                            comment: str | None = None, client: str | None = None) -> tuple[dict[str, Any], bool]:
    """Release a recipe signed by a QA (or admin) user with their password: the CLI, the demo and tests."""
    if principal.role not in (Role.QA, Role.ADMIN):
        raise Problem(403, "forbidden", "Forbidden", f"a recipe is released by QA or admin, not {principal.role.value}")
    sig = SignatureInput(meaning="approved", password=password, comment=comment)
    signer = await signatures.authenticate_signer(conn, principal, sig, entity_type="recipe",
                                                  entity_id=f"{recipe.key}/{recipe.version}", client=client)
    return await release_recipe(conn, recipe, principal=principal, signer=signer, signature=sig, client=client)
