"""Data quality: the 5-minute rollup aggregates GOOD values only; records the service spools carry a key.

Quality is now judged at the edge (non-finite values are BAD, values outside a point's plausible range are
IMPLAUSIBLE = 3). The rollup must never average anything but GOOD values, and rows stored before this revision may
hold NaN or huge values marked good; they are left in `telemetry` as they were recorded, and kept out of the rollup
by the same bound the queries apply (|value| <= 1e12).

- Plain path: telemetry_5m is rebuilt from the GOOD rows of telemetry.
- TimescaleDB path: the continuous aggregate is created again with the filter, and refreshed by its policy.

While the database is down, the alarm journal and the deviations the alarm service opens wait in the local spool
and are written when it returns. `alarm_event.record_key` and `deviation.record_key` (unique, NULL for rows written
otherwise) make that replay idempotent: a record written again after a crash between the commit and the spool's
delete is not written twice.

Revision ID: 20261201_0008
Revises: 20261122_0007
Create Date: 2026-12-01 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "20261201_0008"
down_revision: str | None = "20261122_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GOOD = "quality = 0 AND abs(value) <= 1e12"


def _timescale() -> bool:
    info = dict(op.get_bind().execute(text("SELECT key, value FROM schema_info")).all())
    return info.get("timescale") == "true"


def _cagg(where: str) -> None:
    op.execute("DROP MATERIALIZED VIEW IF EXISTS telemetry_5m CASCADE")
    op.execute(
        f"""
        CREATE MATERIALIZED VIEW telemetry_5m
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT channel_id,
               time_bucket(INTERVAL '5 minutes', time) AS bucket,
               count(value)                            AS n,
               sum(value)                              AS sum,
               min(value)                              AS min,
               max(value)                              AS max
        FROM telemetry
        {where}
        GROUP BY channel_id, time_bucket(INTERVAL '5 minutes', time)
        WITH NO DATA
        """
    )
    op.execute(
        """
        SELECT add_continuous_aggregate_policy('telemetry_5m',
            start_offset => NULL,
            end_offset => INTERVAL '10 minutes',
            schedule_interval => INTERVAL '1 minute')
        """
    )


def _rebuild_plain(where: str) -> None:
    op.execute("DELETE FROM telemetry_5m")
    op.execute(
        f"""
        INSERT INTO telemetry_5m (channel_id, bucket, n, sum, min, max)
        SELECT channel_id, date_bin('5 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
               count(value), sum(value), min(value), max(value)
        FROM telemetry {where}
        GROUP BY 1, 2
        """
    )


def upgrade() -> None:
    if _timescale():
        _cagg(f"WHERE {GOOD}")
    else:
        _rebuild_plain(f"WHERE {GOOD}")
    for table in ("alarm_event", "deviation"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN record_key uuid NULL")
        op.execute(f"CREATE UNIQUE INDEX {table}_record_key_idx ON {table} (record_key)")


def downgrade() -> None:
    for table in ("alarm_event", "deviation"):
        op.execute(f"DROP INDEX {table}_record_key_idx")
        op.execute(f"ALTER TABLE {table} DROP COLUMN record_key")
    if _timescale():
        _cagg("")
    else:
        _rebuild_plain("")
