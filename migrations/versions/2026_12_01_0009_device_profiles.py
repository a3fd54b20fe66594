"""Device profiles: a device records the profile (name and version) it runs with; a channel the role it plays.

Existing databases keep their devices, channels and history: the columns are added empty and filled by the
service's next device sync (the shipped simulator profiles keep every point's name, so every channel keeps its
id). A channel whose point left the profile keeps its row and history, with no role.

Revision ID: 20261201_0009
Revises: 20261201_0008
Create Date: 2026-12-01 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0009"
down_revision: str | None = "20261201_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE device ADD COLUMN profile text, ADD COLUMN profile_version text")
    op.execute("ALTER TABLE channel ADD COLUMN role text")
    # one point per role and device: the alarms, charts and the run binding find a role's channel by it
    op.execute("CREATE UNIQUE INDEX channel_device_role_key ON channel (device_id, role) WHERE role IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX channel_device_role_key")
    op.execute("ALTER TABLE channel DROP COLUMN role")
    op.execute("ALTER TABLE device DROP COLUMN profile, DROP COLUMN profile_version")
