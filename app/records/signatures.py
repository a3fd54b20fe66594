"""Electronic signatures (21 CFR 11.50, 11.70, 11.100, 11.200): who signed what, when, and what it meant.

A signature needs the signer's password again (11.200(a)) and a meaning: performed, verified, reviewed or
approved. It stores the printed name, the server's UTC time, the meaning and the SHA-256 of the canonical
JSON of the exact record version signed (11.70: the signature is bound to that record). A signature whose
record changed afterwards is shown as broken (`valid` false, "record changed after signing").
Automation accounts and API keys never sign (403): a signature is personal.

Records that can be signed are registered by type with a loader returning the canonical record dict:

    @register_signable("protocol_step", requires={"complete": ("performed", "verified")})
    async def _load_step(conn, entity_id: str) -> Mapping[str, Any] | None: ...

Later features then require signatures by configuration, not new code:
`await require_signatures_for(conn, "protocol_step", step_id, "complete")` (or `require_signatures` with
explicit meanings) raises 409 naming what is missing.
To sign as part of an endpoint's own change, embed `SignatureInput` in its body, call
`authenticate_signer` BEFORE opening the transaction (so a wrong password is recorded and counts toward
the lockout even though the change is refused), then `sign_within` inside it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from app.auth import users
from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection
from app.records import audit

Meaning = Literal["performed", "verified", "reviewed", "approved"]
MEANINGS: tuple[str, ...] = get_args(Meaning)

Loader = Callable[[DBConnection, str], Awaitable[Mapping[str, Any] | None]]

BROKEN = "record changed after signing"
GONE = "record no longer exists"


@dataclass(frozen=True, slots=True)
class Signable:
    """A record type that can be signed: how to load its canonical content, and which signatures it needs."""

    entity_type: str
    loader: Loader
    description: str = ""
    requires: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # gate -> meanings


SIGNABLE: dict[str, Signable] = {}


def register_signable(
    entity_type: str, *, description: str = "", requires: Mapping[str, Sequence[str]] | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator: make `entity_type` signable with this loader; `requires` maps gates to required meanings."""
    gates = {gate: tuple(meanings) for gate, meanings in (requires or {}).items()}
    for gate, meanings in gates.items():
        unknown = set(meanings) - set(MEANINGS)
        if unknown:
            raise ValueError(f"{entity_type}.{gate}: unknown signature meanings {sorted(unknown)}")

    def register(loader: Loader) -> Loader:
        SIGNABLE[entity_type] = Signable(entity_type, loader, description, gates)
        return loader

    return register


def _signable(entity_type: str) -> Signable:
    signable = SIGNABLE.get(entity_type)
    if signable is None:
        raise Problem(422, "not-signable", "Record type cannot be signed",
                      f"entity_type {entity_type!r} cannot be signed; signable types: {', '.join(sorted(SIGNABLE))}")
    return signable


async def current_record(conn: DBConnection, entity_type: str, entity_id: str) -> Mapping[str, Any] | None:
    return await _signable(entity_type).loader(conn, entity_id)


async def record_hash(conn: DBConnection, entity_type: str, entity_id: str) -> str:
    """SHA-256 of the canonical JSON of the record as it is now (404 when it does not exist)."""
    record = await current_record(conn, entity_type, entity_id)
    if record is None:
        raise Problem(404, "record-not-found", "No such record", f"there is no {entity_type} with id {entity_id!r}")
    return audit.canonical_hash(dict(record))


# --------------------------------------------------------------------------------------------------
# API shapes
# --------------------------------------------------------------------------------------------------


class SignatureInput(BaseModel):
    """What a signer supplies: their password again and the meaning. Embed it in a body to sign a change."""

    model_config = ConfigDict(extra="forbid")

    meaning: Meaning = Field(description="what the signature means: performed, verified, reviewed or approved")
    password: str = Field(min_length=1, max_length=1024, repr=False,
                          description="the signer's password, entered again for this signature")
    comment: str | None = Field(default=None, max_length=2000, description="optional note kept with the signature")


# The record types the protocol registers as signable (register_signable); a test keeps the two equal, so the
# schema states exactly what the service accepts.
SignableType = Literal["culture_run", "deviation", "dose_decision", "recipe", "record_review", "step_correction",
                       "step_record"]


