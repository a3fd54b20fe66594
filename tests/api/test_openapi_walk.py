"""Walk the OpenAPI description: every mutating operation needs credentials (401), refuses the roles the policy
does not allow (403), and, for an allowed principal with a valid body, writes exactly one audit record whose actor
is that principal.

Each operation needs an entry in BODIES (how to make a valid request for it): a new endpoint without one fails
the walk, so nothing that changes state can dodge it.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app import db
from app.alarms import evaluate, initial_state, out_of_service, shelve
from app.auth.policy import access_for
from app.auth.principal import Principal, Role, cli_principal
from app.notify import contacts
from app.notify.channels import Channels, Message, Target
from app.protocol.recipe import DEFAULT_RECIPE
from drivers.base import Quality
from tests.api.conftest import Service, new_password
from tests.api.protocol_support import INPUTS, LOTS, ensure_recipe, make_run, open_deviation, run_body
from tests.api.setpoint_support import attach_device

MUTATING = {"post", "put", "patch", "delete"}
RECIPE_YAML = (Path(__file__).resolve().parents[2] / "app" / "protocol" / "recipes" / DEFAULT_RECIPE).read_text()
_versions = itertools.count(1000)
PUBLIC_OPERATIONS = {("POST", "/api/v1/auth/login")}  # creates a session; audited, tested in test_auth.py
# Renews the caller's own session token: it changes no record, so it writes no audit row (tested in test_auth.py).
SESSION_OPERATIONS = {("POST", "/api/v1/auth/refresh")}
# The dashboard's activity heartbeat (the inactivity lock) records the session's last action, no audit row
# (tested in test_inactivity.py).
SESSION_OPERATIONS |= {("POST", "/api/v1/auth/activity")}


@dataclass
class Actor:
    principal: Principal
    password: str | None
    headers: dict[str, str]


Request = tuple[str, dict[str, Any] | None]  # concrete path, JSON body
Builder = Callable[[Service, Actor], Awaitable[Request]]


async def _run(service: Service) -> int:
    conn = await db.connect(service.dsn)
    try:
        return int(await conn.fetchval("INSERT INTO culture_run (code) VALUES ($1) RETURNING id",
                                       f"WALK-{uuid.uuid4().hex[:8]}"))
    finally:
        await conn.close()


async def _target_user(service: Service) -> int:
    return (await service.create_user(Role.OPERATOR))[0]


async def _target_key(service: Service) -> int:
    return (await service.api_key(Role.AUTOMATION))[0]


def _fixed(path: str, body: dict[str, Any] | None) -> Builder:
    async def build(service: Service, actor: Actor) -> Request:
        return path, body
    return build


async def _new_user(service: Service, actor: Actor) -> Request:
    return "/api/v1/users", {"username": f"walk-{uuid.uuid4().hex[:8]}", "display_name": "Walk Tester",
                             "role": "operator", "password": new_password()}


async def _password(service: Service, actor: Actor) -> Request:
    return "/api/v1/users/me/password", {"current_password": actor.password or "x", "new_password": new_password()}


async def _update_user(service: Service, actor: Actor) -> Request:
    return f"/api/v1/users/{await _target_user(service)}", {"role": "supervisor", "display_name": "Walk Renamed",
                                                             "reason": "walk: update"}


async def _unlock(service: Service, actor: Actor) -> Request:
    return "/api/v1/auth/unlock", {"password": actor.password or "x"}


def _user_action(verb: str) -> Builder:
    async def build(service: Service, actor: Actor) -> Request:
        return f"/api/v1/users/{await _target_user(service)}/{verb}", {"reason": f"walk: {verb}"}
    return build


async def _new_key(service: Service, actor: Actor) -> Request:
    return "/api/v1/apikeys", {"name": f"walk-{uuid.uuid4().hex[:8]}", "role": "automation"}


async def _revoke(service: Service, actor: Actor) -> Request:
    return f"/api/v1/apikeys/{await _target_key(service)}/revoke", {"reason": "walk: revoke"}


async def _new_contact_point(service: Service, actor: Actor) -> Request:
    return f"/api/v1/users/{actor.principal.name}/contact-points", {
        "kind": "email", "address": f"walk-{uuid.uuid4().hex[:8]}@site.example"}


async def _contact_point(service: Service, actor: Actor) -> int:
    """A contact point of the actor (of a fresh user when the actor is an API key or nobody)."""
    owner = actor.principal.name if actor.principal.kind == "user" and actor.principal.id is not None else \
        (await service.create_user(Role.OPERATOR))[1]
    conn = await db.connect(service.dsn)
    try:
        cp = await contacts.create(conn, username=owner, kind="email", actor=cli_principal(),
                                   address=f"walk-{uuid.uuid4().hex[:8]}@site.example")
    finally:
        await conn.close()
    return cp.id


async def _update_contact_point(service: Service, actor: Actor) -> Request:
    return f"/api/v1/contact-points/{await _contact_point(service, actor)}", {"label": "walk: pager",
                                                                               "reason": "walk: update"}


class _Delivered(Channels):
    """Channels that deliver without a network (the channels themselves are tested in tests/notify)."""

    async def send(self, target: Target, message: Message) -> str:
        return "250 walk: delivered"


async def _test_contact_point(service: Service, actor: Actor) -> Request:
    runtime = service.app.state.runtime
    runtime.channels = _Delivered(service.settings.model_copy(update={"smtp_host": "mail.site.example"}))
    return f"/api/v1/contact-points/{await _contact_point(service, actor)}/test", None


async def _sign(service: Service, actor: Actor) -> Request:
    return "/api/v1/signatures", {"entity_type": "culture_run", "entity_id": str(await _run(service)),
                                  "meaning": "reviewed", "password": actor.password or "x"}


def _now(service: Service) -> datetime:
    now: datetime = service.app.state.runtime.clock.now()
    return now


async def _release(service: Service, actor: Actor) -> Request:
    text = re.sub(r"\nversion: \d+\n", f"\nversion: {next(_versions)}\n", RECIPE_YAML, count=1)
    return "/api/v1/recipes", {"yaml": text, "signature": {"meaning": "approved", "password": actor.password or "x"}}


async def _new_run(service: Service, actor: Actor) -> Request:
    await ensure_recipe(service)
    return "/api/v1/runs", run_body(_now(service) + timedelta(days=2))


async def _step(service: Service, actor: Actor) -> Request:
    run_id = await make_run(service, _now(service))  # planned T0 in 10 h: coating is open now
    return f"/api/v1/runs/{run_id}/steps/coat_vessels", {"inputs": INPUTS["coat_vessels"],
                                                         "lots": LOTS["coat_vessels"]}


async def _recorded(service: Service, step_key: str, facts: dict[str, Any] | None = None) -> int:
    """A run (planned, T0 in 10 h) with `step_key` recorded as posted (with its derived `facts`), written straight
    to the table."""
    run_id = await make_run(service, _now(service))
    conn = await db.connect(service.dsn)
    try:
        await conn.execute("INSERT INTO step_record (run_id, step_key, posted_at, inputs, actor_kind, actor_name, "
                           "actor_role, dose) VALUES ($1, $2, $3, $4::jsonb, 'user', 'walk', 'operator', $5::jsonb)",
                           run_id, step_key, _now(service), json.dumps(INPUTS[step_key]),
                           None if facts is None else json.dumps(facts))
    finally:
        await conn.close()
    return run_id


async def _correct(service: Service, actor: Actor) -> Request:
    run_id = await _recorded(service, "coat_vessels")
    return f"/api/v1/runs/{run_id}/steps/coat_vessels/corrections", {
        "inputs": {"coat_hours": 19}, "reason": "walk: correction",
        "signature": {"meaning": "approved", "password": actor.password or "x"}}


async def _count_import(service: Service, actor: Actor) -> Request:
    run_id = await make_run(service, _now(service))
    csv = b"Sample,Viable cells/mL,Viability\nD3,500000,91.5%\n"
    return f"/api/v1/runs/{run_id}/count-imports", {"step_key": "feed_day3", "filename": "walk.csv",
                                                    "instrument_id": "WALK-1",
                                                    "content_base64": base64.b64encode(csv).decode()}


async def _dose_decision(service: Service, actor: Actor) -> Request:
    run_id = await _recorded(service, "harvest", {"harvest": {"enough": False, "percent_of_needed": 60.0}})
    return f"/api/v1/runs/{run_id}/dose-decision", {
        "decision": "lower_dose", "dose_per_kg": 1.5e6, "reason": "walk: dose decision",
        "signature": {"meaning": "approved", "password": actor.password or "x"}}


async def _qc_result(service: Service, actor: Actor) -> Request:
    run_id = await make_run(service, _now(service))
    conn = await db.connect(service.dsn)
    try:  # sampled (pending), as the formulation step opens it
        await conn.execute("INSERT INTO qc_result (run_id, test, status, sampled_at, step_key) "
                           "VALUES ($1, 'gram_stain', 'pending', $2, 'formulate')", run_id, _now(service))
    finally:
        await conn.close()
    return f"/api/v1/runs/{run_id}/qc-results/gram_stain", {"result": "negative", "comment": "walk: QC result"}


async def _review(service: Service, actor: Actor) -> Request:
    run_id = await make_run(service, _now(service))
    dev_id = await open_deviation(service, run_id)  # an exception of the run's batch record
    return f"/api/v1/runs/{run_id}/record/exceptions/deviation:{dev_id}/review", {
        "comment": "walk: reviewed", "signature": {"meaning": "reviewed", "password": actor.password or "x"}}


async def _reviews(service: Service, actor: Actor) -> Request:
    run_id = await make_run(service, _now(service))
    dev_id = await open_deviation(service, run_id)
    return f"/api/v1/runs/{run_id}/record/reviews", {
        "keys": [f"deviation:{dev_id}"], "comment": "walk: reviewed",
        "signature": {"meaning": "reviewed", "password": actor.password or "x"}}


def _run_action(verb: str, status: str) -> Builder:
    async def build(service: Service, actor: Actor) -> Request:
        run_id = await make_run(service, _now(service), status=status)
        body: dict[str, Any] = {"reason": f"walk: {verb}"}
        if verb == "resume":
            body["signature"] = {"meaning": "approved", "password": actor.password or "x"}
        return f"/api/v1/runs/{run_id}/{verb}", body
    return build


async def _comment(service: Service, actor: Actor) -> Request:
    dev = await open_deviation(service, await make_run(service, _now(service)))
    return f"/api/v1/deviations/{dev}/comments", {"text": "walk: comment"}


async def _close(service: Service, actor: Actor) -> Request:
    dev = await open_deviation(service, await make_run(service, _now(service)))
    return f"/api/v1/deviations/{dev}/close", {"reason": "walk: close",
                                               "signature": {"meaning": "approved", "password": actor.password or "x"}}


async def _setpoint(service: Service, actor: Actor) -> Request:
    await attach_device(service)  # a scripted incubator at 37.0 C: the walk's one accepted command confirms
    return "/api/v1/devices/incubator-1/setpoints", {"point": "temperature_setpoint", "value": 37.5,
                                                     "reason": "walk: setpoint"}


async def _calibration(service: Service, actor: Actor) -> Request:
    day = _now(service).date() - timedelta(days=1)  # not after today at the site, whatever its zone
    return "/api/v1/devices/incubator-1/points/temperature/calibrations", {
        "calibrated_on": day.isoformat(), "due_on": (day + timedelta(days=365)).isoformat(),
        "certificate": f"WALK-{uuid.uuid4().hex[:8]}", "performed_by": "walk metrology", "reason": "walk: calibration"}


def _alarm_action(verb: str) -> Builder:
    """The device comm-loss alarm of incubator-1, put in a state the action is allowed from."""
    async def build(service: Service, actor: Actor) -> Request:
        svc = service.app.state.runtime.alarms
        alarm = svc.alarms["incubator-1:comm_loss"]
        now = svc.clock.now()
        st = initial_state(alarm.id, now)
        if verb == "acknowledge":
            st, _ = evaluate(alarm.defn, st, None, Quality.BAD, now)
        elif verb == "unshelve":
            st, _ = shelve(st, now, now + timedelta(hours=1), svc.shelve_max)
        elif verb == "return-to-service":
            st, _ = out_of_service(st, now)
        alarm.state = st
        body: dict[str, Any] = {"comment": f"walk: {verb}"}
        if verb == "shelve":
            body["minutes"] = 30
        return f"/api/v1/alarms/{alarm.id}/{verb}", body
    return build


WALK_POLICY = {"rules": [{"name": "walk", "match": {"priorities": ["advisory"], "devices": ["no-such-device"]},
                           "tiers": [{"notify": {"rotas": ["walk"]}}]}],
               "rotas": [{"name": "walk", "shifts": [{"days": ["mon"], "start": "08:00", "end": "18:00",
                                                      "users": ["walker"]}]}]}


async def _walker(service: Service) -> None:
    """The user the walk's policy names (a policy may name only active users)."""
    if "walker" not in service.users:
        await service.create_user(Role.OPERATOR, username="walker")


