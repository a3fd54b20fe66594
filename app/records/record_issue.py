"""Review by exception, release, and the issued versions of a run's batch record: the one module that writes
`record_review` and `batch_record_version`.

- QA reviews each exception of the record (app/records/record_rules.py) with a comment and an e-signature meaning
  `reviewed` (the signature signs the review: the exception's key and fingerprint, and the comment). A review
  counts while the exception still shows what was reviewed (same fingerprint): a changed or new exception (a late
  result) re-opens the review.
- The release step is refused (409 `exceptions_not_reviewed`, naming them) until every exception is reviewed; the
  release signs the record's content hash (kept in the release step's provenance, which the signature covers).
- At release the record is issued: version 1, its JSON and its PDF as they are then, permanent. Each later change
  of the run's record (a post-infusion result, a closed deviation, a review) issues version n+1, pointing to n.
  `RecordKeeper` does that on a timer and when asked (`wake`); the audit chain is checkpointed at each release.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from app import db
from app.auth.principal import SYSTEM, Principal
from app.core.aio import wait_event
from app.core.clock import Clock
from app.core.outage import OutageLog
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol.common import require_meaning
from app.records import audit, signatures
from app.records.record_collect import signature_view
from app.records.record_model import BatchRecord, ExceptionView, Review, VersionInfo
from app.records.record_rules import ReviewRow, attach_reviews, content_hash
from app.records.signatures import SignatureInput

log = logging.getLogger("culturectl.records")

ENTITY = "batch_record"  # the audit entity of issued versions (not part of a run's audit extract: see record_collect)
BuildRecord = Callable[[DBConnection, int], Awaitable[BatchRecord]]  # the current draft, reviews not yet attached
RenderPdf = Callable[[BatchRecord, bytes], bytes]


class ReviewIn(BaseModel):
    """QA's review of one exception: a comment and the signature (meaning 'reviewed')."""

    model_config = ConfigDict(extra="forbid")
    comment: str = Field(min_length=1, max_length=4000, pattern=r"\S", description="what QA found (required)")
    signature: SignatureInput = Field(description="the reviewer's password again, meaning 'reviewed'")


