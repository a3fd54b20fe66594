"""The process as a GMP site runs it: identity and vessels of a run, lots and provenance of a step, corrections,
the dose decision, QC results with their own status, and cell-counter imports.

- culture_run: transplant type, arm (adult, paediatric), the graft's ISBT 128 donation identification number,
  and typed vessels (id, type, DL-4 area, incubator) as JSON. Existing runs keep NULL (recipe v1).
- step_record: the lot and expiry of each reagent the step used, and where each input came from (typed, or a
  counter import).
- step_correction: a supervisor's signed correction of a recorded step's inputs (insert-only; the original
  record never changes).
- dose_decision: QA's signed decision when the harvest cannot reach the target (lower studied dose level, or out
  of specification); at most one per run, insert-only.
- qc_result: one row per QC test of a run: pending when its sample is taken, then reported with its outcome.
- count_import: a cell counter's result export imported for a step: file name, SHA-256, instrument, values.

Revision ID: 20261201_0010
Revises: 20261201_0009
Create Date: 2026-12-01 12:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0010"
down_revision: str | None = "20261201_0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "culturectl_app"


def upgrade() -> None:
    op.execute("ALTER TABLE culture_run ADD COLUMN transplant_type text "
               "CHECK (transplant_type IN ('t_cell_depleted', 'ptcy_hla_mismatched', 'haploidentical')), "
               "ADD COLUMN arm text CHECK (arm IN ('adult', 'paediatric')), "
               "ADD COLUMN graft_din text, ADD COLUMN vessels jsonb")
    op.execute("ALTER TABLE step_record ADD COLUMN lots jsonb, ADD COLUMN provenance jsonb")
    op.execute(
        """
        CREATE TABLE step_correction (
            id             bigserial PRIMARY KEY,
            step_record_id bigint NOT NULL REFERENCES step_record (id),
            run_id         bigint NOT NULL REFERENCES culture_run (id),
            step_key       text NOT NULL,
            corrected_at   timestamptz NOT NULL,
            before         jsonb NOT NULL,
            after          jsonb NOT NULL,
            reason         text NOT NULL,
            actor_id       bigint NULL,
            actor_name     text NOT NULL,
            deviation_ids  bigint[] NOT NULL DEFAULT '{}',
            dose           jsonb NULL
        )
        """
    )
    op.execute("CREATE INDEX step_correction_record_idx ON step_correction (step_record_id, id)")
    op.execute(
        """
        CREATE TABLE dose_decision (
            id          bigserial PRIMARY KEY,
            run_id      bigint NOT NULL REFERENCES culture_run (id) UNIQUE,
            decision    text NOT NULL CHECK (decision IN ('lower_dose', 'out_of_specification')),
            dose_per_kg double precision NULL,
            reason      text NOT NULL,
            decided_at  timestamptz NOT NULL,
            decided_by  text NOT NULL,
            CHECK ((decision = 'lower_dose') = (dose_per_kg IS NOT NULL))
        )
        """
    )
    op.execute(
        """
        CREATE TABLE qc_result (
            id          bigserial PRIMARY KEY,
            run_id      bigint NOT NULL REFERENCES culture_run (id),
            test        text NOT NULL,
            status      text NOT NULL CHECK (status IN ('pending', 'reported')),
            sampled_at  timestamptz NOT NULL,
            step_key    text NOT NULL,
            result      jsonb NULL,
            passed      boolean NULL,
            reported_at timestamptz NULL,
            reported_by text NULL,
            UNIQUE (run_id, test),
            CHECK ((status = 'reported') = (reported_at IS NOT NULL))
        )
        """
    )
    op.execute(
        """
        CREATE TABLE count_import (
            id            bigserial PRIMARY KEY,
            run_id        bigint NOT NULL REFERENCES culture_run (id),
            step_key      text NOT NULL,
            filename      text NOT NULL,
            sha256        char(64) NOT NULL,
            format        text NOT NULL,
            instrument_id text NOT NULL,
            sample_id     text NOT NULL,
            "values"      jsonb NOT NULL,
            imported_at   timestamptz NOT NULL,
            imported_by   text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX count_import_run_idx ON count_import (run_id, step_key)")
    # Corrections, decisions and imports are records: insert-only for the service (a change is a new row).
    op.execute(f"REVOKE UPDATE, DELETE ON step_correction, dose_decision, count_import FROM {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS count_import")
    op.execute("DROP TABLE IF EXISTS qc_result")
    op.execute("DROP TABLE IF EXISTS dose_decision")
    op.execute("DROP TABLE IF EXISTS step_correction")
    op.execute("ALTER TABLE step_record DROP COLUMN IF EXISTS lots, DROP COLUMN IF EXISTS provenance")
    op.execute("ALTER TABLE culture_run DROP COLUMN IF EXISTS transplant_type, DROP COLUMN IF EXISTS arm, "
               "DROP COLUMN IF EXISTS graft_din, DROP COLUMN IF EXISTS vessels")