async def _policy(service: Service, actor: Actor) -> Request:
    await _walker(service)
    return "/api/v1/notifications/policy", {"policy": WALK_POLICY, "reason": "walk: a new version"}


async def _walk_policy(service: Service) -> None:
    """A policy with the rota `walk` (saved on the command line's behalf), unless one is in force."""
    from app.notify import rules, store

    await _walker(service)
    conn = await db.connect(service.dsn)
    try:
        current = await store.current(conn)
        if current is None or current[1].rota("walk") is None:
            await store.save(conn, rules.Policy.model_validate(WALK_POLICY), principal=cli_principal(),
                             reason="walk: the rota overrides name", at=datetime.now().astimezone())
    finally:
        await conn.close()


async def _override(service: Service, actor: Actor) -> Request:
    await _walk_policy(service)
    start = datetime.now().astimezone()
    return "/api/v1/notifications/overrides", {
        "rota": "walk", "starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=8)).isoformat(),
        "users": [actor.principal.name], "reason": "walk: a swap"}


async def _revoke_override(service: Service, actor: Actor) -> Request:
    from app.notify import store

    await _walk_policy(service)
    conn = await db.connect(service.dsn)
    try:
        start = datetime.now().astimezone()
        someone = str(await conn.fetchval("SELECT username FROM users WHERE NOT disabled ORDER BY id LIMIT 1"))
        row = await store.create_override(conn, rota="walk", starts_at=start, ends_at=start + timedelta(hours=1),
                                          users=[someone], reason="walk: to revoke",
                                          principal=cli_principal(), at=start)
    finally:
        await conn.close()
    return f"/api/v1/notifications/overrides/{row['id']}/revoke", {"reason": "walk: swap cancelled"}