class SignatureRequest(SignatureInput):
    entity_type: SignableType = Field(description="a signable record type")
    entity_id: str = Field(min_length=1, max_length=200, description="the record's id")


class SignatureOut(BaseModel):
    """A signature and its manifestation (11.50): printed name, UTC time and meaning; `valid` says whether the
    record is still the version that was signed."""

    id: int
    entity_type: str
    entity_id: str
    meaning: Meaning
    signer_user_id: int
    signer_name: str
    printed_name: str
    signer_role: str
    signed_at: datetime
    record_hash: str
    comment: str | None
    valid: bool
    status: str = Field(description="valid, or why not: 'record changed after signing', 'record no longer exists'")
    manifestation: str = Field(description="printed name (role), meaning, UTC date and time")


SIGNATURE_COLUMNS = ("id, entity_type, entity_id, meaning, signer_user_id, signer_name, printed_name, signer_role, "
                     "signed_at, record_hash, comment")


def manifestation(printed_name: str, role: str, meaning: str, signed_at: datetime) -> str:
    return f"{printed_name} ({role}), {meaning}, {audit.utc_iso(signed_at)[:19]}Z"


def _out(row: Mapping[str, Any], current_hash: str | None) -> SignatureOut:
    valid = current_hash is not None and current_hash == row["record_hash"]
    status = "valid" if valid else (GONE if current_hash is None else BROKEN)
    return SignatureOut(
        **{k: row[k] for k in SIGNATURE_COLUMNS.split(", ")}, valid=valid, status=status,
        manifestation=manifestation(row["printed_name"], row["signer_role"], row["meaning"], row["signed_at"]),
    )


# --------------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signer:
    """A person who has just proved who they are with their password (made by `authenticate_signer` only)."""

    principal: Principal
    user_id: int
    username: str
    printed_name: str


def check_can_sign(principal: Principal) -> None:
    if not principal.can_sign or principal.id is None:
        who = "an API key" if principal.kind == "apikey" else f"a {principal.role.value} account"
        raise Problem(403, "cannot-sign", "Cannot sign",
                      f"{who} cannot sign: electronic signatures are personal (21 CFR 11.100); sign as a person")


async def authenticate_signer(
    conn: DBConnection, principal: Principal, signature: SignatureInput, *, entity_type: str, entity_id: str,
    client: str | None, threshold: int = users.LOCKOUT_THRESHOLD,
) -> Signer:
    """Check the password re-entered for a signature. Run it OUTSIDE a transaction: a wrong password is audited
    (signature.failed) and counts toward the lockout, and both must stay recorded while the change is refused."""
    check_can_sign(principal)
    if conn.is_in_transaction():
        raise RuntimeError("authenticate_signer must run before the transaction (a failed attempt must persist)")
    assert principal.id is not None
    try:  # an expired password (CULTURECTL_PASSWORD_MAX_AGE_DAYS) signs nothing, whenever the session was opened
        ok = await users.verify_password_for(conn, principal.id, signature.password, purpose="signature",
                                             client=client, threshold=threshold, refuse_expired=True)
    except users.PasswordExpired:
        async with conn.transaction():
            await audit.record(
                conn, actor=principal, action="signature.failed", entity_type=entity_type, entity_id=entity_id,
                old=None, new={"meaning": signature.meaning, "cause": "password expired", "locked": False},
                reason="password re-entry for an electronic signature: the password has expired", client=client)
        raise
    user = await conn.fetchrow("SELECT username, display_name, disabled, locked_at FROM users WHERE id = $1",
                               principal.id)
    if not ok or user is None:
        locked = user is not None and user["locked_at"] is not None
        async with conn.transaction():
            await audit.record(
                conn, actor=principal, action="signature.failed", entity_type=entity_type, entity_id=entity_id,
                old=None, new={"meaning": signature.meaning, "cause": "password check failed", "locked": locked},
                reason="password re-entry for an electronic signature failed", client=client)
        detail = "the password is wrong; the signature was not made (failed attempts count toward the lockout)"
        if locked:
            detail = ("the account is locked after repeated failed password checks; "
                      f"{users.unlock_note(user['locked_at'])}")
        raise Problem(401, "signature-password", "Signature not made", detail)
    return Signer(principal=principal, user_id=principal.id, username=user["username"],
                  printed_name=user["display_name"])


