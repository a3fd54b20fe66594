"""`culturectl audit verify` and `culturectl audit checkpoint`: the audit trail's hash chain, in the database and
against the signed checkpoints and issued records kept outside it.

The database is CULTURECTL_DATABASE_URL, or the embedded one in CULTURECTL_DATA_DIR when that is unset.
`verify` exits 0 when everything holds, 1 when the chain is broken, a checkpoint or a record does not match, or a
checkpoint file is refused, 2 when the database has no audit trail or a key or file cannot be read.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from app.records.audit import VerifyResult

audit_app = typer.Typer(help="The audit trail: verify its hash chain, write signed checkpoints.",
                        no_args_is_help=True)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@audit_app.command("verify")
def verify(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    checkpoints: Annotated[Path | None, typer.Option(
        "--checkpoints", help="also compare the chain with the signed checkpoints in DIR", metavar="DIR")] = None,
    public_key: Annotated[list[Path] | None, typer.Option(
        "--public-key", help="public key (PEM) the checkpoints are signed with (repeatable); default: the one "
        "beside CULTURECTL_CHECKPOINT_KEY_FILE; give a copy kept away from the database host", metavar="FILE")]
    = None,
    record: Annotated[list[Path] | None, typer.Option(
        "--record", help="also check an issued record's chain head (top-level audit_chain) against the database "
        "(repeatable)", metavar="FILE")] = None,
) -> None:
    """Recompute every row's hash; report ok, or the first broken row (edited, deleted, inserted, reordered).

    With --checkpoints and --record, also detect a chain rewritten with recomputed hashes: the first checkpoint
    (or record) whose seq's stored hash differs, and the rows the rewrite starts in.
    """
    from app import db
    from app.cli.common import with_database
    from app.records import audit
    from app.records import checkpoints as cp
    from app.settings import Settings

    loaded: list[cp.Checkpoint] = []
    records: list[tuple[str, Any]] = []
    if checkpoints is not None:
        try:
            if public_key:
                keys = [cp.load_public_key(p) for p in public_key]
            else:
                keys = [cp.load_public_key(cp.public_key_path(cp.checkpoint_key_file(Settings())))]
        except cp.CheckpointError as exc:
            raise _fail(str(exc), 2) from None
        try:
            loaded = cp.load_checkpoints(checkpoints, keys)
        except cp.CheckpointError as exc:
            raise _fail(f"checkpoint refused: {exc}", 1) from None
    for path in record or []:
        try:
            records.append((str(path), json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _fail(f"{path}: cannot read the record: {exc}", 2) from None

    async def main(dsn: str) -> tuple[VerifyResult, dict[int, str], int] | None:
        conn = await db.connect(dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('audit_log') IS NOT NULL"):
                return None
            await db.assume_app_role(conn)  # read as the service does: SELECT is all it needs
            result = await audit.verify(conn)
            seqs = [c.seq for c in loaded]
            for source, body in records:
                seqs.append(cp.record_head(body, source)[0])
            head = int(await conn.fetchval("SELECT seq FROM audit_head") or 0)
            return result, await cp.stored_hashes(conn, seqs), head
        finally:
            await conn.close()

    try:
        answer = with_database(lambda dsn: asyncio.run(main(dsn)))
    except cp.CheckpointError as exc:  # a record without a chain head
        raise _fail(str(exc), 2) from None
    if answer is None:
        raise _fail("the database has no audit trail: run `culturectl db upgrade` first", 2)
    result, stored, head_seq = answer
    against = cp.verify_against(stored, loaded) if checkpoints is not None else None
    checks = [cp.verify_record(stored, body, source) for source, body in records]
    ok = result.ok and (against is None or against.ok) and all(c.ok for c in checks)

    if as_json:
        report = result.as_dict()
        if against is not None or checks:
            report = {**report, "ok": ok, "chain_ok": result.ok}
        if against is not None:
            report["checkpoints"] = {**against.as_dict(), "directory": str(checkpoints), "head_seq": head_seq}
        if checks:
            report["records"] = [c.as_dict() for c in checks]
        typer.echo(json.dumps(report, indent=2))
    else:
        if result.first_broken is None:
            typer.echo(f"audit trail ok: {result.rows} rows, last seq {result.last_seq}, head {result.last_hash}")
        else:
            b = result.first_broken
            typer.echo(f"audit trail BROKEN at seq {b.seq} ({b.kind}): {b.detail}\n"
                       f"{result.rows} rows checked; the chain holds up to seq {result.last_seq}")
        if against is not None:
            text = against.describe() if against.checked else f"no checkpoints in {checkpoints}: nothing verified"
            typer.echo(text)
            newest = against.newest
            if against.ok and newest is not None and head_seq > newest.seq:
                typer.echo(f"rows after seq {newest.seq} (up to the head, seq {head_seq}) are not covered by a "
                           "checkpoint yet")
        for check in checks:
            typer.echo(check.describe())
    if not ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def checkpoint(
    force: Annotated[bool, typer.Option("--force", help="write one even when the head has not moved")] = False,
) -> None:
    """Sign the chain head now and write it to CULTURECTL_CHECKPOINT_DIR (reason "manual")."""
    from app import db
    from app.cli.common import with_database
    from app.records import checkpoints as cp
    from app.settings import Settings

    settings = Settings()
    directory = cp.checkpoint_dir(settings)

    async def main(dsn: str) -> tuple[cp.Checkpoint, bool] | None:
        conn = await db.connect(dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('audit_log') IS NOT NULL"):
                return None
            await db.assume_app_role(conn)
            key = await asyncio.to_thread(cp.load_or_create_signing_key, cp.checkpoint_key_file(settings))
            before = await asyncio.to_thread(cp.last_checkpoint, directory, key.public_key())
            made = await cp.write_checkpoint(conn, directory, key, "manual", force=force)
            return made, before is None or made.path != before.path
        finally:
            await conn.close()

    try:
        answer = with_database(lambda dsn: asyncio.run(main(dsn)))
    except cp.CheckpointError as exc:
        raise _fail(str(exc), 1) from None
    if answer is None:
        raise _fail("the database has no audit trail: run `culturectl db upgrade` first", 2)
    made, new = answer
    if new:
        typer.echo(f"checkpoint {made.path}: seq {made.seq}, hash {made.hash}, key id {made.key_id}")
    else:
        typer.echo(f"the chain head (seq {made.seq}) has not moved since {made.path}: no new checkpoint "
                   "(--force writes one)")