async def _revoke_session(service: Service, actor: Actor) -> Request:
    import jwt

    from app.auth.sessions import session_public_id

    _id, username, password = await service.create_user(Role.OPERATOR)
    token = (await service.login_as(username, password)).json()["access_token"]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    return f"/api/v1/sessions/{session_public_id(jti)}/revoke", {"reason": "walk: revoke a session"}


async def _notification_test(service: Service, actor: Actor) -> Request:
    """The rota `walk` with a fresh user on call now (an override) who has one email contact point."""
    from app.notify import store

    await _walk_policy(service)
    runtime = service.app.state.runtime
    runtime.channels = _Delivered(service.settings.model_copy(update={"smtp_host": "mail.site.example"}))
    _id, username, _password = await service.create_user(Role.OPERATOR)
    conn = await db.connect(service.dsn)
    try:
        await contacts.create(conn, username=username, kind="email", actor=cli_principal(),
                              address=f"walk-{uuid.uuid4().hex[:8]}@site.example")
        start = datetime.now().astimezone()
        await store.create_override(conn, rota="walk", starts_at=start - timedelta(minutes=1),
                                    ends_at=start + timedelta(hours=1), users=[username], reason="walk: test",
                                    principal=cli_principal(), at=start)
    finally:
        await conn.close()
    return "/api/v1/notifications/test", {"rota": "walk"}