async def sign_within(
    conn: DBConnection, signer: Signer, signature: SignatureInput, *, entity_type: str, entity_id: str,
    client: str | None,
) -> SignatureOut:
    """Sign the record as it is in this transaction: one signature row and one audit row (signature.create)."""
    if not conn.is_in_transaction():
        raise RuntimeError("sign_within must run inside the transaction of the change it signs")
    digest = await record_hash(conn, entity_type, entity_id)
    row = await conn.fetchrow(
        "INSERT INTO signature (entity_type, entity_id, meaning, signer_user_id, signer_name, printed_name, "
        f"signer_role, record_hash, comment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SIGNATURE_COLUMNS}",
        entity_type, entity_id, signature.meaning, signer.user_id, signer.username, signer.printed_name,
        signer.principal.role.value, digest, signature.comment)
    assert row is not None
    out = _out(row, digest)
    await audit.record(
        conn, actor=signer.principal, action="signature.create", entity_type=entity_type, entity_id=entity_id,
        old=None,
        new={"signature_id": out.id, "meaning": out.meaning, "printed_name": out.printed_name,
             "signer_role": out.signer_role, "signed_at": out.signed_at, "record_hash": out.record_hash,
             "comment": out.comment},
        reason=f"electronic signature: {out.meaning}", client=client)
    return out


async def sign(
    conn: DBConnection, principal: Principal, request: SignatureRequest, *, client: str | None,
    threshold: int = users.LOCKOUT_THRESHOLD,
) -> SignatureOut:
    """POST /api/v1/signatures: check who may sign and that the record exists, the password, then sign."""
    check_can_sign(principal)
    await record_hash(conn, request.entity_type, request.entity_id)  # 422 / 404 before asking for the password
    signer = await authenticate_signer(conn, principal, request, entity_type=request.entity_type,
                                       entity_id=request.entity_id, client=client, threshold=threshold)
    async with conn.transaction():
        return await sign_within(conn, signer, request, entity_type=request.entity_type,
                                 entity_id=request.entity_id, client=client)


# --------------------------------------------------------------------------------------------------
# Reading and requiring
# --------------------------------------------------------------------------------------------------


async def list_signatures(
    conn: DBConnection, entity_type: str, entity_id: str | None = None, *, limit: int = 100,
) -> list[SignatureOut]:
    """Signatures on a record (or on every record of a type), oldest first, each checked against the record now."""
    _signable(entity_type)
    rows = await conn.fetch(
        f"SELECT {SIGNATURE_COLUMNS} FROM signature WHERE entity_type = $1 AND ($2::text IS NULL OR entity_id = $2) "
        "ORDER BY id LIMIT $3", entity_type, entity_id, limit)
    hashes: dict[str, str | None] = {}
    out = []
    for row in rows:
        eid = row["entity_id"]
        if eid not in hashes:
            record = await current_record(conn, entity_type, eid)
            hashes[eid] = None if record is None else audit.canonical_hash(dict(record))
        out.append(_out(row, hashes[eid]))
    return out


async def require_signatures(conn: DBConnection, entity_type: str, entity_id: str | int,
                             meanings: Sequence[str]) -> None:
    """Raise 409 naming the meanings that have no valid signature on the record as it is now."""
    entity_id = str(entity_id)
    have = {s.meaning for s in await list_signatures(conn, entity_type, entity_id, limit=10_000) if s.valid}
    missing = [m for m in meanings if m not in have]
    if missing:
        raise Problem(409, "signatures-missing", "Signatures missing",
                      f"{entity_type} {entity_id} needs valid signatures meaning {', '.join(missing)} "
                      "(signatures on an earlier version of the record no longer count)",
                      missing=missing)


async def require_signatures_for(conn: DBConnection, entity_type: str, entity_id: str | int, gate: str) -> None:
    """`require_signatures` with the meanings registered for `gate` of this record type."""
    signable = _signable(entity_type)
    if gate not in signable.requires:
        raise KeyError(f"{entity_type} has no signature gate {gate!r} (registered: {sorted(signable.requires)})")
    await require_signatures(conn, entity_type, entity_id, signable.requires[gate])
