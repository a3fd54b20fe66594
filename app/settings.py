"""Service settings, read from the environment with the prefix CULTURECTL_."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.clock import ScaledClock, utcnow


class Settings(BaseSettings):
    """Every setting has an environment variable CULTURECTL_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="CULTURECTL_", extra="forbid")

    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://... of an existing server; unset: an embedded PostgreSQL in data_dir",
    )
    data_dir: Path = Field(default=Path("./culturectl-data"), description="embedded database, spool, state")
    devices_file: Path | None = Field(default=None, description="devices YAML; unset: the bundled simulators")
    profiles_dir: Path | None = Field(default=None, description="the site's device profiles (*.yaml), besides the "
                                                                "shipped library")
    clock_epoch: datetime | None = Field(
        default=None, description="wall-clock instant the scaled clock is anchored at (UTC); unset: start-up"
    )
    clock_origin: datetime | None = Field(
        default=None, description="what the clock reads at clock_epoch; unset: clock_epoch itself"
    )
    time_scale: float = Field(default=1.0, gt=0, lt=1e7, description="clock seconds per wall second")
    host: str = Field(default="127.0.0.1", description="bind address of the HTTP service")
    port: int = Field(default=8000, ge=0, le=65535, description="bind port of the HTTP service")
    connect_devices: bool = Field(default=True, description="start a supervisor per device")
    ingest_buffer_size: int = Field(default=100_000, ge=100, description="readings held before overflow")
    ingest_batch_size: int = Field(default=5_000, ge=1, le=100_000, description="rows per COPY")
    ingest_flush_interval: float = Field(default=0.5, gt=0, le=60, description="wall seconds between flushes")
    max_points: int = Field(default=10_000, ge=10, description="most points one telemetry request returns")
    log_level: str = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR (at DEBUG the OPC UA and Modbus libraries log too)"
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="key that signs session tokens (HS256) and remote acknowledgement links; replicas must share it; "
                    "unset: generated once into data_dir/secret.key (0600)",
    )
    token_ttl_minutes: float = Field(default=15.0, gt=0, le=24 * 60, description="lifetime of a login token")
    session_max_hours: float = Field(default=12.0, gt=0, le=7 * 24,
                                     description="a login session may be renewed (POST /api/v1/auth/refresh) this long")
    cookie_secure: bool = Field(default=False, description="mark the session cookie Secure (set it behind HTTPS)")
    engine_enabled: bool = Field(default=True,
                                 description="run the schedule engine (step statuses, missed steps, setpoints)")
    engine_interval: float = Field(default=1.0, gt=0, le=60,
                                   description="wall seconds between schedule engine passes (at most 10 clock min)")
    lockout_threshold: int = Field(default=20, ge=1, le=100,
                                   description="consecutive failed password checks that lock a user (the last line "
                                               "behind the throttle)")
    lockout_unlock_minutes: float = Field(default=30.0, ge=0, le=7 * 24 * 60,
                                          description="a locked user unlocks by itself this many minutes after the "
                                                      "lock (at the next password check); 0: only an admin unlocks")
    login_throttle_after: int = Field(default=3, ge=0, le=1000,
                                      description="failed logins of one user name within throttle_window_s before "
                                                  "its next logins are slowed (429)")
    login_throttle_client_after: int = Field(default=10, ge=0, le=1000,
                                             description="failed logins from one client address within "
                                                         "throttle_window_s before its next logins are slowed (429)")
    signature_throttle_after: int = Field(default=3, ge=0, le=1000,
                                          description="failed password re-entries (signatures, password change) of "
                                                      "one user before the next are slowed (429)")
    signature_throttle_client_after: int = Field(default=10, ge=0, le=1000,
                                                 description="failed password re-entries from one client address "
                                                             "before the next are slowed (429)")
    throttle_delay_s: float = Field(default=1.0, gt=0, le=3600,
                                    description="wall seconds the first slowed attempt waits; doubled per further "
                                                "failure")
    throttle_max_delay_s: float = Field(default=300.0, gt=0, le=24 * 3600,
                                        description="longest wait between slowed attempts, wall seconds")
    throttle_window_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600,
                                     description="wall seconds a failed attempt counts toward the throttle")
    sse_max_streams_per_principal: int = Field(default=10, ge=1, le=10_000,
                                               description="open live streams (SSE) one user or API key may hold on "
                                                           "a replica")
    sse_max_streams: int = Field(default=200, ge=1, le=100_000,
                                 description="open live streams (SSE) a replica serves at most")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024 ** 3,
                                description="largest request body, bytes (413 beyond)")
    max_upload_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024 ** 3,
                                  description="largest body of a recipe upload or a count import, bytes")
    inactivity_minutes: float = Field(default=15.0, ge=0, le=24 * 60,
                                      description="wall minutes without a user action (pointer, key, touch) after "
                                                  "which the dashboard locks and the session refuses actions until "
                                                  "the password is given again; 0: no inactivity lock")
    inactivity_keep_live: bool = Field(default=False,
                                       description="wall screens: live data keeps flowing (and stays readable) "
                                                   "behind the lock screen; false: the page is hidden and its live "
                                                   "stream stops while locked")
    password_max_age_days: int = Field(default=0, ge=0, le=3650,
                                       description="days a password is valid; a login after that must change it "
                                                   "before anything else; 0: passwords do not expire")
    password_history: int = Field(default=5, ge=0, le=50,
                                  description="a new password may not be any of the user's last N passwords (the "
                                              "current one included); 0 or 1: only not the current one")
    alarm_interval: float = Field(default=0.5, gt=0, le=10,
                                  description="wall seconds between alarm passes (delays, stale data, expiry, persist)")
    alarm_shelve_max_minutes: float = Field(default=480.0, gt=0, le=7 * 24 * 60,
                                            description="longest an alarm may be shelved, clock minutes")
    alarm_stale_floor: float = Field(default=5.0, gt=0, le=600,
                                     description="stale-data limit is at least this many wall seconds on a fast clock")
    shutdown_grace: float = Field(default=3.0, gt=0, le=60,
                                  description="wall seconds SIGTERM waits for open HTTP responses (live streams are "
                                              "closed at once) before they are cut")
    setpoint_timeout: float = Field(default=5.0, gt=0, le=120,
                                    description="wall seconds a setpoint write and its read-back may take")

    site_timezone: str = Field(default="UTC", description="the site's time zone (IANA name, e.g. Europe/Paris): "
                               "on-call shifts and calibration due dates are read in it")
    public_url: str = Field(default="", description="the service's address as people reach it (https://...): the "
                            "base of remote acknowledgement links; unset: http://<host>:<port>")
    notify_enabled: bool = Field(default=True, description="run the notification sender (outbox to email, SMS, "
                                                             "voice and webhooks)")
    notify_interval: float = Field(default=1.0, gt=0, le=60, description="wall seconds between sender passes")
    notify_ack_link_minutes: float = Field(default=120.0, gt=0, le=7 * 24 * 60,
                                           description="clock minutes a remote acknowledgement link stays valid")
    notify_retry_base_s: float = Field(default=5.0, gt=0, le=3600,
                                       description="wall seconds before the first retry of a failed delivery "
                                                   "(doubled each time)")
    notify_retry_max_s: float = Field(default=300.0, gt=0, le=24 * 3600,
                                      description="longest wait between retries of a delivery, wall seconds")
    notify_max_attempts: int = Field(default=8, ge=1, le=100, description="attempts before a delivery fails")
    notify_channel_failures: int = Field(default=3, ge=1, le=100,
                                         description="consecutive failed attempts on a channel that raise its "
                                                     "service alarm")
    smtp_host: str = Field(default="", description="SMTP server for email notifications; unset: no email")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 TLS)")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", description="starttls, tls (implicit, port 465) or none (a relay on a trusted network)")
    smtp_username: str = Field(default="", description="SMTP user; unset: no login")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password (never logged)")
    smtp_from: str = Field(default="culturectl@localhost", description="From address of notification emails")
    smtp_timeout: float = Field(default=20.0, gt=0, le=300, description="wall seconds an SMTP exchange may take")
    smtp_ca_file: Path | None = Field(default=None, description="CA bundle that signs the SMTP server's "
                                                                "certificate; unset: the system's")
    webhook_secret: SecretStr | None = Field(default=None, description="key of the HMAC-SHA256 signature on every "
                                                                       "HTTP notification (webhooks, SMS, voice); "
                                                                       "needed by them; never logged")
    webhook_timeout: float = Field(default=10.0, gt=0, le=120, description="wall seconds a webhook call may take")
    sms_url: str = Field(default="", description="SMS provider's HTTP API (a webhook); unset: no SMS")
    sms_token: SecretStr | None = Field(default=None, description="bearer token of the SMS provider (never logged)")
    voice_url: str = Field(default="", description="voice-call provider's HTTP API (a webhook); unset: no voice")
    voice_token: SecretStr | None = Field(default=None, description="bearer token of the voice provider")
    calibration_warn_days: int = Field(default=30, ge=1, le=365,
                                       description="a point whose calibration is due within this many days raises "
                                                   "an advisory alarm")
    checkpoint_dir: Path | None = Field(default=None, description="where signed audit chain checkpoints are "
                                        "written, one file each (a write-once location such as an object-lock "
                                        "mount); unset: data_dir/checkpoints")
    checkpoint_key_file: Path | None = Field(default=None, description="Ed25519 private key (PEM) that signs the "
                                             "checkpoints, kept outside the database and its backups; unset: "
                                             "data_dir/checkpoint-signing.pem, created 0600 on first use with the "
                                             "public key beside it (checkpoint-signing.pub.pem)")
    checkpoint_interval_s: float = Field(default=3600.0, ge=0, le=7 * 24 * 3600,
                                         description="wall seconds between checkpoints (none while the head has not "
                                                     "moved); 0: none on a timer, still one at each release")

    record_interval: float = Field(default=10.0, ge=0, le=3600,
                                   description="wall seconds between looks for released runs whose batch record "
                                               "changed (a new version is issued); 0: no issuing")

    replica_id: str = Field(default="", max_length=100,
                            description="this replica's name among the replicas on one database; unset: "
                                        "<host name>-<port>")
    replica_url: str = Field(default="", description="where the other replicas reach this one (http://host:port); "
                                                     "unset: http://<host>:<port>")
    lease_ttl_s: float = Field(default=10.0, ge=2, le=120,
                               description="wall seconds a device or leader lease lasts without renewal; a dead "
                                           "replica's devices move after at most this plus lease_interval_s")
    lease_interval_s: float = Field(default=1.0, gt=0, le=30,
                                    description="wall seconds between lease renewals and looks for free leases")

    events_relay: bool = Field(default=True, description="share live events with every replica on the database "
                               "(batches in live_event_batch, LISTEN/NOTIFY); false: this process's own events only")
    events_batch_interval: float = Field(default=0.05, gt=0, le=5,
                                         description="wall seconds a live event waits at most for its batch to be "
                                                     "shared")
    events_retention_s: float = Field(default=600.0, ge=10, le=24 * 3600,
                                      description="wall seconds shared live events are kept, for clients that "
                                                  "resume on another replica")

    @field_validator("clock_epoch", "clock_origin")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must include a UTC offset, e.g. 2026-11-21T12:00:00Z")
        return v

    @model_validator(mode="after")
    def _lease_passes(self) -> Settings:
        if self.lease_interval_s > self.lease_ttl_s / 3:
            raise ValueError(f"lease_interval_s ({self.lease_interval_s:g}) must be at most a third of lease_ttl_s "
                             f"({self.lease_ttl_s:g}): a lease is renewed several times before it expires")
        return self

    @field_validator("site_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}: give an IANA name such as Europe/Paris or UTC") from None
        return v

    def zone(self) -> ZoneInfo:
        """The site's time zone."""
        return ZoneInfo(self.site_timezone)

    def make_clock(self) -> ScaledClock:
        return ScaledClock(epoch=self.clock_epoch or utcnow(), scale=self.time_scale, origin=self.clock_origin)

    def database_dsn(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None