BODIES: dict[tuple[str, str], Builder] = {
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): _alarm_action("acknowledge"),
    ("POST", "/api/v1/alarms/{alarm_id}/shelve"): _alarm_action("shelve"),
    ("POST", "/api/v1/alarms/{alarm_id}/unshelve"): _alarm_action("unshelve"),
    ("POST", "/api/v1/alarms/{alarm_id}/out-of-service"): _alarm_action("out-of-service"),
    ("POST", "/api/v1/alarms/{alarm_id}/return-to-service"): _alarm_action("return-to-service"),
    ("POST", "/api/v1/devices/{name}/setpoints"): _setpoint,
    ("POST", "/api/v1/devices/{device}/points/{point}/calibrations"): _calibration,
    ("POST", "/api/v1/recipes"): _release,
    ("POST", "/api/v1/runs"): _new_run,
    ("POST", "/api/v1/runs/{run_id}/steps/{step_key}"): _step,
    ("POST", "/api/v1/runs/{run_id}/steps/{step_key}/corrections"): _correct,
    ("POST", "/api/v1/runs/{run_id}/count-imports"): _count_import,
    ("POST", "/api/v1/runs/{run_id}/dose-decision"): _dose_decision,
    ("POST", "/api/v1/runs/{run_id}/qc-results/{test}"): _qc_result,
    ("POST", "/api/v1/runs/{run_id}/record/exceptions/{key}/review"): _review,
    ("POST", "/api/v1/runs/{run_id}/record/reviews"): _reviews,
    ("POST", "/api/v1/runs/{run_id}/hold"): _run_action("hold", "running"),
    ("POST", "/api/v1/runs/{run_id}/resume"): _run_action("resume", "held"),
    ("POST", "/api/v1/runs/{run_id}/abort"): _run_action("abort", "planned"),
    ("POST", "/api/v1/deviations/{deviation_id}/comments"): _comment,
    ("POST", "/api/v1/deviations/{deviation_id}/close"): _close,
    ("POST", "/api/v1/auth/logout"): _fixed("/api/v1/auth/logout", None),
    ("POST", "/api/v1/users"): _new_user,
    ("POST", "/api/v1/users/me/password"): _password,
    ("POST", "/api/v1/users/{user_id}/disable"): _user_action("disable"),
    ("POST", "/api/v1/users/{user_id}/enable"): _user_action("enable"),
    ("POST", "/api/v1/users/{user_id}/unlock"): _user_action("unlock"),
    ("PATCH", "/api/v1/users/{user_id}"): _update_user,
    ("POST", "/api/v1/auth/unlock"): _unlock,
    ("POST", "/api/v1/apikeys"): _new_key,
    ("POST", "/api/v1/apikeys/{key_id}/revoke"): _revoke,
    ("POST", "/api/v1/users/{username}/contact-points"): _new_contact_point,
    ("PATCH", "/api/v1/contact-points/{contact_id}"): _update_contact_point,
    ("POST", "/api/v1/contact-points/{contact_id}/test"): _test_contact_point,
    ("POST", "/api/v1/signatures"): _sign,
    ("PUT", "/api/v1/notifications/policy"): _policy,
    ("POST", "/api/v1/notifications/overrides"): _override,
    ("POST", "/api/v1/notifications/overrides/{override_id}/revoke"): _revoke_override,
    ("POST", "/api/v1/notifications/test"): _notification_test,
    ("POST", "/api/v1/sessions/{session_id}/revoke"): _revoke_session,
}

