"""Engine state: the status of each step of each run as the engine last persisted it.

- step_status: one row per run and step (unique), the status the schedule engine last saw (pending, open, due,
  late, missed, skipped, done), when it changed (service clock) and the step's absolute window then. The engine
  compares the planner's statuses with these rows, so a restart recomputes from them and never repeats a
  transition, a missed-step deviation or a hold.

The service role culturectl_app gets DML on the new table through the default privileges of 0003.

Revision ID: 20261122_0005
Revises: 20261122_0004
Create Date: 2026-11-22 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261122_0005"
down_revision: str | None = "20261122_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE step_status (
            run_id      bigint NOT NULL REFERENCES culture_run (id),
            step_key    text NOT NULL,
            status      text NOT NULL CHECK (status IN ('pending', 'open', 'due', 'late', 'missed', 'skipped',
                                                        'done')),
            changed_at  timestamptz NOT NULL,
            "window"    jsonb NOT NULL,
            PRIMARY KEY (run_id, step_key)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS step_status")
