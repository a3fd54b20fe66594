"""Inactivity lock and password history: sessions.last_activity_at, password_history.

- sessions.last_activity_at: the last user action of the session (a page, an API call, the dashboard's activity
  heartbeat on pointer, key or touch input). Live traffic (the event stream, the fragments it re-fetches, token
  renewal) does not move it. A session idle beyond CULTURECTL_INACTIVITY_MINUTES refuses actions until its user
  gives the password again (POST /api/v1/auth/unlock). Existing sessions start from their login time.
- password_history: the hashes (Argon2id, as users.password_hash) of a user's previous passwords, newest last,
  written when a password is changed and pruned to what CULTURECTL_PASSWORD_HISTORY needs (app/auth/users.py).

Revision ID: 20261201_0017
Revises: 20261201_0016
Create Date: 2026-12-01 21:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0017"
down_revision: str | None = "20261201_0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE sessions ADD COLUMN last_activity_at timestamptz")
    op.execute("UPDATE sessions SET last_activity_at = issued_at")
    op.execute("ALTER TABLE sessions ALTER COLUMN last_activity_at SET DEFAULT now(), "
               "ALTER COLUMN last_activity_at SET NOT NULL")
    op.execute(
        """
        CREATE TABLE password_history (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id       integer NOT NULL REFERENCES users (id),
            password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
            retired_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX password_history_user_idx ON password_history (user_id, id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS password_history")
    op.execute("ALTER TABLE sessions DROP COLUMN IF EXISTS last_activity_at")