# Endpoints that sign their own change: the change's record and the signature's own record (signature.create,
# written by app.records.signatures.sign_within in the same transaction), both with the caller as actor.
SIGNED_CHANGE: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/runs/{run_id}/record/exceptions/{key}/review"): "record.review",
    ("POST", "/api/v1/runs/{run_id}/record/reviews"): "record.review",
    ("POST", "/api/v1/recipes"): "recipe.release",
    ("POST", "/api/v1/runs/{run_id}/resume"): "run.resume",
    ("POST", "/api/v1/deviations/{deviation_id}/close"): "deviation.close",
    ("POST", "/api/v1/runs/{run_id}/steps/{step_key}/corrections"): "step.correct",
    ("POST", "/api/v1/runs/{run_id}/dose-decision"): "dose.decision",
}

# Rules beyond the role table: a principal that passes the policy but is still refused with 403.
EXTRA_DENY: dict[tuple[str, str], Callable[[Principal], bool]] = {
    ("POST", "/api/v1/signatures"): lambda p: not p.can_sign,  # API keys never sign
}


async def _operations(service: Service) -> list[tuple[str, str]]:
    spec = (await service.client.get("/openapi.json")).json()
    ops = [(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in MUTATING]
    return sorted(set(ops) - PUBLIC_OPERATIONS - SESSION_OPERATIONS)


async def _user_actor(service: Service, role: Role) -> Actor:
    user_id, username, password, headers = await service.user(role)
    return Actor(Principal(kind="user", id=user_id, name=username, role=role), password, headers)


async def _key_actor(service: Service, role: Role) -> Actor:
    key_id, _, headers = await service.api_key(role)
    conn = await db.connect(service.dsn)
    try:
        name = str(await conn.fetchval("SELECT name FROM api_keys WHERE id = $1", key_id))
    finally:
        await conn.close()
    return Actor(Principal(kind="apikey", id=key_id, name=name, role=role), None, headers)


def _allowed(op: tuple[str, str], p: Principal) -> bool:
    access = access_for(*op)
    assert access is not None, f"{op} has no entry in the role x endpoint table"
    return access.allows(p) and not EXTRA_DENY.get(op, lambda _: False)(p)


async def _seq(service: Service) -> int:
    conn = await db.connect(service.dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log"))
    finally:
        await conn.close()


async def _new_rows(service: Service, after: int) -> list[asyncpg.Record]:
    conn = await db.connect(service.dsn)
    try:
        return list(await conn.fetch("SELECT seq, action, actor_kind, actor_id, actor_name FROM audit_log "
                                     "WHERE seq > $1 ORDER BY seq", after))
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def others(service: Service) -> list[Actor]:
    """One user of every role and one API key of every role a key may have: the candidates to refuse."""
    actors = [await _user_actor(service, role) for role in Role]
    actors += [await _key_actor(service, role) for role in Role if role is not Role.ADMIN]
    return actors


async def test_every_mutating_operation_has_a_body_entry(service: Service) -> None:
    ops = await _operations(service)
    assert ops, "the walk found no mutating operation"
    missing = [op for op in ops if op not in BODIES]
    assert missing == [], f"add these operations to BODIES so the walk covers them: {missing}"
    stale = [op for op in BODIES if op not in ops]
    assert stale == [], f"BODIES names operations the API no longer has: {stale}"


async def test_without_credentials_every_mutating_operation_is_401(service: Service) -> None:
    nobody = Actor(Principal(kind="user", id=None, name="nobody", role=Role.OPERATOR), "x", {})
    for op in await _operations(service):
        path, body = await BODIES[op](service, nobody)
        before = await _seq(service)
        r = await service.client.request(op[0], path, json=body)
        assert r.status_code == 401, (op, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), op
        assert await _new_rows(service, before) == [], f"{op}: a refused request wrote an audit record"


async def test_roles_the_policy_does_not_allow_get_403(service: Service, others: list[Actor]) -> None:
    checked = 0
    for op in await _operations(service):
        for actor in others:
            if _allowed(op, actor.principal):
                continue
            path, body = await BODIES[op](service, actor)
            before = await _seq(service)
            r = await service.client.request(op[0], path, json=body, headers=actor.headers)
            who = f"{actor.principal.kind} {actor.principal.role.value}"
            assert r.status_code == 403, (op, who, r.status_code, r.text)
            assert await _new_rows(service, before) == [], f"{op} by {who}: a refused request wrote an audit record"
            checked += 1
    assert checked > 0


async def test_an_allowed_principal_writes_exactly_one_audit_record_as_itself(service: Service) -> None:
    for op in await _operations(service):
        role = next(r for r in Role if _allowed(op, Principal(kind="user", id=1, name="x", role=r)))
        actor = await _user_actor(service, role)  # fresh: logout and password change end its session
        path, body = await BODIES[op](service, actor)
        before = await _seq(service)
        r = await service.client.request(op[0], path, json=body, headers=actor.headers)
        assert 200 <= r.status_code < 300, (op, role.value, r.status_code, r.text)
        rows = await _new_rows(service, before)
        if op in SIGNED_CHANGE:
            assert [x["action"] for x in rows] == [SIGNED_CHANGE[op], "signature.create"], (op, rows)
        else:
            assert len(rows) == 1, f"{op}: {len(rows)} audit records: {[x['action'] for x in rows]}"
        for row in rows:
            assert (row["actor_kind"], row["actor_id"], row["actor_name"]) == \
                ("user", actor.principal.id, actor.principal.name), (op, dict(row))


async def test_unknown_body_fields_are_rejected_everywhere(service: Service) -> None:
    """Mass assignment: actor, times, status and signatures come from the server, never from a body."""
    for op in await _operations(service):
        role = next(r for r in Role if _allowed(op, Principal(kind="user", id=1, name="x", role=r)))
        actor = await _user_actor(service, role)
        path, body = await BODIES[op](service, actor)
        if body is None:
            continue
        before = await _seq(service)
        r = await service.client.request(op[0], path, json={**body, "actor": "someone-else"}, headers=actor.headers)
        assert r.status_code == 422 and "actor" in r.text, (op, r.status_code, r.text)
        assert await _new_rows(service, before) == [], op
