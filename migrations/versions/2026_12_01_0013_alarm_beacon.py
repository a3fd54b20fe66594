"""Setpoint commands of the alarm beacon.

- setpoint_command.source takes 'alarm' besides 'api' and 'recipe': the alarm service switches a device's
  `alarm_beacon` point on while a high-priority alarm is unacknowledged, through the one supervised write path
  (app/alarms/beacon.py), and each switch is recorded and audited like any setpoint command.

The downgrade refuses while 'alarm' commands are recorded: they are records, it does not delete them.

Revision ID: 20261201_0013
Revises: 20261201_0012
Create Date: 2026-12-01 16:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0013"
down_revision: str | None = "20261201_0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE setpoint_command DROP CONSTRAINT setpoint_command_source_check")
    op.execute("ALTER TABLE setpoint_command ADD CONSTRAINT setpoint_command_source_check "
               "CHECK (source IN ('api', 'recipe', 'alarm'))")


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM setpoint_command WHERE source = 'alarm') THEN
                RAISE EXCEPTION 'setpoint_command holds alarm beacon commands; they are records and are not '
                                'deleted by a downgrade';
            END IF;
        END $$
        """
    )
    op.execute("ALTER TABLE setpoint_command DROP CONSTRAINT setpoint_command_source_check")
    op.execute("ALTER TABLE setpoint_command ADD CONSTRAINT setpoint_command_source_check "
               "CHECK (source IN ('api', 'recipe'))")
