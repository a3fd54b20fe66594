"""Audit trail (append-only, hash-chained), e-signatures, and the service's database role.

- audit_log: one row per state change; a trigger rejects UPDATE, DELETE and TRUNCATE (even for the
  owner); an insert trigger accepts a row only when it extends the chain head (audit_head) by exactly
  one seq with the head's hash as prev_hash, and moves the head.
- signature: e-signatures (21 CFR 11.50/11.70): signer, printed name, meaning, UTC time and the
  SHA-256 of the canonical JSON of the record version signed. Append-only like audit_log.
- culturectl_app: a NOLOGIN role the service switches to (SET ROLE) on every connection. It gets
  SELECT/INSERT/UPDATE/DELETE on the tables and sequences of this schema (also those later migrations
  create, through default privileges) but only SELECT, INSERT on audit_log and signature, and SELECT on
  audit_head. Roles are cluster-wide: it is created when missing and dropped on downgrade only when no
  other database still grants it anything.

Revision ID: 20261121_0003
Revises: 20261121_0002
Create Date: 2026-11-21 11:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261121_0003"
down_revision: str | None = "20261121_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "culturectl_app"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_log (
            seq         bigint PRIMARY KEY CHECK (seq > 0),
            at          timestamptz NOT NULL,
            actor_kind  text NOT NULL CHECK (actor_kind IN ('user', 'apikey', 'system')),
            actor_id    bigint NULL,
            actor_name  text NOT NULL,
            actor_role  text NOT NULL,
            action      text NOT NULL CHECK (action ~ '^[a-z_]+\\.[a-z_.]+$'),
            entity_type text NOT NULL,
            entity_id   text NULL,
            old         jsonb NULL,
            new         jsonb NULL,
            reason      text NULL,
            client      text NULL,
            prev_hash   char(64) NOT NULL,
            hash        char(64) NOT NULL UNIQUE
        )
        """
    )
    op.execute("CREATE INDEX audit_log_entity_idx ON audit_log (entity_type, entity_id, seq)")
    op.execute("CREATE INDEX audit_log_actor_idx ON audit_log (actor_name, seq)")
    op.execute("CREATE INDEX audit_log_at_idx ON audit_log (at)")
    op.execute(
        """
        CREATE TABLE audit_head (
            one  boolean PRIMARY KEY DEFAULT true CHECK (one),
            seq  bigint NOT NULL,
            hash char(64) NOT NULL
        )
        """
    )
    op.execute("INSERT INTO audit_head (seq, hash) VALUES (0, repeat('0', 64))")

    op.execute(
        """
        CREATE FUNCTION audit_log_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'audit records are permanent (21 CFR 11.10(e)); record a correction instead';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_reject_change()
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change()
        """
    )
    # SECURITY DEFINER: the service's role cannot write audit_head itself; only this trigger moves it.
    op.execute(
        """
        CREATE FUNCTION audit_log_extend_head() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path FROM CURRENT AS $$
        DECLARE
            h record;
        BEGIN
            SELECT seq, hash INTO h FROM audit_head FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'audit_head is missing' USING ERRCODE = 'data_corrupted';
            END IF;
            IF NEW.seq <> h.seq + 1 OR NEW.prev_hash <> h.hash THEN
                RAISE EXCEPTION 'audit chain: row seq % does not extend the head (seq %)', NEW.seq, h.seq
                    USING ERRCODE = 'serialization_failure';
            END IF;
            IF NEW.at > clock_timestamp() OR NEW.at < clock_timestamp() - interval '1 minute' THEN
                RAISE EXCEPTION 'audit chain: row time % is not the server''s current time', NEW.at
                    USING ERRCODE = 'check_violation';
            END IF;
            UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_extend_head()
        """
    )
    op.execute("REVOKE ALL ON FUNCTION audit_log_extend_head() FROM PUBLIC")

    op.execute(
        """
        CREATE TABLE signature (
            id             bigserial PRIMARY KEY,
            entity_type    text NOT NULL,
            entity_id      text NOT NULL,
            meaning        text NOT NULL CHECK (meaning IN ('performed', 'verified', 'reviewed', 'approved')),
            signer_user_id bigint NOT NULL,
            signer_name    text NOT NULL,
            printed_name   text NOT NULL,
            signer_role    text NOT NULL,
            signed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            record_hash    char(64) NOT NULL,
            comment        text NULL
        )
        """
    )
    op.execute("CREATE INDEX signature_entity_idx ON signature (entity_type, entity_id, id)")
    op.execute(
        """
        CREATE FUNCTION signature_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'signatures are permanent: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER signature_no_update_delete BEFORE UPDATE OR DELETE ON signature
        FOR EACH ROW EXECUTE FUNCTION signature_reject_change()
        """
    )
    op.execute(
        """
        CREATE TRIGGER signature_no_truncate BEFORE TRUNCATE ON signature
        FOR EACH STATEMENT EXECUTE FUNCTION signature_reject_change()
        """
    )
    _create_app_role()


def _create_app_role() -> None:
    # Cluster-wide: another database on the same server may have created it already, maybe right now.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                BEGIN
                    CREATE ROLE {APP_ROLE} NOLOGIN;
                EXCEPTION WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- created concurrently by a migration of another database
                END;
            END IF;
            -- The migrating (owner) role must be able to SET ROLE to it; superusers always can.
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               AND NOT pg_has_role(current_user, '{APP_ROLE}', 'MEMBER') THEN
                EXECUTE format('GRANT {APP_ROLE} TO %I', current_user);
            END IF;
            EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO {APP_ROLE}', current_database());
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {APP_ROLE}', current_schema());
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO {APP_ROLE}',
                           current_schema());
            EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO {APP_ROLE}',
                           current_schema());
            -- tables and sequences later migrations create (as this same owner)
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                           'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}', current_schema());
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                           'GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {APP_ROLE}', current_schema());
        END
        $$
        """
    )
    # The records: append-only for the service.
    op.execute(f"REVOKE ALL ON audit_log, signature, audit_head FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON audit_log, signature TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON audit_head TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON SEQUENCE signature_id_seq TO {APP_ROLE}")
    op.execute(f"REVOKE UPDATE ON SEQUENCE signature_id_seq FROM {APP_ROLE}")


def downgrade() -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                               'REVOKE ALL ON TABLES FROM {APP_ROLE}', current_schema());
                EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                               'REVOKE ALL ON SEQUENCES FROM {APP_ROLE}', current_schema());
                EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {APP_ROLE}', current_schema());
                EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM {APP_ROLE}', current_schema());
                EXECUTE format('REVOKE ALL ON SCHEMA %I FROM {APP_ROLE}', current_schema());
                EXECUTE format('REVOKE ALL ON DATABASE %I FROM {APP_ROLE}', current_database());
            END IF;
        END
        $$
        """
    )
    op.execute("DROP TABLE IF EXISTS signature")
    op.execute("DROP FUNCTION IF EXISTS signature_reject_change()")
    op.execute("DROP TABLE IF EXISTS audit_log")
    op.execute("DROP FUNCTION IF EXISTS audit_log_extend_head()")
    op.execute("DROP FUNCTION IF EXISTS audit_log_reject_change()")
    op.execute("DROP TABLE IF EXISTS audit_head")
    # Other databases on this server may still use the role: then it stays.
    op.execute(
        f"""
        DO $$
        BEGIN
            DROP ROLE IF EXISTS {APP_ROLE};
        EXCEPTION WHEN dependent_objects_still_exist THEN
            NULL;
        END
        $$
        """
    )
