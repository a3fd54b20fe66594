"""Replicas and their leases: which replica owns each device and which one leads.

- cluster_replica: one row per service replica that has run against this database (its id, the URL its peers
  reach it at, when it started, when it was last seen, whether it is stopping). A replica is live while it was
  seen within its lease time.
- cluster_lease: one row per lease (`device:<name>` for each configured device, `leader` for the site-wide jobs):
  its holder, its epoch (the fencing token, raised on every change of holder) and when it expires; for a device,
  its connection state and since when, as its holder last said (every replica shows it from here). Expiry is
  the database's clock, so replicas' clocks never have to agree.

Revision ID: 20261201_0015
Revises: 20261201_0014
Create Date: 2026-12-01 18:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0015"
down_revision: str | None = "20261201_0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE cluster_replica (
            id         text PRIMARY KEY,
            url        text NOT NULL,
            started_at timestamptz NOT NULL,
            seen_at    timestamptz NOT NULL,
            stopping   boolean NOT NULL DEFAULT false
        )
        """
    )
    op.execute(
        """
        CREATE TABLE cluster_lease (
            name        text PRIMARY KEY,
            holder      text NULL,
            epoch       bigint NOT NULL DEFAULT 0,
            expires_at  timestamptz NULL,
            acquired_at timestamptz NULL,
            renewed_at  timestamptz NULL,
            state       text NULL,
            state_since timestamptz NULL,
            CONSTRAINT cluster_lease_check CHECK ((holder IS NULL) = (expires_at IS NULL))
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS cluster_lease")
    op.execute("DROP TABLE IF EXISTS cluster_replica")