@signatures.register_signable("record_review", description="QA's review of one exception of a run's batch record")
async def _load_review(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow("SELECT id, run_id, exception_key, fingerprint, comment, reviewed_by, reviewed_at FROM "
                              "record_review WHERE id = $1", int(entity_id))
    return dict(row) if row is not None else None


async def reviews(conn: DBConnection, run_id: int) -> list[ReviewRow]:
    """Every review of the run's exceptions, with its signature (record_rules.attach_reviews picks what counts)."""
    rows = await conn.fetch("SELECT id, exception_key, fingerprint, comment, reviewed_by, reviewed_at FROM "
                            "record_review WHERE run_id = $1 ORDER BY id", run_id)
    out: list[ReviewRow] = []
    for r in rows:
        signed = await signatures.list_signatures(conn, "record_review", str(r["id"]))
        sig = next((signature_view(x) for x in signed if x.meaning == "reviewed"), None)
        out.append(ReviewRow(str(r["exception_key"]), str(r["fingerprint"]), str(r["reviewed_by"]), r["reviewed_at"],
                             str(r["comment"]), sig))
    return out


def unreviewed(record: BatchRecord) -> list[ExceptionView]:
    """The exceptions without a review of what they show now (pure)."""
    return [e for e in record.exceptions if e.review is None]


async def draft(conn: DBConnection, run_id: int, build: BuildRecord) -> BatchRecord:
    """The current draft with its reviews."""
    record = await build(conn, run_id)
    return record.model_copy(update={"exceptions": attach_reviews(record.exceptions, await reviews(conn, run_id))})


class ReviewsIn(BaseModel):
    """QA's review of several exceptions at once (one comment, one password): each gets its own signed review."""

    model_config = ConfigDict(extra="forbid")
    keys: list[str] = Field(min_length=1, max_length=500, description="the exceptions' keys")
    comment: str = Field(min_length=1, max_length=4000, pattern=r"\S", description="what QA found (required)")
    signature: SignatureInput = Field(description="the reviewer's password again, meaning 'reviewed'")


async def review(conn: asyncpg.Connection, run_id: int, key: str, body: ReviewIn, *, build: BuildRecord,
                 principal: Principal, now: datetime, client: str | None, threshold: int) -> ExceptionView:
    """Record QA's signed review of one exception (audited `record.review`, signed `reviewed`)."""
    [out] = await review_many(conn, run_id, ReviewsIn(keys=[key], comment=body.comment, signature=body.signature),
                              build=build, principal=principal, now=now, client=client, threshold=threshold)
    return out


async def review_many(conn: asyncpg.Connection, run_id: int, body: ReviewsIn, *, build: BuildRecord,
                      principal: Principal, now: datetime, client: str | None,
                      threshold: int) -> list[ExceptionView]:
    """Record QA's signed reviews of the given exceptions in one transaction: the password is checked once, each
    review has its own row, audit record (`record.review`) and signature (`reviewed`)."""
    require_meaning(body.signature, "reviewed", "reviewing an exception of the batch record")
    record = await draft(conn, run_id, build)
    by_key = {e.key: e for e in record.exceptions}
    unknown = [k for k in body.keys if k not in by_key]
    if unknown:
        keys = list(by_key)
        raise Problem(404, "exception-not-found", "No such exception",
                      f"the batch record of run {record.identity.run_code} has no exception "
                      f"{', '.join(map(repr, unknown[:10]))}; exceptions: {', '.join(keys) or 'none'}",
                      rule="unknown_exception", exceptions=keys, unknown=unknown)
    signer = await signatures.authenticate_signer(conn, principal, body.signature, entity_type="record_review",
                                                  entity_id=f"{run_id}:{body.keys[0]}", client=client,
                                                  threshold=threshold)
    out: list[ExceptionView] = []
    async with conn.transaction():
        for key in dict.fromkeys(body.keys):
            found = by_key[key]
            review_id = await conn.fetchval(
                "INSERT INTO record_review (run_id, exception_key, fingerprint, comment, reviewed_by, reviewed_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id", run_id, key, found.fingerprint, body.comment,
                principal.label, now)
            await audit.record(conn, actor=principal, action="record.review", entity_type="culture_run",
                               entity_id=str(run_id), old=None,
                               new={"exception": key, "fingerprint": found.fingerprint, "kind": found.kind,
                                    "title": found.title, "review_id": review_id}, reason=body.comment,
                               client=client)
            sig = await signatures.sign_within(conn, signer, body.signature, entity_type="record_review",
                                               entity_id=str(review_id), client=client)
            out.append(found.model_copy(update={"review": Review(by=principal.label, at=now, comment=body.comment,
                                                                 signature=signature_view(sig))}))
    return out


async def release_gate(conn: DBConnection, run_id: int, build: BuildRecord) -> str:
    """Refuse the release while an exception is not reviewed (409 naming them); else the content hash the release
    signs."""
    record = await draft(conn, run_id, build)
    left = unreviewed(record)
    if left:
        listed = "; ".join(f"{e.key} ({e.title})" for e in left[:20])
        more = f" and {len(left) - 20} more" if len(left) > 20 else ""
        raise Problem(409, "exceptions-not-reviewed", "Exceptions not reviewed",
                      f"run {record.identity.run_code}: {len(left)} exceptions of the batch record are not reviewed: "
                      f"{listed}{more}; QA reviews each (POST .../record/exceptions/{{key}}/review) before release",
                      rule="exceptions_not_reviewed", exceptions=[e.key for e in left])
    return content_hash(record)


# -- issued versions -------------------------------------------------------------------------------------------------

VERSION_COLUMNS = ("number, previous, content_hash, signed_hash, issued_at, issued_by, reason, chain_seq, chain_hash, "
                   "octet_length(pdf) AS pdf_bytes")


async def versions(conn: DBConnection, run_id: int) -> list[dict[str, Any]]:
    """The run's issued versions, oldest first (without their documents)."""
    return [dict(r) for r in await conn.fetch(
        f"SELECT {VERSION_COLUMNS} FROM batch_record_version WHERE run_id = $1 ORDER BY number", run_id)]


async def issued(conn: DBConnection, run_id: int, number: int) -> tuple[dict[str, Any], bytes]:
    """An issued version's JSON and PDF as issued; 404 naming the versions there are."""
    row = await conn.fetchrow("SELECT record, pdf FROM batch_record_version WHERE run_id = $1 AND number = $2", run_id,
                              number)
    if row is None:
        have = [int(v["number"]) for v in await versions(conn, run_id)]
        raise Problem(404, "record-version-not-found", "No such version",
                      f"run {run_id} has no issued batch record version {number}; issued: "
                      f"{', '.join(map(str, have)) or 'none (not released)'}", rule="unknown_record_version",
                      versions=have)
    record = row["record"] if isinstance(row["record"], dict) else json.loads(row["record"])
    return record, bytes(row["pdf"])


def record_json(record: BatchRecord) -> bytes:
    """The record as the JSON the API sends and the PDF embeds."""
    return record.model_dump_json(indent=None).encode()


async def issue(conn: asyncpg.Connection, run_id: int, *, build: BuildRecord, render: RenderPdf, now: datetime,
                reason: str, signed_hash: str | None = None,
                actor: Principal = SYSTEM) -> dict[str, Any] | None:
    """Issue the next version of the run's record if its content changed since the last one; None if it did not.

    The PDF is rendered outside the transaction (seconds for a 7-day run); the version is inserted under a per-run
    advisory lock, so two replicas never issue the same number.
    """
    record = await draft(conn, run_id, build)
    digest = content_hash(record)
    last = await conn.fetchrow("SELECT number, content_hash FROM batch_record_version WHERE run_id = $1 ORDER BY "
                               "number DESC LIMIT 1", run_id)
    if last is not None and last["content_hash"] == digest:
        return None
    number = 1 if last is None else int(last["number"]) + 1
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    record = record.model_copy(update={"version": VersionInfo(
        number=number, draft=False, previous=None if last is None else int(last["number"]), issued_at=now,
        content_hash=digest)})
    body = record_json(record)
    pdf = await asyncio.to_thread(render, record, body)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK, run_id)
        again = await conn.fetchval("SELECT max(number) FROM batch_record_version WHERE run_id = $1", run_id)
        if (again or 0) != (0 if last is None else int(last["number"])):
            return None  # another replica issued meanwhile: the next pass compares with it
        await conn.execute(
            "INSERT INTO batch_record_version (run_id, number, previous, content_hash, signed_hash, record, pdf, "
            "issued_at, issued_by, reason, chain_seq, chain_hash) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, "
            "$10, $11, $12)", run_id, number, None if last is None else int(last["number"]), digest, signed_hash,
            body.decode(), pdf, now, actor.label, reason, int(head["seq"]) if head else 0,
            str(head["hash"]) if head else "0" * 64)
        await audit.record(conn, actor=actor, action="record.issue", entity_type=ENTITY, entity_id=f"{run_id}/{number}",
                           old=None if last is None else {"number": int(last["number"]),
                                                          "content_hash": last["content_hash"]},
                           new={"run_id": run_id, "number": number, "content_hash": digest, "signed_hash": signed_hash,
                                "pdf_bytes": len(pdf), "json_bytes": len(body)}, reason=reason)
    log.info("batch record of run %s issued as version %d (%s)", record.identity.run_code, number, reason)
    return {"number": number, "content_hash": digest, "pdf_bytes": len(pdf), "json_bytes": len(body)}


