"""Notifications: the policy (rules and on-call rotas, versioned), on-call overrides, who is on call, and what was
sent: episodes, notices, deliveries and their attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from app.api.deps import ConnectionDep, RecordId, RuntimeDep
from app.api.routes import contacts as contacts_api
from app.api.schemas import problem_responses
from app.api.security import CurrentPrincipal, client_address
from app.core.problems import Problem
from app.notify import contacts, outbox, rules, store

router = APIRouter(prefix="/notifications", tags=["notifications"])

Reason = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S", description="why (audited)")]
Username = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,62}$")]


class PolicyIn(BaseModel):
    """A new version of the notification policy and why it changes."""

    model_config = ConfigDict(extra="forbid")
    policy: rules.Policy
    reason: Reason


class OverrideIn(BaseModel):
    """Who is on call for a rota between two instants (a holiday, a swap), instead of its shifts."""

    model_config = ConfigDict(extra="forbid")
    rota: Annotated[str, Field(min_length=1, max_length=63)]
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    users: Annotated[list[Username], Field(min_length=1, max_length=20)]
    reason: Reason


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


@router.get("/policy", summary="The notification policy in force (rules, rotas) and its version")
async def get_policy(principal: CurrentPrincipal, conn: ConnectionDep) -> dict[str, Any]:
    versions = await store.versions(conn, limit=1)
    if not versions:
        raise Problem(404, "no-notification-policy", "No notification policy",
                      "no notification policy was saved: no alarm notifies anyone", rule="no_policy")
    return versions[0]


@router.get("/policy/versions", summary="Every version of the notification policy, newest first")
async def policy_versions(principal: CurrentPrincipal, conn: ConnectionDep,
                          limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
    return await store.versions(conn, limit=limit)


@router.put("/policy", status_code=201, summary="Save a new version of the notification policy (audited)")
async def put_policy(body: PolicyIn, principal: CurrentPrincipal, request: Request, conn: ConnectionDep,
                     runtime: RuntimeDep) -> dict[str, Any]:
    version = await store.save(conn, body.policy, principal=principal, reason=body.reason, at=runtime.clock.now(),
                               client=client_address(request))
    if runtime.alarms is not None:
        runtime.alarms.policy = (version, body.policy)  # in force at once on this replica; the others at refresh
    return (await store.versions(conn, limit=1))[0]


@router.get("/oncall", summary="Who is on call in each rota at an instant (default: now)")
async def oncall(principal: CurrentPrincipal, conn: ConnectionDep, runtime: RuntimeDep,
                 at: Annotated[AwareDatetime | None, Query(description="an instant with its UTC offset")] = None,
                 ) -> list[dict[str, Any]]:
    when: datetime = at or runtime.clock.now()
    current = await store.current(conn)
    if current is None:
        return []
    rows = await store.overrides(conn, covering=when)
    overrides = store.as_overrides(rows)
    zone = runtime.settings.zone()
    out = []
    for rota in current[1].rotas:
        covering = [r for r in rows if r["rota"] == rota.name]
        out.append({"rota": rota.name, "at": when, "users": list(rules.on_call(rota, overrides, when, zone)),
                    "override_id": covering[-1]["id"] if covering else None,
                    "time_zone": runtime.settings.site_timezone})
    return out


@router.get("/overrides", summary="On-call overrides ending after an instant (default: all), oldest first")
async def list_overrides(principal: CurrentPrincipal, conn: ConnectionDep,
                         since: Annotated[AwareDatetime | None, Query()] = None,
                         include_revoked: bool = False) -> list[dict[str, Any]]:
    return await store.overrides(conn, since=since, include_revoked=include_revoked)


@router.post("/overrides", status_code=201, summary="Put users on call for a rota between two instants (audited)")
async def create_override(body: OverrideIn, principal: CurrentPrincipal, request: Request, conn: ConnectionDep,
                          runtime: RuntimeDep) -> dict[str, Any]:
    return await store.create_override(conn, rota=body.rota, starts_at=body.starts_at, ends_at=body.ends_at,
                                       users=body.users, reason=body.reason, principal=principal,
                                       at=runtime.clock.now(), client=client_address(request))


@router.post("/overrides/{override_id}/revoke", summary="Revoke an on-call override (audited)")
async def revoke_override(override_id: RecordId, body: RevokeIn, principal: CurrentPrincipal, request: Request,
                          conn: ConnectionDep, runtime: RuntimeDep) -> dict[str, Any]:
    return await store.revoke_override(conn, override_id, reason=body.reason, principal=principal,
                                       at=runtime.clock.now(), client=client_address(request))


@router.get("/episodes", summary="Notification episodes, newest first, with their notices and deliveries")
async def episodes(principal: CurrentPrincipal, conn: ConnectionDep,
                   alarm_id: Annotated[str | None, Query(max_length=300)] = None,
                   open_only: Annotated[bool, Query(alias="open")] = False,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
    return await outbox.episodes(conn, alarm_id=alarm_id, open_only=open_only, limit=limit)


@router.get("/deliveries/{delivery_id}", summary="One delivery with every attempt and its result")
async def delivery(delivery_id: RecordId, principal: CurrentPrincipal, conn: ConnectionDep) -> dict[str, Any]:
    found = await outbox.delivery(conn, delivery_id)
    if found is None:
        raise Problem(404, "delivery-not-found", "Not found", f"there is no notification delivery {delivery_id}",
                      rule="unknown_delivery")
    return found


class NotificationTestIn(BaseModel):
    """What to test: a rota (its on-call people now) or a rule (its first tier now); exactly one."""

    model_config = ConfigDict(extra="forbid")
    rota: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    rule: Annotated[str, Field(min_length=1, max_length=63)] | None = None

    @model_validator(mode="after")
    def _one(self) -> NotificationTestIn:
        if (self.rota is None) == (self.rule is None):
            raise ValueError("give either rota or rule (the test reaches whoever it would notify now)")
        return self


class NotificationTestSend(BaseModel):
    username: str
    contact_point_id: int | None = Field(description="null: the user has no enabled contact point of those kinds")
    kind: str | None
    label: str | None = Field(description="the contact point's label, else its address")
    ok: bool
    detail: str = Field(description="what the channel answered, or why nothing was sent")


class NotificationTestResult(BaseModel):
    rota: str | None
    rule: str | None
    at: datetime = Field(description="the instant whose on-call people were taken")
    recipients: list[str] = Field(description="the users reached, in the order the rota or tier names them")
    sends: list[NotificationTestSend] = Field(description="one per contact point tried (and per user without one)")


@router.post("/test", response_model=NotificationTestResult, responses=problem_responses(404, 409),
             summary="Send a test notification, through the real channels, to whoever a rota or a rule's first "
                     "tier would notify now (admin; each send audited as contact_point.test)")
async def send_test(body: NotificationTestIn, principal: CurrentPrincipal, request: Request, conn: ConnectionDep,
                    runtime: RuntimeDep) -> NotificationTestResult:
    current = await store.current(conn)
    if current is None:
        raise Problem(404, "no-notification-policy", "No notification policy",
                      "no notification policy was saved: there is nothing to test", rule="no_policy")
    at = runtime.clock.now()
    overrides = store.as_overrides(await store.overrides(conn, covering=at))
    audience = rules.audience_now(current[1], rule=body.rule, rota=body.rota, overrides=overrides, at=at,
                                  zone=runtime.settings.zone(), role_users=await store.role_users(conn))
    what, name = ("rota", body.rota) if body.rota is not None else ("rule", body.rule)
    if audience is None:
        raise Problem(404, f"unknown-{what}", f"Unknown {what}", f"the notification policy has no {what} {name!r}",
                      rule=f"unknown_{what}", field=what, errors=[{"field": what, "detail": f"no {what} {name!r}"}])
    if not audience.users:
        raise Problem(409, "nobody-to-notify", "Nobody to notify",
                      f"the {what} {name!r} notifies nobody now (nobody on call): no test was sent",
                      rule="nobody_on_call")
    points = await contacts.for_users(conn, audience.users, audience.channels or None)
    sends: list[NotificationTestSend] = []
    for user in audience.users:
        mine = [cp for cp in points if cp.username == user]
        if not mine:
            kinds = f" of kind {', '.join(audience.channels)}" if audience.channels else ""
            sends.append(NotificationTestSend(username=user, contact_point_id=None, kind=None, label=None,
                                              ok=False, detail=f"no enabled contact point{kinds}: nothing sent"))
        for cp in mine:  # the contact point's own test send: recorded on it and audited (contact_point.test)
            ok, detail = True, ""
            try:
                detail = (await contacts_api.test_contact_point(cp.id, principal, request, conn, runtime)).detail
            except Problem as exc:
                ok, detail = False, exc.detail
            sends.append(NotificationTestSend(username=user, contact_point_id=cp.id, kind=cp.kind,
                                              label=cp.label or cp.address, ok=ok, detail=detail))
    return NotificationTestResult(rota=body.rota, rule=body.rule, at=at, recipients=list(audience.users),
                                  sends=sends)
