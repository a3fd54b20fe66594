"""The batch record: QA's reviews of its exceptions, its issued (frozen) versions, and a deviation's assessment.

- deviation: QA's classification (minor, major, critical), the impact assessment and the actions, given when the
  deviation is closed (NULL for deviations closed before, and while open).
- record_review: QA's review of one exception of a run's batch record (its key and the fingerprint of what it
  showed), with a comment; signed (meaning reviewed, in `signature`). Insert-only: a newer review of the same
  exception supersedes an older one.
- batch_record_version: a run's record as issued: number 1 at release (its `signed_hash` is the content hash the
  release signature signed), then one more version, pointing to the previous one, each time the run's record
  changes after release. The JSON and the PDF as issued, the content hash, the audit chain head at issue.
  Permanent: a trigger refuses UPDATE, DELETE and TRUNCATE, like the audit trail.

Revision ID: 20261201_0014
Revises: 20261201_0013
Create Date: 2026-12-01 17:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0014"
down_revision: str | None = "20261201_0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "culturectl_app"


def upgrade() -> None:
    op.execute("ALTER TABLE deviation ADD COLUMN classification text CONSTRAINT deviation_classification_check "
               "CHECK (classification IN ('minor', 'major', 'critical')), ADD COLUMN impact text, "
               "ADD COLUMN actions text")
    op.execute(
        """
        CREATE TABLE record_review (
            id            bigserial PRIMARY KEY,
            run_id        bigint NOT NULL REFERENCES culture_run (id),
            exception_key text NOT NULL,
            fingerprint   char(64) NOT NULL,
            comment       text NOT NULL,
            reviewed_by   text NOT NULL,
            reviewed_at   timestamptz NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX record_review_run_idx ON record_review (run_id, exception_key, id)")
    op.execute(
        """
        CREATE TABLE batch_record_version (
            id           bigserial PRIMARY KEY,
            run_id       bigint NOT NULL REFERENCES culture_run (id),
            number       integer NOT NULL CONSTRAINT batch_record_version_number_check CHECK (number >= 1),
            previous     integer NULL,
            content_hash char(64) NOT NULL,
            signed_hash  char(64) NULL,
            record       jsonb NOT NULL,
            pdf          bytea NOT NULL,
            issued_at    timestamptz NOT NULL,
            issued_by    text NOT NULL,
            reason       text NOT NULL,
            chain_seq    bigint NOT NULL,
            chain_hash   char(64) NOT NULL,
            CONSTRAINT batch_record_version_run_id_number_key UNIQUE (run_id, number),
            CONSTRAINT batch_record_version_check CHECK ((number = 1) = (previous IS NULL))
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION batch_record_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'an issued batch record is permanent: % is not allowed (issue a new version)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute("CREATE TRIGGER batch_record_version_no_update_delete BEFORE UPDATE OR DELETE ON batch_record_version "
               "FOR EACH ROW EXECUTE FUNCTION batch_record_reject_change()")
    op.execute("CREATE TRIGGER batch_record_version_no_truncate BEFORE TRUNCATE ON batch_record_version "
               "FOR EACH STATEMENT EXECUTE FUNCTION batch_record_reject_change()")
    op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON record_review, batch_record_version FROM {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS batch_record_version")
    op.execute("DROP FUNCTION IF EXISTS batch_record_reject_change()")
    op.execute("DROP TABLE IF EXISTS record_review")
    op.execute("ALTER TABLE deviation DROP COLUMN IF EXISTS actions, DROP COLUMN IF EXISTS impact, "
               "DROP COLUMN IF EXISTS classification")
