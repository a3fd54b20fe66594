"""Protocol recipes: release one (QA, signed), list them, read one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ConnectionDep, RuntimeDep, SmallId
from app.api.schemas import RecipePublic, RecipeSummary
from app.api.security import CurrentPrincipal, client_address
from app.core.problems import Problem
from app.protocol import recipes
from app.protocol.recipe import RecipeError, parse_recipe
from app.records import signatures

router = APIRouter(prefix="/recipes", tags=["recipes"])


class RecipeRelease(BaseModel):
    """A recipe to release: its YAML text and QA's signature (meaning 'approved')."""

    model_config = ConfigDict(extra="forbid")

    yaml: str = Field(min_length=1, max_length=1_000_000, description="the recipe file's text")
    signature: signatures.SignatureInput


@router.post("", response_model=RecipePublic, status_code=201,
             summary="Release a recipe (QA, admin): YAML text + signature 'approved'; 200 if already released as is")
async def release_recipe(body: RecipeRelease, principal: CurrentPrincipal, request: Request, conn: ConnectionDep,
                         runtime: RuntimeDep) -> Any:
    try:
        recipe = parse_recipe(body.yaml, "yaml")
    except RecipeError as exc:
        raise Problem(422, "recipe-invalid", "Recipe is not valid", "; ".join(exc.errors), rule="recipe_invalid",
                      errors=exc.errors) from None
    client = client_address(request)
    signer = await signatures.authenticate_signer(conn, principal, body.signature, entity_type="recipe",
                                                  entity_id=f"{recipe.key}/{recipe.version}", client=client,
                                                  threshold=runtime.settings.lockout_threshold)
    view, created = await recipes.release_recipe(conn, recipe, principal=principal, signer=signer,
                                               signature=body.signature, client=client)
    # already released as is: the same body, 200 instead of 201
    return view if created else JSONResponse(RecipePublic.model_validate(view).model_dump(mode="json"), status_code=200)


@router.get("", response_model=list[RecipeSummary], summary="Released recipes (key, version, content hash, steps)")
async def list_recipes(principal: CurrentPrincipal, conn: ConnectionDep) -> list[dict[str, Any]]:
    return await recipes.list_recipes(conn)


@router.get("/{key}/{version}", response_model=RecipePublic, summary="One released recipe with its content")
async def get_recipe(key: str, version: SmallId, principal: CurrentPrincipal, conn: ConnectionDep) -> dict[str, Any]:
    return recipes.recipe_view(await recipes.find_recipe(conn, key, version), with_content=True)
