"""API keys for automation scripts (admin): created with a role, shown once, stored hashed, revocable."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.deps import ConnectionDep, SmallId
from app.api.routes.users import Reason, refusals_on_fields
from app.api.security import CurrentPrincipal, client_address
from app.auth import apikeys, users
from app.auth.principal import Role

router = APIRouter(prefix="/apikeys", tags=["api keys"])


# The roles a key may have, stated in the schema: administration is personal (apikeys.KEY_ROLES).
KeyRole = Literal["automation", "operator", "supervisor", "qa"]
assert set(get_args(KeyRole)) == {r.value for r in apikeys.KEY_ROLES}


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=2, max_length=63, description=users.NAME_RULE)
    role: KeyRole = Field(default="automation", description="the key acts with this role (never admin)")

    @field_validator("role", mode="before")
    @classmethod
    def _not_admin(cls, value: object) -> object:
        if value == Role.ADMIN.value:
            raise ValueError(f"an API key cannot have the admin role (administration is personal); allowed: "
                             f"{', '.join(sorted(get_args(KeyRole)))}")
        return value
    reason: str | None = Field(default=None, max_length=2000)


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    role: str
    prefix: str = Field(description="the public part of the key: ck_<prefix>_...")
    created_by: int | None = Field(description="user id of the admin; null when made on the command line")
    created_at: datetime
    last_used_at: datetime | None = Field(description="updated at most once a minute")
    revoked_at: datetime | None
    revoked: bool


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the key itself, shown this once: only its SHA-256 is stored")


@router.get("", response_model=list[ApiKeyPublic], summary="Every API key, without secrets (admin)")
async def list_keys(principal: CurrentPrincipal, conn: ConnectionDep) -> list[ApiKeyPublic]:
    return [ApiKeyPublic(**apikeys.key_public(r)) for r in await apikeys.list_api_keys(conn)]


@router.post("", response_model=ApiKeyCreated, status_code=201,
             summary="Create an API key (admin); the response holds the key, shown once")
async def create_key(body: ApiKeyCreate, principal: CurrentPrincipal, request: Request,
                     conn: ConnectionDep) -> ApiKeyCreated:
    with refusals_on_fields():
        row, key = await apikeys.create_api_key(conn, name=body.name, role=Role(body.role), actor=principal,
                                                 client=client_address(request), reason=body.reason)
    return ApiKeyCreated(**apikeys.key_public(row), key=key)


@router.post("/{key_id}/revoke", response_model=ApiKeyPublic, summary="Revoke an API key (admin), at once")
async def revoke_key(key_id: SmallId, body: Reason, principal: CurrentPrincipal, request: Request,
                     conn: ConnectionDep) -> ApiKeyPublic:
    row = await apikeys.revoke_api_key(conn, key_id, actor=principal, reason=body.reason,
                                        client=client_address(request))
    return ApiKeyPublic(**apikeys.key_public(row))
