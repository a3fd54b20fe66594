"""Electronic signatures through the API: password re-entry, meaning, manifestation, binding to the record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import pytest

from app import db
from app.auth import users
from app.auth.principal import Role
from app.core.problems import Problem
from app.records import audit, signatures
from tests.api.conftest import Service, lockout_threshold

SIG = "/api/v1/signatures"


async def _owner(service: Service) -> asyncpg.Connection:
    return await db.connect(service.dsn)


async def _new_run(service: Service, code: str) -> int:
    conn = await _owner(service)
    try:
        return int(await conn.fetchval("INSERT INTO culture_run (code) VALUES ($1) RETURNING id", code))
    finally:
        await conn.close()


async def _audit_after(service: Service, seq: int) -> list[asyncpg.Record]:
    conn = await _owner(service)
    try:
        return list(await conn.fetch(f"SELECT {audit.AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq", seq))
    finally:
        await conn.close()


async def _last_seq(service: Service) -> int:
    conn = await _owner(service)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log"))
    finally:
        await conn.close()


def _body(run_id: int, password: str, meaning: str = "approved", **extra: Any) -> dict[str, Any]:
    return {"entity_type": "culture_run", "entity_id": str(run_id), "meaning": meaning, "password": password,
            **extra}


async def test_sign_shows_the_manifestation_and_binds_the_record(service: Service) -> None:
    run = await _new_run(service, "SIG-1")
    user_id, username, password, headers = await service.user(Role.SUPERVISOR)
    before = await _last_seq(service)

    r = await service.client.post(SIG, json=_body(run, password, comment="batch record reviewed"), headers=headers)
    assert r.status_code == 201, r.text
    sig = r.json()
    assert sig["printed_name"] == "Supervisor Tester" and sig["signer_name"] == username
    assert sig["signer_user_id"] == user_id and sig["signer_role"] == "supervisor"
    assert sig["meaning"] == "approved" and sig["valid"] is True and sig["status"] == "valid"
    assert sig["signed_at"].endswith("Z") or sig["signed_at"].endswith("+00:00")
    assert sig["manifestation"].startswith("Supervisor Tester (supervisor), approved, 20")
    conn = await _owner(service)
    try:
        assert sig["record_hash"] == await signatures.record_hash(conn, "culture_run", str(run))
    finally:
        await conn.close()

    # exactly one audit record, by the signer
    rows = await _audit_after(service, before)
    assert [(x["action"], x["actor_kind"], x["actor_id"], x["entity_type"], x["entity_id"]) for x in rows] == \
        [("signature.create", "user", user_id, "culture_run", str(run))]

    listed = await service.client.get(SIG, params={"entity_type": "culture_run", "entity_id": run},
                                      headers=await service.login(Role.OPERATOR))
    assert listed.status_code == 200
    assert [(s["id"], s["valid"], s["manifestation"]) for s in listed.json()] == \
        [(sig["id"], True, sig["manifestation"])]


async def test_changing_the_signed_record_breaks_the_signature(service: Service) -> None:
    run = await _new_run(service, "SIG-2")
    *_, password, headers = await service.user(Role.QA)
    r = await service.client.post(SIG, json=_body(run, password, "reviewed"), headers=headers)
    assert r.status_code == 201, r.text

    conn = await _owner(service)
    try:
        await conn.execute("UPDATE culture_run SET status = 'running' WHERE id = $1", run)
    finally:
        await conn.close()
    listed = (await service.client.get(SIG, params={"entity_type": "culture_run", "entity_id": run},
                                       headers=headers)).json()
    assert [(s["valid"], s["status"]) for s in listed] == [(False, "record changed after signing")]

    # signed again on the new version: that one is valid, the old one stays broken
    r = await service.client.post(SIG, json=_body(run, password, "reviewed"), headers=headers)
    assert r.status_code == 201
    listed = (await service.client.get(SIG, params={"entity_type": "culture_run", "entity_id": run},
                                       headers=headers)).json()
    assert [s["valid"] for s in listed] == [False, True]


async def test_wrong_password_fails_is_audited_and_counts_toward_lockout(service: Service) -> None:
    run = await _new_run(service, "SIG-3")
    user_id, _, password, headers = await service.user(Role.OPERATOR)
    before = await _last_seq(service)

    r = await service.client.post(SIG, json=_body(run, "not-my-password", "performed"), headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "password is wrong" in r.json()["detail"]
    rows = await _audit_after(service, before)
    assert [(x["action"], x["actor_id"], x["entity_id"]) for x in rows] == [("signature.failed", user_id, str(run))]
    assert "not-my-password" not in str([dict(x) for x in rows])
    conn = await _owner(service)
    try:
        assert await conn.fetchval("SELECT count(*) FROM signature WHERE entity_id = $1", str(run)) == 0
        assert await conn.fetchval("SELECT failed_logins FROM users WHERE id = $1", user_id) == 1
    finally:
        await conn.close()

    # four more: the account locks (audited), and then even the right password signs nothing
    with lockout_threshold(service, 5):  # the default is 20
        for _ in range(4):
            r = await service.client.post(SIG, json=_body(run, "still-wrong", "performed"), headers=headers)
            assert r.status_code == 401
    assert "unlocks by itself at" in r.json()["detail"]
    rows = await _audit_after(service, before)
    assert [x["action"] for x in rows].count("user.lock") == 1
    r = await service.client.post(SIG, json=_body(run, password, "performed"), headers=headers)
    assert r.status_code == 401
    r = await service.login_as(*(await _username_and(service, user_id, password)))
    assert r.status_code in (401, 403)


async def _username_and(service: Service, user_id: int, password: str) -> tuple[str, str]:
    conn = await _owner(service)
    try:
        return str(await conn.fetchval("SELECT username FROM users WHERE id = $1", user_id)), password
    finally:
        await conn.close()


async def test_automation_never_signs(service: Service) -> None:
    run = await _new_run(service, "SIG-4")
    before = await _last_seq(service)
    # an automation user (the policy has no place for it)...
    *_, password, headers = await service.user(Role.AUTOMATION)
    r = await service.client.post(SIG, json=_body(run, password), headers=headers)
    assert r.status_code == 403
    # ...an automation key, and even a key with a signing role: keys are not people
    for role in (Role.AUTOMATION, Role.OPERATOR, Role.QA):
        _, _, key_headers = await service.api_key(role)
        r = await service.client.post(SIG, json=_body(run, "whatever"), headers=key_headers)
        assert r.status_code == 403, (role, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        if role is not Role.AUTOMATION:  # refused as a key (by the policy or the signature rule), not by role
            assert "cannot sign" in r.json()["detail"] or "API keys" in r.json()["detail"], r.text
    conn = await _owner(service)
    try:
        assert await conn.fetchval("SELECT count(*) FROM signature WHERE entity_id = $1", str(run)) == 0
    finally:
        await conn.close()
    assert [x["action"] for x in await _audit_after(service, before) if x["action"].startswith("signature.")] == []


async def test_bad_requests_are_named(service: Service) -> None:
    run = await _new_run(service, "SIG-5")
    user_id, _, password, headers = await service.user(Role.OPERATOR)
    cases = [
        (_body(run, password, "authored"), 422, "meaning"),
        (_body(run, password, signed_at="2020-01-01T00:00:00Z"), 422, "signed_at"),
        (_body(run, password, signer_user_id=1), 422, "signer_user_id"),
        (_body(run, password, printed_name="Somebody Else"), 422, "printed_name"),
        # the schema names the signable types
        ({**_body(run, password), "entity_type": "device"}, 422,
         "'culture_run', 'deviation', 'dose_decision', 'recipe', 'record_review', 'step_correction' or 'step_record'"),
        (_body(999999, password), 404, "no culture_run with id '999999'"),
    ]
    for body, status, words in cases:
        r = await service.client.post(SIG, json=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert words in r.text, r.text
    conn = await _owner(service)
    try:  # none of these asked for the password, so none counted toward the lockout
        assert await conn.fetchval("SELECT failed_logins FROM users WHERE id = $1", user_id) == 0
    finally:
        await conn.close()
    r = await service.client.post(SIG, json=_body(run, password))
    assert r.status_code == 401


async def test_required_signatures_by_configuration_and_signing_inside_a_change(service: Service) -> None:
    """A later feature registers its record type and gates, then signs within its own transaction."""

    @signatures.register_signable("test_step", requires={"complete": ("performed", "verified")})
    async def _load(conn: db.DBConnection, entity_id: str) -> Mapping[str, Any] | None:
        row = await conn.fetchrow("SELECT id, code, status FROM culture_run WHERE id = $1", int(entity_id))
        return dict(row) if row else None

    try:
        run = await _new_run(service, "SIG-6")
        op_id, _, op_password, _ = await service.user(Role.OPERATOR)
        sup_id, _, sup_password, _ = await service.user(Role.SUPERVISOR)
        conn = await _owner(service)
        try:
            operator = users.user_principal(await users.require_user(conn, op_id))
            supervisor = users.user_principal(await users.require_user(conn, sup_id))
            with pytest.raises(Problem) as missing:
                await signatures.require_signatures_for(conn, "test_step", run, "complete")
            assert missing.value.status == 409 and missing.value.extra["missing"] == ["performed", "verified"]

            # the operator changes the record and signs it as performed, in one transaction
            performed = signatures.SignatureInput(meaning="performed", password=op_password)
            signer = await signatures.authenticate_signer(conn, operator, performed, entity_type="test_step",
                                                          entity_id=str(run), client="10.0.0.9")
            async with conn.transaction():
                await conn.execute("UPDATE culture_run SET status = 'running' WHERE id = $1", run)
                out = await signatures.sign_within(conn, signer, performed, entity_type="test_step",
                                                   entity_id=str(run), client="10.0.0.9")
                with pytest.raises(RuntimeError, match="before the transaction"):
                    await signatures.authenticate_signer(conn, operator, performed, entity_type="test_step",
                                                         entity_id=str(run), client=None)
            assert out.valid
            with pytest.raises(Problem) as missing:
                await signatures.require_signatures_for(conn, "test_step", run, "complete")
            assert "verified" in missing.value.detail and missing.value.extra["missing"] == ["verified"]

            verified = signatures.SignatureInput(meaning="verified", password=sup_password)
            signer = await signatures.authenticate_signer(conn, supervisor, verified, entity_type="test_step",
                                                          entity_id=str(run), client=None)
            async with conn.transaction():
                await signatures.sign_within(conn, signer, verified, entity_type="test_step", entity_id=str(run),
                                             client=None)
            await signatures.require_signatures_for(conn, "test_step", run, "complete")  # satisfied

            # a change after signing: both signatures stop counting
            await conn.execute("UPDATE culture_run SET status = 'held' WHERE id = $1", run)
            with pytest.raises(Problem) as missing:
                await signatures.require_signatures(conn, "test_step", run, ["performed", "verified"])
            assert missing.value.extra["missing"] == ["performed", "verified"]
        finally:
            await conn.close()
    finally:
        signatures.SIGNABLE.pop("test_step", None)
