"""Contact points: how a user is reached by notifications (email, SMS, voice, webhook), and the test send.

A user manages their own contact points, an admin anyone's (API keys: none). A contact point is never deleted:
PATCH it `enabled: false`. The test send goes out at once through the channel and is recorded on the contact point
and in the audit trail (contact_point.test), whether it worked or not.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ConnectionDep, RecordId, RuntimeDep
from app.api.schemas import problem_responses
from app.api.security import CurrentPrincipal, client_address, route_template
from app.auth import users
from app.auth.principal import Principal, Role
from app.core.problems import Problem
from app.notify import channels, contacts

router = APIRouter(tags=["contact points"])

Kind = Literal["email", "sms", "voice", "webhook"]
Format = Literal["generic", "slack", "teams", "pagerduty"]
assert get_args(Kind) == channels.KINDS and get_args(Format) == channels.WEBHOOK_FORMATS

Username = Annotated[str, Path(max_length=63, description="the user's username")]
ADDRESS_DOC = (f"email: {contacts.EMAIL_RULE}; sms and voice: {contacts.PHONE_RULE}; webhook: "
               f"{contacts.WEBHOOK_RULE}")


class ContactPointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    address: str = Field(min_length=1, max_length=contacts.URL_MAX, description=ADDRESS_DOC)
    format: Format = Field(default="generic", description="the body a webhook receives; other kinds: generic")
    label: str = Field(default="", max_length=contacts.LABEL_MAX, description="e.g. 'work phone'")
    enabled: bool = True
    reason: str | None = Field(default=None, max_length=2000)


class ContactPointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, max_length=contacts.LABEL_MAX)
    enabled: bool | None = Field(default=None, description="false: no more notices here (it is never deleted)")
    format: Format | None = None
    address: str | None = Field(default=None, min_length=1, max_length=contacts.URL_MAX, description=ADDRESS_DOC)
    reason: str | None = Field(default=None, max_length=2000,
                               description="why (audited); required when it is not one's own contact point")


class ContactPointPublic(BaseModel):
    id: int
    username: str
    kind: str
    address: str
    format: str
    label: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_test_at: datetime | None = Field(description="when the last test notification was sent")
    last_test_result: str | None = Field(description="'ok: <detail>' or 'failed: <error>'")


class ContactTestResult(BaseModel):
    ok: bool
    detail: str = Field(description="what the channel answered, e.g. '250 2.0.0 OK' or 'HTTP 200'")
    contact_point: ContactPointPublic


def _public(cp: contacts.ContactPoint) -> ContactPointPublic:
    return ContactPointPublic(**cp.as_dict())


def _may_manage(principal: Principal, username: str, request: Request) -> None:
    """One's own contact points, or an admin: else 403."""
    if principal.kind == "user" and (principal.role is Role.ADMIN or principal.name == username):
        return
    raise Problem(403, "forbidden-owner", "Forbidden",
                  f"role {principal.role.value} may not call {request.method} {route_template(request)} for "
                  f"another user's contact points (a user manages their own, an admin anyone's)",
                  role=principal.role.value, rule="own-contact-points")


@router.get("/users/{username}/contact-points", response_model=list[ContactPointPublic],
            summary="A user's contact points, enabled or not (the user, admin)")
async def list_contact_points(username: Username, principal: CurrentPrincipal, request: Request,
                              conn: ConnectionDep) -> list[ContactPointPublic]:
    _may_manage(principal, username, request)
    if principal.name != username and await users.get_user_by_name(conn, username) is None:
        raise Problem(404, "user-not-found", "No such user", f"there is no user named {username!r}")
    return [_public(cp) for cp in await contacts.list_for_user(conn, username)]


@router.post("/users/{username}/contact-points", response_model=ContactPointPublic, status_code=201,
             summary="Add a contact point to a user (the user, admin)")
async def create_contact_point(username: Username, body: ContactPointCreate, principal: CurrentPrincipal,
                               request: Request, conn: ConnectionDep, runtime: RuntimeDep) -> ContactPointPublic:
    _may_manage(principal, username, request)
    cp = await contacts.create(conn, username=username, kind=body.kind, address=body.address, format=body.format,
                               label=body.label, enabled=body.enabled, actor=principal,
                               client=client_address(request), reason=body.reason, at=runtime.clock.now())
    return _public(cp)


@router.patch("/contact-points/{contact_id}", response_model=ContactPointPublic,
              summary="Change a contact point's label, address, format or enabled flag (its owner, admin)")
async def update_contact_point(contact_id: RecordId, body: ContactPointUpdate, principal: CurrentPrincipal,
                               request: Request, conn: ConnectionDep, runtime: RuntimeDep) -> ContactPointPublic:
    current = await contacts.require(conn, contact_id)
    _may_manage(principal, current.username, request)
    cp = await contacts.update(conn, contact_id, actor=principal, label=body.label, enabled=body.enabled,
                               format=body.format, address=body.address, reason=body.reason,
                               client=client_address(request), at=runtime.clock.now())
    return _public(cp)


def test_notice(cp: contacts.ContactPoint, principal: Principal, at: datetime, public_url: str) -> channels.Message:
    """The test notice: marked high priority, so it takes the path a high-priority alarm takes."""
    where = f" ({public_url})" if public_url else ""
    text = (f"This is a test notification from culturectl{where}, sent at {at.isoformat(timespec='seconds')} "
            f"at the request of {principal.name} to the {cp.kind} contact point {cp.label or cp.address}.\n"
            "Alarms for you when on call reach you here. Nothing to do.")
    return channels.Message(id=f"test-{cp.id}-{uuid.uuid4().hex[:12]}", kind="test",
                            subject="culturectl: test notification", text=text, priority="high",
                            facts={"contact_point": cp.id, "kind": cp.kind, "requested_by": principal.name})


@router.post("/contact-points/{contact_id}/test", response_model=ContactTestResult,
             responses=problem_responses(502),
             summary="Send a test notification to a contact point now (its owner, admin); the result is recorded")
async def test_contact_point(contact_id: RecordId, principal: CurrentPrincipal, request: Request,
                             conn: ConnectionDep, runtime: RuntimeDep) -> ContactTestResult:
    cp = await contacts.require(conn, contact_id)
    _may_manage(principal, cp.username, request)
    chans = runtime.channels
    if chans is None:
        raise Problem(503, "service-starting", "Service starting", "the notification channels are not up yet")
    reason = chans.not_configured(cp.kind)
    if reason is not None:
        raise Problem(503, "channel-not-configured", "Channel not configured",
                      f"{cp.kind} notifications are not configured on this service: {reason}",
                      rule="channel-configured", channel=cp.kind)
    at = runtime.clock.now()
    try:
        detail = await chans.send(cp.target(), test_notice(cp, principal, at, runtime.settings.public_url))
    except channels.DeliveryError as exc:
        await contacts.record_test(conn, cp.id, at, f"failed: {exc}", ok=False, actor=principal,
                                   client=client_address(request))
        raise Problem(502, "delivery-failed", "Test notification failed",
                      f"the {cp.kind} channel could not deliver the test notification: {exc}",
                      rule="test-send", permanent=exc.permanent, contact_point_id=cp.id) from None
    cp = await contacts.record_test(conn, cp.id, at, f"ok: {detail}", ok=True, actor=principal,
                                    client=client_address(request))
    return ContactTestResult(ok=True, detail=detail, contact_point=_public(cp))
