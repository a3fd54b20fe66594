"""Foundation: schema_info, device, channel, culture_run, telemetry (+ 5-minute rollup), telemetry_gap.

TimescaleDB path when the extension is available AND loadable (listed in pg_available_extensions and
in shared_preload_libraries; otherwise CREATE EXTENSION fails and aborts the migration): telemetry is a
hypertable with 1-day chunks and compression, telemetry_5m a continuous aggregate with a refresh policy.
Plain path otherwise: telemetry is a table with a BRIN index on time, telemetry_5m a table the ingest
writer keeps current. schema_info records which path was taken ('timescale' = 'true'/'false').

Revision ID: 20261121_0001
Revises:
Create Date: 2026-11-21 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "20261121_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _scalar(sql: str) -> object:
    return op.get_bind().execute(text(sql)).scalar()


def _timescale_loadable() -> bool:
    """True when CREATE EXTENSION timescaledb can succeed (or the extension is already there)."""
    available = _scalar("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')")
    if not available:
        return False
    preload = str(_scalar("SELECT current_setting('shared_preload_libraries', true)") or "")
    libs = {lib.strip().strip('"').rsplit("/", 1)[-1] for lib in preload.split(",")}
    return "timescaledb" in libs


def upgrade() -> None:
    timescale = _timescale_loadable()
    created_extension = False
    if timescale:
        had = _scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
        if not had:
            op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            created_extension = True

    op.execute(
        """
        CREATE TABLE schema_info (
            key   text PRIMARY KEY,
            value text NOT NULL
        )
        """
    )
    op.execute(
        text(
            "INSERT INTO schema_info (key, value) "
            "VALUES ('timescale', :ts), ('timescale_extension_created', :ce)"
        ).bindparams(ts="true" if timescale else "false", ce="true" if created_extension else "false")
    )

    op.execute(
        """
        CREATE TABLE device (
            id          serial PRIMARY KEY,
            name        text NOT NULL UNIQUE,
            kind        text NOT NULL,
            protocol    text NOT NULL,
            endpoint    text NOT NULL,
            description text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE channel (
            id        serial PRIMARY KEY,
            device_id int NOT NULL REFERENCES device (id),
            name      text NOT NULL,
            unit      text NOT NULL,
            kind      text NOT NULL CHECK (kind IN ('analog', 'boolean')),
            UNIQUE (device_id, name)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE culture_run (
            id                       bigserial PRIMARY KEY,
            code                     text NOT NULL UNIQUE,
            status                   text NOT NULL DEFAULT 'planned'
                CHECK (status IN ('planned', 'running', 'held', 'completed', 'aborted')),
            incubator_device_id      int NULL REFERENCES device (id),
            culture_system_device_id int NULL REFERENCES device (id),
            t0                       timestamptz NULL,
            created_at               timestamptz NOT NULL DEFAULT now(),
            ended_at                 timestamptz NULL
        )
        """
    )
    # Hot table: no foreign key (every insert would check channel); value is NULL when quality is BAD.
    op.execute(
        """
        CREATE TABLE telemetry (
            time       timestamptz NOT NULL,
            channel_id int NOT NULL,
            value      double precision NULL,
            quality    smallint NOT NULL DEFAULT 0,
            PRIMARY KEY (channel_id, time)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE telemetry_gap (
            id          bigserial PRIMARY KEY,
            channel_id  int NULL,
            start_time  timestamptz NOT NULL,
            end_time    timestamptz NOT NULL,
            cause       text NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            CHECK (end_time >= start_time)
        )
        """
    )
    op.execute("CREATE INDEX telemetry_gap_time_idx ON telemetry_gap (start_time, end_time)")

    if timescale:
        _upgrade_timescale()
    else:
        _upgrade_plain()


def _upgrade_plain() -> None:
    # Rows arrive roughly in time order, so a BRIN index is tiny and good enough for time-range scans
    # across channels; per-channel ranges use the primary key.
    op.execute("CREATE INDEX telemetry_time_brin ON telemetry USING brin (time)")
    # Kept current by the ingest writer in the same transaction as each batch (only rows inserted).
    op.execute(
        """
        CREATE TABLE telemetry_5m (
            channel_id int NOT NULL,
            bucket     timestamptz NOT NULL,
            n          bigint NOT NULL DEFAULT 0,
            sum        double precision NULL,
            min        double precision NULL,
            max        double precision NULL,
            PRIMARY KEY (channel_id, bucket)
        )
        """
    )


def _upgrade_timescale() -> None:
    # Positional/named arguments of the pre-2.13 signature: still accepted by every 2.x release.
    op.execute(
        "SELECT create_hypertable('telemetry', 'time', chunk_time_interval => INTERVAL '1 day')"
    )
    op.execute(
        """
        ALTER TABLE telemetry SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'channel_id',
            timescaledb.compress_orderby = 'time'
        )
        """
    )
    op.execute("SELECT add_compression_policy('telemetry', INTERVAL '7 days')")
    # time_bucket's default origin (2000-01-03) is a whole number of 5-minute buckets away from
    # date_bin's '2000-01-01', so buckets line up with date_bin('5 minutes', time, '2000-01-01').
    # WITH NO DATA lets this run inside the migration's transaction.
    op.execute(
        """
        CREATE MATERIALIZED VIEW telemetry_5m
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT channel_id,
               time_bucket(INTERVAL '5 minutes', time) AS bucket,
               count(value)                            AS n,
               sum(value)                              AS sum,
               min(value)                              AS min,
               max(value)                              AS max
        FROM telemetry
        GROUP BY channel_id, time_bucket(INTERVAL '5 minutes', time)
        WITH NO DATA
        """
    )
    # Materialize everything older than 10 minutes each minute; newer data is aggregated at query
    # time (materialized_only = false), so charts are never stale.
    op.execute(
        """
        SELECT add_continuous_aggregate_policy('telemetry_5m',
            start_offset => NULL,
            end_offset => INTERVAL '10 minutes',
            schedule_interval => INTERVAL '1 minute')
        """
    )


def downgrade() -> None:
    bind = op.get_bind()
    info: dict[str, str] = dict(bind.execute(text("SELECT key, value FROM schema_info")).all())
    timescale = info.get("timescale") == "true"
    created_extension = info.get("timescale_extension_created") == "true"

    if timescale:
        # Dropping the cagg and the hypertable also removes their policies (background jobs).
        op.execute("DROP MATERIALIZED VIEW IF EXISTS telemetry_5m CASCADE")
    else:
        op.execute("DROP TABLE IF EXISTS telemetry_5m")
    op.execute("DROP TABLE IF EXISTS telemetry_gap")
    op.execute("DROP TABLE IF EXISTS telemetry")
    op.execute("DROP TABLE IF EXISTS culture_run")
    op.execute("DROP TABLE IF EXISTS channel")
    op.execute("DROP TABLE IF EXISTS device")
    op.execute("DROP TABLE IF EXISTS schema_info")
    if created_extension:
        op.execute("DROP EXTENSION IF EXISTS timescaledb")
