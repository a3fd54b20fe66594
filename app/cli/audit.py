"""`culturectl audit verify`: recompute the audit trail's hash chain and name the first broken row.

The database is CULTURECTL_DATABASE_URL, or the embedded one in CULTURECTL_DATA_DIR when that is unset.
Exit status 0 when the chain holds, 1 when it is broken, 2 when the database has no audit trail.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

audit_app = typer.Typer(help="The audit trail: verify its hash chain.", no_args_is_help=True)


@audit_app.command("verify")
def verify(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Recompute every row's hash; report ok, or the first broken row (edited, deleted, inserted, reordered)."""
    from app import db
    from app.cli.common import with_database
    from app.records import audit

    async def main(dsn: str) -> audit.VerifyResult | None:
        conn = await db.connect(dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('audit_log') IS NOT NULL"):
                return None
            await db.assume_app_role(conn)  # read as the service does: SELECT is all it needs
            return await audit.verify(conn)
        finally:
            await conn.close()

    result = with_database(lambda dsn: asyncio.run(main(dsn)))
    if result is None:
        typer.echo("error: the database has no audit trail: run `culturectl db upgrade` first", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    elif result.first_broken is None:
        typer.echo(f"audit trail ok: {result.rows} rows, last seq {result.last_seq}, head {result.last_hash}")
    else:
        b = result.first_broken
        typer.echo(f"audit trail BROKEN at seq {b.seq} ({b.kind}): {b.detail}\n"
                   f"{result.rows} rows checked; the chain holds up to seq {result.last_seq}")
    if not result.ok:
        raise typer.Exit(1)
