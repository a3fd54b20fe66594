"""Sessions in use (admin): who is logged in, since when, last active when, until when; revoke one (audited).

A session is named by a digest of its token's id (app.auth.sessions.session_public_id): neither the token nor its
id is ever listed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from app.api.deps import INT32_MAX, ConnectionDep
from app.api.routes.users import Reason
from app.api.security import CurrentPrincipal, client_address
from app.auth import sessions

router = APIRouter(prefix="/sessions", tags=["sessions"])

SessionId = Annotated[str, Path(pattern=rf"^[0-9a-f]{{{sessions.SESSION_ID_LENGTH}}}$",
                                description="the session's id as listed (a digest, not the token)")]


class SessionPublic(BaseModel):
    id: str = Field(description="the session's id: a digest of its token's id, never the token")
    user_id: int
    username: str
    display_name: str
    role: str
    issued_at: datetime = Field(description="the login")
    last_activity_at: datetime = Field(description="the last user action (the inactivity lock counts from it)")
    expires_at: datetime = Field(description="the current token's expiry (renewal moves it)")
    current: bool = Field(description="the caller's own session")


@router.get("", response_model=list[SessionPublic],
            summary="Sessions in use: not revoked, not expired, newest login first (admin)")
async def list_sessions(principal: CurrentPrincipal, conn: ConnectionDep,
                        user_id: Annotated[int | None, Query(ge=1, le=INT32_MAX,
                                                             description="only this user's")] = None,
                        ) -> list[SessionPublic]:
    return [SessionPublic(**s) for s in await sessions.list_active(conn, user_id=user_id,
                                                                   current=principal.token_id)]


@router.post("/{session_id}/revoke", response_model=SessionPublic,
             summary="End a session in use (admin, with a reason; audited session.revoke): its next request is 401")
async def revoke_session(session_id: SessionId, body: Reason, principal: CurrentPrincipal, request: Request,
                         conn: ConnectionDep) -> SessionPublic:
    return SessionPublic(**await sessions.revoke_session(conn, session_id, actor=principal, reason=body.reason,
                                                         client=client_address(request)))
