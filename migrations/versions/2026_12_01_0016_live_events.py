"""Live events shared by the replicas: live_event_batch, a short ring of batches every replica follows.

- live_event_batch: one row per batch of live events (readings, device states, alarms, steps, runs ...) written by
  one replica (app/cluster/events.py): the id of its first event (`first_id`; the events have the ids
  first_id .. last_id), how many, which replica wrote it, when, and the events as one zlib-compressed JSON
  payload. Batches are written under one advisory lock, so ids increase in commit order; every replica reads the
  batches above the newest id it has seen (woken by NOTIFY culturectl_events) and deletes those older than its
  retention.

The table is UNLOGGED: a ring of a few minutes of live events needs no WAL (the durable data are in telemetry,
alarm_event and the other tables). After a crash of the database it is empty, and a standby does not have it;
ids are time-based (microseconds since the epoch at least), so they keep increasing from an empty table. The
payload is stored without PostgreSQL's compression (STORAGE EXTERNAL): it is compressed already.

Revision ID: 20261201_0016
Revises: 20261201_0015
Create Date: 2026-12-01 19:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0016"
down_revision: str | None = "20261201_0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "culturectl_app"


def upgrade() -> None:
    op.execute(
        """
        CREATE UNLOGGED TABLE live_event_batch (
            first_id   bigint PRIMARY KEY,
            last_id    bigint NOT NULL,
            count      integer NOT NULL,
            replica    text NOT NULL,
            created_at timestamptz NOT NULL,
            payload    bytea NOT NULL,
            CONSTRAINT live_event_batch_check CHECK (count >= 1 AND last_id = first_id + count - 1)
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX live_event_batch_last_id_idx ON live_event_batch (last_id)")
    op.execute("ALTER TABLE live_event_batch ALTER COLUMN payload SET STORAGE EXTERNAL")
    op.execute(f"REVOKE ALL ON live_event_batch FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON live_event_batch TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS live_event_batch")
