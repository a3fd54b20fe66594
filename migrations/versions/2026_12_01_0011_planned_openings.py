"""Planned door openings.

- door_opening: one row per door opening a recipe step planned (a `door_opening` with its expected recovery), for
  the batch record: the run and step, when the door opened and (last) shut, when temperature and CO2 were back
  inside their alarm limits, when the plan was exceeded and why, the lowest temperature and CO2, the outcome
  (planned: inside its stated recovery; exceeded: a `door_recovery` deviation was opened) and the stated
  recovery as JSON. The alarm service writes it (app/alarms/journal.py) and updates it as the opening goes on; a
  replay from the spool never overwrites a newer state. Rows are not deleted by the service.

Revision ID: 20261201_0011
Revises: 20261201_0010
Create Date: 2026-12-01 13:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0011"
down_revision: str | None = "20261201_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "culturectl_app"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE door_opening (
            id              bigserial PRIMARY KEY,
            run_id          bigint NOT NULL REFERENCES culture_run (id),
            device          text NOT NULL,
            step_key        text NOT NULL,
            opened_at       timestamptz NOT NULL,
            closed_at       timestamptz NULL,
            recovered_at    timestamptz NULL,
            exceeded_at     timestamptz NULL,
            min_temperature double precision NULL,
            min_co2         double precision NULL,
            outcome         text NOT NULL CONSTRAINT door_opening_outcome_check
                                CHECK (outcome IN ('planned', 'exceeded')),
            reason          text NULL,
            planned         jsonb NOT NULL,
            updated_at      timestamptz NOT NULL,
            CONSTRAINT door_opening_device_opened_at_key UNIQUE (device, opened_at)
        )
        """
    )
    op.execute("CREATE INDEX door_opening_run_idx ON door_opening (run_id, opened_at)")
    # A record of the batch: the service updates a row as its opening goes on, it never deletes one.
    op.execute(f"REVOKE DELETE, TRUNCATE ON door_opening FROM {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS door_opening")