_LOCK = 0x42524543  # "BREC": the per-run advisory lock of issuing


@dataclass
class RecordKeeper:
    """Issues version 1 of each released run's record, then a new version each time its content changes."""

    pool: asyncpg.Pool
    clock: Clock
    build: BuildRecord
    render: RenderPdf
    released_runs: Callable[[DBConnection], Awaitable[Sequence[tuple[int, str | None]]]]
    interval: float = 5.0
    checkpoint: Callable[[asyncpg.Connection, str], Awaitable[Any]] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _seen: int | None = None  # the audit head of the last pass that found nothing to issue
    _outage: OutageLog = field(default_factory=lambda: OutageLog(log, "batch record keeper: database unavailable"))

    def wake(self) -> None:
        """Look now (a release was recorded)."""
        self._seen = None
        self._wake.set()

    async def pass_once(self) -> int:
        """Issue what changed; the versions issued. Nothing is built while the audit trail has not moved since the
        last pass: every change a record shows is audited, so an unchanged head means unchanged records."""
        made = 0
        async with self.pool.acquire() as conn:
            head = await conn.fetchval("SELECT seq FROM audit_head")
            if head is not None and head == self._seen:
                return 0
            for run_id, signed_hash in await self.released_runs(conn):
                first = not await conn.fetchval("SELECT 1 FROM batch_record_version WHERE run_id = $1 LIMIT 1", run_id)
                out = await issue(conn, run_id, build=self.build, render=self.render, now=self.clock.now(),
                                  reason="released" if first else "the run's record changed after release",
                                  signed_hash=signed_hash if first else None)
                if out is not None:
                    made += 1
                    if first and self.checkpoint is not None:
                        await self.checkpoint(conn, "release")
            # what this pass issued moved the head: the next pass looks once more, then rests
            self._seen = head if made == 0 else None
        return made

    async def run(self) -> None:
        while True:
            try:
                await self.pass_once()
                self._outage.ok()
            except asyncio.CancelledError:
                raise
            except db.UNAVAILABLE as exc:
                self._outage.failed(exc)
            except Exception:
                log.exception("batch record keeper pass failed; retrying")
            self._wake.clear()
            await wait_event(self._wake, self.interval)
