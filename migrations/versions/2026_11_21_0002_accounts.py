"""Accounts: users (Argon2id password hashes, lockout), API keys (SHA-256 of the secret), sessions (revocable JWTs).

Revision ID: 20261121_0002
Revises: 20261121_0001
Create Date: 2026-11-21 12:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261121_0002"
down_revision: str | None = "20261121_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = "('operator', 'supervisor', 'qa', 'automation', 'admin')"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE users (
            id                  integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            username            text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{{1,62}}$'),
            display_name        text NOT NULL CHECK (length(btrim(display_name)) > 0),
            role                text NOT NULL CHECK (role IN {ROLES}),
            password_hash       text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
            disabled            boolean NOT NULL DEFAULT false,
            failed_logins       integer NOT NULL DEFAULT 0 CHECK (failed_logins >= 0),
            locked_at           timestamptz,
            password_changed_at timestamptz NOT NULL DEFAULT now(),
            created_at          timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE api_keys (
            id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name         text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{{1,62}}$'),
            role         text NOT NULL CHECK (role IN {ROLES}),
            prefix       text NOT NULL UNIQUE CHECK (prefix ~ '^[0-9a-f]{{8}}$'),
            secret_hash  text NOT NULL CHECK (secret_hash ~ '^[0-9a-f]{{64}}$'),
            created_by   integer REFERENCES users (id),
            created_at   timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz,
            revoked_at   timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE sessions (
            jti        text PRIMARY KEY,
            user_id    integer NOT NULL REFERENCES users (id),
            issued_at  timestamptz NOT NULL,
            expires_at timestamptz NOT NULL CHECK (expires_at > issued_at),
            revoked_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX sessions_user_open ON sessions (user_id) WHERE revoked_at IS NULL")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS sessions")
    op.execute("DROP TABLE IF EXISTS api_keys")
    op.execute("DROP TABLE IF EXISTS users")
