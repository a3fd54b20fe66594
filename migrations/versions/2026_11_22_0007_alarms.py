"""Alarms and excursions.

- alarm: one row per alarm (channel x definition name, plus the service's own alarms), its current ISA-18.2
  state, active condition, priority and the time of its last change. The service restores acknowledgement,
  shelving and out-of-service from here after a restart.
- alarm_event: the alarm journal, one row per transition (activation, return, acknowledge, shelve ...), with the
  actor and comment of operator actions and the run the channel belonged to. Append-only for the service role.
- excursion: per run and channel, the time and integral outside the band, the worst distance and the episodes
  (the batch record's excursion table); the deviation rules it has tripped.

Revision ID: 20261122_0007
Revises: 20261122_0006
Create Date: 2026-11-22 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261122_0007"
down_revision: str | None = "20261122_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "culturectl_app"


_SCHEMA = (
    """
    CREATE TABLE alarm (
        id text PRIMARY KEY,
        channel text NOT NULL,
        device text NOT NULL,
        name text NOT NULL,
        kind text NOT NULL,
        description text NOT NULL DEFAULT '',
        priority text NOT NULL,
        status text NOT NULL,
        severity text,
        value double precision,
        active_since timestamptz,
        mode_until timestamptz,
        run_id bigint REFERENCES culture_run (id),
        changed_at timestamptz NOT NULL
    )
    """,
    """
    CREATE INDEX alarm_status_idx ON alarm (status) WHERE status <> 'normal'
    """,
    """
    CREATE TABLE alarm_event (
        id bigserial PRIMARY KEY,
        alarm_id text NOT NULL REFERENCES alarm (id),
        at timestamptz NOT NULL,
        from_state text NOT NULL,
        to_state text NOT NULL,
        severity text,
        priority text NOT NULL,
        value double precision,
        reason text NOT NULL,
        actor text,
        comment text,
        run_id bigint REFERENCES culture_run (id),
        recorded_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE INDEX alarm_event_at_idx ON alarm_event (at)
    """,
    """
    CREATE INDEX alarm_event_alarm_idx ON alarm_event (alarm_id, at)
    """,
    """
    CREATE INDEX alarm_event_run_idx ON alarm_event (run_id, at) WHERE run_id IS NOT NULL
    """,
    """
    CREATE TABLE excursion (
        run_id bigint NOT NULL REFERENCES culture_run (id),
        channel text NOT NULL,
        unit text NOT NULL,
        band_low double precision NOT NULL,
        band_high double precision NOT NULL,
        seconds_outside double precision NOT NULL DEFAULT 0,
        integral double precision NOT NULL DEFAULT 0,
        worst double precision NOT NULL DEFAULT 0,
        episodes integer NOT NULL DEFAULT 0,
        hard_episodes integer NOT NULL DEFAULT 0,
        cumulative_tripped boolean NOT NULL DEFAULT false,
        outside boolean NOT NULL DEFAULT false,
        beyond_hard boolean NOT NULL DEFAULT false,
        last_value double precision,
        last_at timestamptz,
        first_outside_at timestamptz,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (run_id, channel)
    )
    """,
)


def upgrade() -> None:
    for statement in _SCHEMA:
        op.execute(statement)
    # The journal is append-only for the service (the audit trail covers operator actions as well).
    op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON alarm_event FROM {APP_ROLE}")


def downgrade() -> None:
    for table in ("excursion", "alarm_event", "alarm"):
        op.execute(f"DROP TABLE {table}")
