"""Supervised control: every setpoint command accepted for writing, with its result.

- setpoint_command: one row per command that passed the checks (role, point limits, run state, rate of change,
  device state) and went to the device. It is inserted before the write with `result` NULL and updated once
  after it: confirmed (the read-back equals the request within the point's resolution), did_not_follow,
  timeout or failed; `previous` is the setpoint known before the write, `read_back` what the device reported.
  Times are service-clock times; `source` says whether a person or script (api) or the recipe engine (recipe)
  asked. Refused commands leave no row.

The service role culturectl_app gets DML on the new table through the default privileges of 0003.

Revision ID: 20261122_0006
Revises: 20261122_0005
Create Date: 2026-11-22 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261122_0006"
down_revision: str | None = "20261122_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE setpoint_command (
            id            bigserial PRIMARY KEY,
            device        text NOT NULL,
            point         text NOT NULL,
            run_id        bigint REFERENCES culture_run (id),
            requested     double precision NOT NULL,
            previous      double precision,
            read_back     double precision,
            result        text CHECK (result IN ('confirmed', 'did_not_follow', 'timeout', 'failed')),
            detail        text,
            actor         text NOT NULL,
            reason        text NOT NULL,
            requested_at  timestamptz NOT NULL,
            completed_at  timestamptz,
            source        text NOT NULL CHECK (source IN ('api', 'recipe'))
        )
        """
    )
    op.execute("CREATE INDEX setpoint_command_point ON setpoint_command (device, point, requested_at DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS setpoint_command")
