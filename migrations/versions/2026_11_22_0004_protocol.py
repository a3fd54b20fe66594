"""Protocol: released recipes, culture runs from a recipe, recorded steps, deviations, idempotent replies.

- recipe: a released protocol recipe (key, version, validated content as jsonb, content hash, who released
  it and when). Immutable: a trigger rejects UPDATE and DELETE, even for the owner, and the service role
  keeps only SELECT and INSERT on it.
- culture_run: gains the recipe, donor and patient, the dose target, the planned HSCT and T0, vessels, the
  reasons of a hold or an abort, and who created it (all NULL-able: older rows stay valid).
- step_record: one row per recorded step of a run (unique run + step), with the service clock's time.
- deviation, deviation_comment: deviations of a run and the comments on them.
- idempotency_key: the first answer to a request sent with an Idempotency-Key, per principal.

The service role culturectl_app gets DML on the new tables through the default privileges of 0003.

Revision ID: 20261122_0004
Revises: 20261121_0003
Create Date: 2026-11-22 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261122_0004"
down_revision: str | None = "20261121_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "culturectl_app"

RUN_COLUMNS = (
    ("recipe_id", "bigint NULL REFERENCES recipe (id)"),
    ("donor_id", "text NULL"),
    ("patient_id", "text NULL"),
    ("patient_weight_kg", "double precision NULL"),
    ("target_dose_per_kg", "double precision NULL"),
    ("cell_source", "text NULL CHECK (cell_source IN ('mobilized', 'cord'))"),
    ("hsct_at", "timestamptz NULL"),
    ("planned_t0", "timestamptz NULL"),
    ("vessel_ids", "text[] NOT NULL DEFAULT '{}'"),
    ("hold_reason", "text NULL"),
    ("abort_reason", "text NULL"),
    ("created_by", "text NULL"),
)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE recipe (
            id           bigserial PRIMARY KEY,
            key          text NOT NULL,
            version      int NOT NULL CHECK (version >= 1),
            title        text NOT NULL,
            content      jsonb NOT NULL,
            content_hash char(64) NOT NULL,
            released_at  timestamptz NOT NULL DEFAULT now(),
            released_by  text NOT NULL,
            UNIQUE (key, version)
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION recipe_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'a released recipe is immutable: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'release a new version of the recipe instead';
        END
        $$
        """
    )
    op.execute("CREATE TRIGGER recipe_immutable BEFORE UPDATE OR DELETE ON recipe "
               "FOR EACH ROW EXECUTE FUNCTION recipe_reject_change()")
    op.execute("CREATE TRIGGER recipe_no_truncate BEFORE TRUNCATE ON recipe "
               "FOR EACH STATEMENT EXECUTE FUNCTION recipe_reject_change()")
    for name, spec in RUN_COLUMNS:
        op.execute(f"ALTER TABLE culture_run ADD COLUMN {name} {spec}")
    op.execute(
        """
        CREATE TABLE step_record (
            id              bigserial PRIMARY KEY,
            run_id          bigint NOT NULL REFERENCES culture_run (id),
            step_key        text NOT NULL,
            posted_at       timestamptz NOT NULL,
            inputs          jsonb NOT NULL,
            actor_kind      text NOT NULL,
            actor_id        bigint NULL,
            actor_name      text NOT NULL,
            actor_role      text NOT NULL,
            override        boolean NOT NULL DEFAULT false,
            override_reason text NULL,
            deviation_ids   bigint[] NOT NULL DEFAULT '{}',
            dose            jsonb NULL,
            UNIQUE (run_id, step_key),
            CHECK (NOT override OR override_reason IS NOT NULL)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE deviation (
            id           bigserial PRIMARY KEY,
            run_id       bigint NOT NULL REFERENCES culture_run (id),
            step_key     text NULL,
            rule         text NOT NULL,
            severity     text NOT NULL,
            description  text NOT NULL,
            facts        jsonb NULL,
            opened_at    timestamptz NOT NULL,
            opened_by    text NOT NULL,
            status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
            closed_at    timestamptz NULL,
            closed_by    text NULL,
            close_reason text NULL,
            CHECK ((status = 'open') = (closed_at IS NULL))
        )
        """
    )
    op.execute("CREATE INDEX deviation_run_idx ON deviation (run_id, status)")
    op.execute(
        """
        CREATE TABLE deviation_comment (
            id           bigserial PRIMARY KEY,
            deviation_id bigint NOT NULL REFERENCES deviation (id),
            at           timestamptz NOT NULL DEFAULT now(),
            author       text NOT NULL,
            text         text NOT NULL
        )
        """
    )
    op.execute(
        """
        CREATE TABLE idempotency_key (
            principal   text NOT NULL,
            key         text NOT NULL,
            method      text NOT NULL,
            path        text NOT NULL,
            body_hash   char(64) NOT NULL,
            status      int NOT NULL,
            response    jsonb NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (principal, key)
        )
        """
    )
    # The default privileges of 0003 gave the service role DML on the new tables; a released recipe and its
    # comments are insert-only (the trigger refuses changes anyway; this keeps the grants honest).
    op.execute(f"REVOKE UPDATE, DELETE ON recipe, deviation_comment FROM {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS idempotency_key")
    op.execute("DROP TABLE IF EXISTS deviation_comment")
    op.execute("DROP TABLE IF EXISTS deviation")
    op.execute("DROP TABLE IF EXISTS step_record")
    for name, _ in reversed(RUN_COLUMNS):
        op.execute(f"ALTER TABLE culture_run DROP COLUMN IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS recipe")
    op.execute("DROP FUNCTION IF EXISTS recipe_reject_change()")
