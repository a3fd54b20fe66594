"""Notifications that reach a person, and calibration records of device points.

- notification_policy: the notification rules and on-call rotas as one versioned document (JSON); a change is a
  new version (insert-only), audited. The newest version is in force.
- oncall_override: a holiday or a swap: who is on call for a rota between two instants, instead of the rota's
  shifts; revoked, never deleted.
- contact_point: how a user is reached (email, SMS, voice, webhook), with its last test send; disabled, never
  deleted (deliveries refer to it).
- notification_episode: one activation of an alarm that a notification rule matched, from its activation to its
  acknowledgement, return, shelving ... (at most one open per alarm).
- notification: the outbox. One row per planned notice of an episode (tier, repeat, acknowledgement or return
  notice), written in the same transaction as the alarm transition that plans it; pending until due, then
  expanded into deliveries by one sender, or cancelled (acknowledged, returned, shelved ...).
- notification_delivery: one notice to one contact point: its status, attempts, next attempt, the sender's claim
  and the hash of its single-use acknowledgement link.
- notification_attempt: every attempt of a delivery and its result (insert-only).
- calibration: the calibration records of a device point (date, due date, certificate, who); insert-only, the
  newest record of a point is in force.

Revision ID: 20261201_0012
Revises: 20261201_0011
Create Date: 2026-12-01 15:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261201_0012"
down_revision: str | None = "20261201_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "culturectl_app"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE notification_policy (
            version      integer PRIMARY KEY CONSTRAINT notification_policy_version_check CHECK (version >= 1),
            content      jsonb NOT NULL,
            content_hash char(64) NOT NULL,
            created_by   text NOT NULL,
            created_at   timestamptz NOT NULL,
            reason       text NOT NULL
        )
        """
    )
    op.execute(
        """
        CREATE TABLE oncall_override (
            id         bigserial PRIMARY KEY,
            rota       text NOT NULL,
            starts_at  timestamptz NOT NULL,
            ends_at    timestamptz NOT NULL,
            users      text[] NOT NULL,
            reason     text NOT NULL,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL,
            revoked_at timestamptz NULL,
            revoked_by text NULL,
            CONSTRAINT oncall_override_check CHECK (ends_at > starts_at)
        )
        """
    )
    op.execute("CREATE INDEX oncall_override_rota_idx ON oncall_override (rota, starts_at, ends_at)")
    op.execute(
        """
        CREATE TABLE contact_point (
            id               bigserial PRIMARY KEY,
            username         text NOT NULL REFERENCES users (username),
            kind             text NOT NULL CONSTRAINT contact_point_kind_check
                                 CHECK (kind IN ('email', 'sms', 'voice', 'webhook')),
            address          text NOT NULL,
            format           text NOT NULL DEFAULT 'generic',
            label            text NOT NULL DEFAULT '',
            enabled          boolean NOT NULL DEFAULT true,
            created_at       timestamptz NOT NULL,
            updated_at       timestamptz NOT NULL,
            last_test_at     timestamptz NULL,
            last_test_result text NULL,
            CONSTRAINT contact_point_username_kind_address_key UNIQUE (username, kind, address)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE notification_episode (
            id             bigserial PRIMARY KEY,
            alarm_id       text NOT NULL REFERENCES alarm (id),
            started_at     timestamptz NOT NULL,
            priority       text NOT NULL,
            rule           text NOT NULL,
            policy_version integer NOT NULL,
            summary        text NOT NULL,
            closed_at      timestamptz NULL,
            closed_reason  text NULL,
            record_key     uuid NOT NULL,
            CONSTRAINT notification_episode_record_key_key UNIQUE (record_key)
        )
        """
    )
    # One open episode per alarm: a second replica that saw the same activation adds nothing.
    op.execute("CREATE UNIQUE INDEX notification_episode_open_idx ON notification_episode (alarm_id) "
               "WHERE closed_at IS NULL")
    op.execute(
        """
        CREATE TABLE notification (
            id         bigserial PRIMARY KEY,
            episode_id bigint NOT NULL REFERENCES notification_episode (id),
            alarm_id   text NOT NULL REFERENCES alarm (id),
            kind       text NOT NULL CONSTRAINT notification_kind_check
                           CHECK (kind IN ('alert', 'acknowledged', 'returned')),
            tier       smallint NOT NULL,
            repeat     smallint NOT NULL,
            due_at     timestamptz NOT NULL,
            status     text NOT NULL CONSTRAINT notification_status_check
                           CHECK (status IN ('pending', 'expanded', 'cancelled')),
            detail     text NULL,
            created_at timestamptz NOT NULL,
            settled_at timestamptz NULL,
            CONSTRAINT notification_episode_id_kind_tier_repeat_key UNIQUE (episode_id, kind, tier, repeat)
        )
        """
    )
    op.execute("CREATE INDEX notification_due_idx ON notification (due_at) WHERE status = 'pending'")
    op.execute("CREATE INDEX notification_alarm_idx ON notification (alarm_id, id)")
    op.execute(
        """
        CREATE TABLE notification_delivery (
            id               bigserial PRIMARY KEY,
            notification_id  bigint NULL REFERENCES notification (id),
            contact_point_id bigint NOT NULL REFERENCES contact_point (id),
            username         text NOT NULL,
            channel          text NOT NULL,
            status           text NOT NULL CONSTRAINT notification_delivery_status_check
                                 CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
            attempts         integer NOT NULL DEFAULT 0,
            next_attempt_at  timestamptz NOT NULL,
            claimed_by       text NULL,
            claimed_until    timestamptz NULL,
            sent_at          timestamptz NULL,
            last_error       text NULL,
            ack_token_hash   char(64) NULL,
            ack_expires_at   timestamptz NULL,
            ack_used_at      timestamptz NULL,
            created_at       timestamptz NOT NULL,
            CONSTRAINT notification_delivery_notification_id_contact_point_id_key
                UNIQUE (notification_id, contact_point_id),
            CONSTRAINT notification_delivery_ack_token_hash_key UNIQUE (ack_token_hash)
        )
        """
    )
    op.execute("CREATE INDEX notification_delivery_due_idx ON notification_delivery (next_attempt_at) "
               "WHERE status = 'pending'")
    op.execute(
        """
        CREATE TABLE notification_attempt (
            id          bigserial PRIMARY KEY,
            delivery_id bigint NOT NULL REFERENCES notification_delivery (id),
            attempt     integer NOT NULL,
            started_at  timestamptz NOT NULL,
            finished_at timestamptz NOT NULL,
            ok          boolean NOT NULL,
            detail      text NULL,
            replica     text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX notification_attempt_delivery_idx ON notification_attempt (delivery_id, attempt)")
    op.execute(
        """
        CREATE TABLE calibration (
            id            bigserial PRIMARY KEY,
            device        text NOT NULL REFERENCES device (name),
            point         text NOT NULL,
            calibrated_on date NOT NULL,
            due_on        date NOT NULL,
            certificate   text NOT NULL,
            performed_by  text NOT NULL,
            recorded_by   text NOT NULL,
            recorded_at   timestamptz NOT NULL,
            CONSTRAINT calibration_check CHECK (due_on > calibrated_on)
        )
        """
    )
    op.execute("CREATE INDEX calibration_point_idx ON calibration (device, point, id)")
    # Records: a policy version, an attempt and a calibration are never changed or deleted; the rest is settled or
    # revoked in place, never deleted.
    op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON notification_policy, notification_attempt, calibration "
               f"FROM {APP_ROLE}")
    op.execute(f"REVOKE DELETE, TRUNCATE ON oncall_override, contact_point, notification_episode, notification, "
               f"notification_delivery FROM {APP_ROLE}")


def downgrade() -> None:
    for table in ("calibration", "notification_attempt", "notification_delivery", "notification",
                  "notification_episode", "contact_point", "oncall_override", "notification_policy"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
