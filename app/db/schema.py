"""The data model in one place: every table as SQLAlchemy Core metadata (columns, keys, indexes, constraints).

The migrations in `migrations/` create this schema, and a test holds a database migrated to head against it
(Alembic's compare), so a migration that drifts fails CI. Where the code builds a query from filters and paging it
builds it from these tables (app/db/query.py); the hot paths (COPY, the rollup upsert, the latest values) stay
hand-written asyncpg SQL in the module that owns the table.

Owners (the only modules that write each table family):
- device, channel: app/devices/registry.py
- telemetry, telemetry_5m, telemetry_gap: app/ingest/writer.py (history queries: app/ingest/history.py)
- users, password_history: app/auth/users.py; sessions: app/auth/sessions.py; api_keys: app/auth/apikeys.py
- audit_log, audit_head: app/records/audit.py; signature: app/records/signatures.py
- recipe: app/protocol/recipes.py; culture_run: app/protocol/runs.py; step_record: app/protocol/steps.py;
  step_status: app/protocol/engine.py; deviation, deviation_comment: app/protocol/deviations.py;
  step_correction: app/protocol/corrections.py; dose_decision, qc_result: app/protocol/product.py;
  count_import: app/protocol/counts.py
- idempotency_key: app/api/idempotency.py
- setpoint_command: app/control/setpoints.py
- alarm, alarm_event, excursion, door_opening: app/alarms/journal.py (for the alarm service)
- notification_policy, oncall_override: app/notify/store.py; contact_point: app/notify/contacts.py;
  notification_episode, notification, notification_delivery, notification_attempt: app/notify/outbox.py
- calibration: app/devices/calibration.py
- record_review, batch_record_version: app/records/record_issue.py
- cluster_replica, cluster_lease: app/cluster/leases.py
- live_event_batch: app/cluster/events.py
- schema_info: the migrations

With TimescaleDB, telemetry is a hypertable (no BRIN index) and telemetry_5m a continuous aggregate (a view);
the schema test leaves those two differences out on that path. Triggers and rights (append-only audit trail,
journal and recipes) are the migrations' and are tested where they matter.
"""

from __future__ import annotations

from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()


audit_head = Table(
    "audit_head",
    metadata,
    Column("one", Boolean, primary_key=True, server_default=text("true")),
    Column("seq", BigInteger, nullable=False),
    Column("hash", CHAR(64), nullable=False),
    CheckConstraint("one", name="audit_head_one_check"),
    PrimaryKeyConstraint("one", name="audit_head_pkey"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True),
    Column("at", DateTime(True), nullable=False),
    Column("actor_kind", Text, nullable=False),
    Column("actor_id", BigInteger),
    Column("actor_name", Text, nullable=False),
    Column("actor_role", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", Text),
    Column("old", JSONB),
    Column("new", JSONB),
    Column("reason", Text),
    Column("client", Text),
    Column("prev_hash", CHAR(64), nullable=False),
    Column("hash", CHAR(64), nullable=False),
    CheckConstraint("action ~ '^[a-z_]+\\.[a-z_.]+$'::text", name="audit_log_action_check"),
    CheckConstraint(
        "actor_kind = ANY (ARRAY['user'::text, 'apikey'::text, 'system'::text])", name="audit_log_actor_kind_check"
    ),
    CheckConstraint("seq > 0", name="audit_log_seq_check"),
    PrimaryKeyConstraint("seq", name="audit_log_pkey"),
    UniqueConstraint("hash", name="audit_log_hash_key"),
    Index("audit_log_actor_idx", "actor_name", "seq"),
    Index("audit_log_at_idx", "at"),
    Index("audit_log_entity_idx", "entity_type", "entity_id", "seq"),
)

device = Table(
    "device",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("protocol", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=text("''::text")),
    Column("created_at", DateTime(True), nullable=False, server_default=text("now()")),
    Column("profile", Text),
    Column("profile_version", Text),
    PrimaryKeyConstraint("id", name="device_pkey"),
    UniqueConstraint("name", name="device_name_key"),
)

idempotency_key = Table(
    "idempotency_key",
    metadata,
    Column("principal", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("method", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("body_hash", CHAR(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(True), nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("principal", "key", name="idempotency_key_pkey"),
)

recipe = Table(
    "recipe",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("key", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("title", Text, nullable=False),
    Column("content", JSONB, nullable=False),
    Column("content_hash", CHAR(64), nullable=False),
    Column("released_at", DateTime(True), nullable=False, server_default=text("now()")),
    Column("released_by", Text, nullable=False),
    CheckConstraint("version >= 1", name="recipe_version_check"),
    PrimaryKeyConstraint("id", name="recipe_pkey"),
    UniqueConstraint("key", "version", name="recipe_key_version_key"),
)

schema_info = Table(
    "schema_info",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("key", name="schema_info_pkey"),
)

signature = Table(
    "signature",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("meaning", Text, nullable=False),
    Column("signer_user_id", BigInteger, nullable=False),
    Column("signer_name", Text, nullable=False),
    Column("printed_name", Text, nullable=False),
    Column("signer_role", Text, nullable=False),
    Column("signed_at", DateTime(True), nullable=False, server_default=text("clock_timestamp()")),
    Column("record_hash", CHAR(64), nullable=False),
    Column("comment", Text),
    CheckConstraint(
        "meaning = ANY (ARRAY['performed'::text, 'verified'::text, 'reviewed'::text, 'approved'::text])",
        name="signature_meaning_check",
    ),
    PrimaryKeyConstraint("id", name="signature_pkey"),
    Index("signature_entity_idx", "entity_type", "entity_id", "id"),
)

telemetry = Table(
    "telemetry",
    metadata,
    Column("time", DateTime(True), primary_key=True),
    Column("channel_id", Integer, primary_key=True),
    Column("value", Double(53)),
    Column("quality", SmallInteger, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("channel_id", "time", name="telemetry_pkey"),
    Index("telemetry_time_brin", "time", postgresql_using="brin"),
)

telemetry_5m = Table(
    "telemetry_5m",
    metadata,
    Column("channel_id", Integer, primary_key=True),
    Column("bucket", DateTime(True), primary_key=True),
    Column("n", BigInteger, nullable=False, server_default=text("0")),
    Column("sum", Double(53)),
    Column("min", Double(53)),
    Column("max", Double(53)),
    PrimaryKeyConstraint("channel_id", "bucket", name="telemetry_5m_pkey"),
)

telemetry_gap = Table(
    "telemetry_gap",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("channel_id", Integer),
    Column("start_time", DateTime(True), nullable=False),
    Column("end_time", DateTime(True), nullable=False),
    Column("cause", Text, nullable=False),
    Column("recorded_at", DateTime(True), nullable=False, server_default=text("now()")),
    CheckConstraint("end_time >= start_time", name="telemetry_gap_check"),
    PrimaryKeyConstraint("id", name="telemetry_gap_pkey"),
    Index("telemetry_gap_time_idx", "start_time", "end_time"),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, Identity(always=True), primary_key=True, autoincrement=True),
    Column("username", Text, nullable=False),
    Column("display_name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    Column("failed_logins", Integer, nullable=False, server_default=text("0")),
    Column("locked_at", DateTime(True)),
    Column("password_changed_at", DateTime(True), nullable=False, server_default=text("now()")),
    Column("created_at", DateTime(True), nullable=False, server_default=text("now()")),
    CheckConstraint("failed_logins >= 0", name="users_failed_logins_check"),
    CheckConstraint("length(btrim(display_name)) > 0", name="users_display_name_check"),
    CheckConstraint("password_hash ~~ '$argon2id$%%'::text", name="users_password_hash_check"),
    CheckConstraint(
        "role = ANY (ARRAY['operator'::text, 'supervisor'::text, 'qa'::text, 'automation'::text, 'admin'::text])",
        name="users_role_check",
    ),
    CheckConstraint("username ~ '^[a-z0-9][a-z0-9._-]{1,62}$'::text", name="users_username_check"),
    PrimaryKeyConstraint("id", name="users_pkey"),
    UniqueConstraint("username", name="users_username_key"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, Identity(always=True), primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("prefix", Text, nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("created_by", Integer),
    Column("created_at", DateTime(True), nullable=False, server_default=text("now()")),
    Column("last_used_at", DateTime(True)),
    Column("revoked_at", DateTime(True)),
    CheckConstraint("name ~ '^[a-z0-9][a-z0-9._-]{1,62}$'::text", name="api_keys_name_check"),
    CheckConstraint("prefix ~ '^[0-9a-f]{8}$'::text", name="api_keys_prefix_check"),
    CheckConstraint(
        "role = ANY (ARRAY['operator'::text, 'supervisor'::text, 'qa'::text, 'automation'::text, 'admin'::text])",
        name="api_keys_role_check",
    ),
    CheckConstraint("secret_hash ~ '^[0-9a-f]{64}$'::text", name="api_keys_secret_hash_check"),
    ForeignKeyConstraint(["created_by"], ["users.id"], name="api_keys_created_by_fkey"),
    PrimaryKeyConstraint("id", name="api_keys_pkey"),
    UniqueConstraint("name", name="api_keys_name_key"),
    UniqueConstraint("prefix", name="api_keys_prefix_key"),
)

channel = Table(
    "channel",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("role", Text),
    CheckConstraint("kind = ANY (ARRAY['analog'::text, 'boolean'::text])", name="channel_kind_check"),
    ForeignKeyConstraint(["device_id"], ["device.id"], name="channel_device_id_fkey"),
    PrimaryKeyConstraint("id", name="channel_pkey"),
    UniqueConstraint("device_id", "name", name="channel_device_id_name_key"),
    Index("channel_device_role_key", "device_id", "role", unique=True, postgresql_where="(role IS NOT NULL)"),
)

culture_run = Table(
    "culture_run",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("code", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'planned'::text")),
    Column("incubator_device_id", Integer),
    Column("culture_system_device_id", Integer),
    Column("t0", DateTime(True)),
    Column("created_at", DateTime(True), nullable=False, server_default=text("now()")),
    Column("ended_at", DateTime(True)),
    Column("recipe_id", BigInteger),
    Column("donor_id", Text),
    Column("patient_id", Text),
    Column("patient_weight_kg", Double(53)),
    Column("target_dose_per_kg", Double(53)),
    Column("cell_source", Text),
    Column("hsct_at", DateTime(True)),
    Column("planned_t0", DateTime(True)),
    Column("vessel_ids", ARRAY(Text()), nullable=False, server_default=text("'{}'::text[]")),
    Column("hold_reason", Text),
    Column("abort_reason", Text),
    Column("created_by", Text),
    Column("transplant_type", Text),
    Column("arm", Text),
    Column("graft_din", Text),
    Column("vessels", JSONB),
    CheckConstraint("cell_source = ANY (ARRAY['mobilized'::text, 'cord'::text])", name="culture_run_cell_source_check"),
    CheckConstraint(
        "transplant_type = ANY (ARRAY['t_cell_depleted'::text, 'ptcy_hla_mismatched'::text, 'haploidentical'::text])",
        name="culture_run_transplant_type_check",
    ),
    CheckConstraint("arm = ANY (ARRAY['adult'::text, 'paediatric'::text])", name="culture_run_arm_check"),
    CheckConstraint(
        "status = ANY (ARRAY['planned'::text, 'running'::text, 'held'::text, 'completed'::text, 'aborted'::text])",
        name="culture_run_status_check",
    ),
    ForeignKeyConstraint(["culture_system_device_id"], ["device.id"], name="culture_run_culture_system_device_id_fkey"),
    ForeignKeyConstraint(["incubator_device_id"], ["device.id"], name="culture_run_incubator_device_id_fkey"),
    ForeignKeyConstraint(["recipe_id"], ["recipe.id"], name="culture_run_recipe_id_fkey"),
    PrimaryKeyConstraint("id", name="culture_run_pkey"),
    UniqueConstraint("code", name="culture_run_code_key"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("jti", Text, primary_key=True),
    Column("user_id", Integer, nullable=False),
    Column("issued_at", DateTime(True), nullable=False),
    Column("expires_at", DateTime(True), nullable=False),
    Column("revoked_at", DateTime(True)),
    Column("last_activity_at", DateTime(True), nullable=False, server_default=text("now()")),
    CheckConstraint("expires_at > issued_at", name="sessions_check"),
    ForeignKeyConstraint(["user_id"], ["users.id"], name="sessions_user_id_fkey"),
    PrimaryKeyConstraint("jti", name="sessions_pkey"),
    Index("sessions_user_open", "user_id", postgresql_where="(revoked_at IS NULL)"),
)

password_history = Table(
    "password_history",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True, autoincrement=True),
    Column("user_id", Integer, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("retired_at", DateTime(True), nullable=False, server_default=text("now()")),
    CheckConstraint("password_hash ~~ '$argon2id$%%'::text", name="password_history_password_hash_check"),
    ForeignKeyConstraint(["user_id"], ["users.id"], name="password_history_user_id_fkey"),
    PrimaryKeyConstraint("id", name="password_history_pkey"),
    Index("password_history_user_idx", "user_id", "id"),
)

alarm = Table(
    "alarm",
    metadata,
    Column("id", Text, primary_key=True),
    Column("channel", Text, nullable=False),
    Column("device", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=text("''::text")),
    Column("priority", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("severity", Text),
    Column("value", Double(53)),
    Column("active_since", DateTime(True)),
    Column("mode_until", DateTime(True)),
    Column("run_id", BigInteger),
    Column("changed_at", DateTime(True), nullable=False),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="alarm_run_id_fkey"),
    PrimaryKeyConstraint("id", name="alarm_pkey"),
    Index("alarm_status_idx", "status", postgresql_where="(status <> 'normal'::text)"),
)

deviation = Table(
    "deviation",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("step_key", Text),
    Column("rule", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("facts", JSONB),
    Column("opened_at", DateTime(True), nullable=False),
    Column("opened_by", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'open'::text")),
    Column("closed_at", DateTime(True)),
    Column("closed_by", Text),
    Column("close_reason", Text),
    Column("record_key", Uuid),
    Column("classification", Text),
    Column("impact", Text),
    Column("actions", Text),
    CheckConstraint("(status = 'open'::text) = (closed_at IS NULL)", name="deviation_check"),
    CheckConstraint("classification = ANY (ARRAY['minor'::text, 'major'::text, 'critical'::text])",
                    name="deviation_classification_check"),
    CheckConstraint("status = ANY (ARRAY['open'::text, 'closed'::text])", name="deviation_status_check"),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="deviation_run_id_fkey"),
    PrimaryKeyConstraint("id", name="deviation_pkey"),
    Index("deviation_record_key_idx", "record_key", unique=True),
    Index("deviation_run_idx", "run_id", "status"),
)

excursion = Table(
    "excursion",
    metadata,
    Column("run_id", BigInteger, primary_key=True),
    Column("channel", Text, primary_key=True),
    Column("unit", Text, nullable=False),
    Column("band_low", Double(53), nullable=False),
    Column("band_high", Double(53), nullable=False),
    Column("seconds_outside", Double(53), nullable=False, server_default=text("0")),
    Column("integral", Double(53), nullable=False, server_default=text("0")),
    Column("worst", Double(53), nullable=False, server_default=text("0")),
    Column("episodes", Integer, nullable=False, server_default=text("0")),
    Column("hard_episodes", Integer, nullable=False, server_default=text("0")),
    Column("cumulative_tripped", Boolean, nullable=False, server_default=text("false")),
    Column("outside", Boolean, nullable=False, server_default=text("false")),
    Column("beyond_hard", Boolean, nullable=False, server_default=text("false")),
    Column("last_value", Double(53)),
    Column("last_at", DateTime(True)),
    Column("first_outside_at", DateTime(True)),
    Column("updated_at", DateTime(True), nullable=False),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="excursion_run_id_fkey"),
    PrimaryKeyConstraint("run_id", "channel", name="excursion_pkey"),
)

door_opening = Table(
    "door_opening",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("device", Text, nullable=False),
    Column("step_key", Text, nullable=False),
    Column("opened_at", DateTime(True), nullable=False),
    Column("closed_at", DateTime(True)),
    Column("recovered_at", DateTime(True)),
    Column("exceeded_at", DateTime(True)),
    Column("min_temperature", Double(53)),
    Column("min_co2", Double(53)),
    Column("outcome", Text, nullable=False),
    Column("reason", Text),
    Column("planned", JSONB, nullable=False),
    Column("updated_at", DateTime(True), nullable=False),
    CheckConstraint("outcome = ANY (ARRAY['planned'::text, 'exceeded'::text])", name="door_opening_outcome_check"),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="door_opening_run_id_fkey"),
    PrimaryKeyConstraint("id", name="door_opening_pkey"),
    UniqueConstraint("device", "opened_at", name="door_opening_device_opened_at_key"),
    Index("door_opening_run_idx", "run_id", "opened_at"),
)

setpoint_command = Table(
    "setpoint_command",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("device", Text, nullable=False),
    Column("point", Text, nullable=False),
    Column("run_id", BigInteger),
    Column("requested", Double(53), nullable=False),
    Column("previous", Double(53)),
    Column("read_back", Double(53)),
    Column("result", Text),
    Column("detail", Text),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("requested_at", DateTime(True), nullable=False),
    Column("completed_at", DateTime(True)),
    Column("source", Text, nullable=False),
    CheckConstraint(
        "result = ANY (ARRAY['confirmed'::text, 'did_not_follow'::text, 'timeout'::text, 'failed'::text])",
        name="setpoint_command_result_check",
    ),
    CheckConstraint("source = ANY (ARRAY['api'::text, 'recipe'::text, 'alarm'::text])",
                    name="setpoint_command_source_check"),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="setpoint_command_run_id_fkey"),
    PrimaryKeyConstraint("id", name="setpoint_command_pkey"),
)
Index("setpoint_command_point", setpoint_command.c.device, setpoint_command.c.point,
      setpoint_command.c.requested_at.desc())

step_record = Table(
    "step_record",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("step_key", Text, nullable=False),
    Column("posted_at", DateTime(True), nullable=False),
    Column("inputs", JSONB, nullable=False),
    Column("actor_kind", Text, nullable=False),
    Column("actor_id", BigInteger),
    Column("actor_name", Text, nullable=False),
    Column("actor_role", Text, nullable=False),
    Column("override", Boolean, nullable=False, server_default=text("false")),
    Column("override_reason", Text),
    Column("deviation_ids", ARRAY(BigInteger()), nullable=False, server_default=text("'{}'::bigint[]")),
    Column("dose", JSONB),
    Column("lots", JSONB),
    Column("provenance", JSONB),
    CheckConstraint("NOT override OR override_reason IS NOT NULL", name="step_record_check"),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="step_record_run_id_fkey"),
    PrimaryKeyConstraint("id", name="step_record_pkey"),
    UniqueConstraint("run_id", "step_key", name="step_record_run_id_step_key_key"),
)

step_correction = Table(
    "step_correction",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("step_record_id", BigInteger, nullable=False),
    Column("run_id", BigInteger, nullable=False),
    Column("step_key", Text, nullable=False),
    Column("corrected_at", DateTime(True), nullable=False),
    Column("before", JSONB, nullable=False),
    Column("after", JSONB, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor_id", BigInteger),
    Column("actor_name", Text, nullable=False),
    Column("deviation_ids", ARRAY(BigInteger()), nullable=False, server_default=text("'{}'::bigint[]")),
    Column("dose", JSONB),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="step_correction_run_id_fkey"),
    ForeignKeyConstraint(["step_record_id"], ["step_record.id"], name="step_correction_step_record_id_fkey"),
    PrimaryKeyConstraint("id", name="step_correction_pkey"),
    Index("step_correction_record_idx", "step_record_id", "id"),
)

dose_decision = Table(
    "dose_decision",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("decision", Text, nullable=False),
    Column("dose_per_kg", Double(53)),
    Column("reason", Text, nullable=False),
    Column("decided_at", DateTime(True), nullable=False),
    Column("decided_by", Text, nullable=False),
    CheckConstraint("(decision = 'lower_dose'::text) = (dose_per_kg IS NOT NULL)", name="dose_decision_check"),
    CheckConstraint("decision = ANY (ARRAY['lower_dose'::text, 'out_of_specification'::text])",
                    name="dose_decision_decision_check"),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="dose_decision_run_id_fkey"),
    PrimaryKeyConstraint("id", name="dose_decision_pkey"),
    UniqueConstraint("run_id", name="dose_decision_run_id_key"),
)

qc_result = Table(
    "qc_result",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("test", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("sampled_at", DateTime(True), nullable=False),
    Column("step_key", Text, nullable=False),
    Column("result", JSONB),
    Column("passed", Boolean),
    Column("reported_at", DateTime(True)),
    Column("reported_by", Text),
    CheckConstraint("(status = 'reported'::text) = (reported_at IS NOT NULL)", name="qc_result_check"),
    CheckConstraint("status = ANY (ARRAY['pending'::text, 'reported'::text])", name="qc_result_status_check"),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="qc_result_run_id_fkey"),
    PrimaryKeyConstraint("id", name="qc_result_pkey"),
    UniqueConstraint("run_id", "test", name="qc_result_run_id_test_key"),
)

count_import = Table(
    "count_import",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("step_key", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("sha256", CHAR(64), nullable=False),
    Column("format", Text, nullable=False),
    Column("instrument_id", Text, nullable=False),
    Column("sample_id", Text, nullable=False),
    Column("values", JSONB, nullable=False),
    Column("imported_at", DateTime(True), nullable=False),
    Column("imported_by", Text, nullable=False),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="count_import_run_id_fkey"),
    PrimaryKeyConstraint("id", name="count_import_pkey"),
    Index("count_import_run_idx", "run_id", "step_key"),
)

step_status = Table(
    "step_status",
    metadata,
    Column("run_id", BigInteger, primary_key=True),
    Column("step_key", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("changed_at", DateTime(True), nullable=False),
    Column("window", JSONB, nullable=False),
    CheckConstraint(
        "status = ANY (ARRAY['pending'::text, 'open'::text, 'due'::text, 'late'::text, 'missed'::text, 'skipped'::text, 'done'::text])",
        name="step_status_status_check",
    ),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="step_status_run_id_fkey"),
    PrimaryKeyConstraint("run_id", "step_key", name="step_status_pkey"),
)

alarm_event = Table(
    "alarm_event",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("alarm_id", Text, nullable=False),
    Column("at", DateTime(True), nullable=False),
    Column("from_state", Text, nullable=False),
    Column("to_state", Text, nullable=False),
    Column("severity", Text),
    Column("priority", Text, nullable=False),
    Column("value", Double(53)),
    Column("reason", Text, nullable=False),
    Column("actor", Text),
    Column("comment", Text),
    Column("run_id", BigInteger),
    Column("recorded_at", DateTime(True), nullable=False, server_default=text("now()")),
    Column("record_key", Uuid),
    ForeignKeyConstraint(["alarm_id"], ["alarm.id"], name="alarm_event_alarm_id_fkey"),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="alarm_event_run_id_fkey"),
    PrimaryKeyConstraint("id", name="alarm_event_pkey"),
    Index("alarm_event_alarm_idx", "alarm_id", "at"),
    Index("alarm_event_at_idx", "at"),
    Index("alarm_event_record_key_idx", "record_key", unique=True),
    Index("alarm_event_run_idx", "run_id", "at", postgresql_where="(run_id IS NOT NULL)"),
)

deviation_comment = Table(
    "deviation_comment",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("deviation_id", BigInteger, nullable=False),
    Column("at", DateTime(True), nullable=False, server_default=text("now()")),
    Column("author", Text, nullable=False),
    Column("text", Text, nullable=False),
    ForeignKeyConstraint(["deviation_id"], ["deviation.id"], name="deviation_comment_deviation_id_fkey"),
    PrimaryKeyConstraint("id", name="deviation_comment_pkey"),
)

notification_policy = Table(
    "notification_policy",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("content", JSONB, nullable=False),
    Column("content_hash", CHAR(64), nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(True), nullable=False),
    Column("reason", Text, nullable=False),
    CheckConstraint("version >= 1", name="notification_policy_version_check"),
    PrimaryKeyConstraint("version", name="notification_policy_pkey"),
)

oncall_override = Table(
    "oncall_override",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("rota", Text, nullable=False),
    Column("starts_at", DateTime(True), nullable=False),
    Column("ends_at", DateTime(True), nullable=False),
    Column("users", ARRAY(Text()), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(True), nullable=False),
    Column("revoked_at", DateTime(True)),
    Column("revoked_by", Text),
    CheckConstraint("ends_at > starts_at", name="oncall_override_check"),
    PrimaryKeyConstraint("id", name="oncall_override_pkey"),
    Index("oncall_override_rota_idx", "rota", "starts_at", "ends_at"),
)

contact_point = Table(
    "contact_point",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("username", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("format", Text, nullable=False, server_default=text("'generic'::text")),
    Column("label", Text, nullable=False, server_default=text("''::text")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(True), nullable=False),
    Column("updated_at", DateTime(True), nullable=False),
    Column("last_test_at", DateTime(True)),
    Column("last_test_result", Text),
    CheckConstraint("kind = ANY (ARRAY['email'::text, 'sms'::text, 'voice'::text, 'webhook'::text])",
                    name="contact_point_kind_check"),
    ForeignKeyConstraint(["username"], ["users.username"], name="contact_point_username_fkey"),
    PrimaryKeyConstraint("id", name="contact_point_pkey"),
    UniqueConstraint("username", "kind", "address", name="contact_point_username_kind_address_key"),
)

notification_episode = Table(
    "notification_episode",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("alarm_id", Text, nullable=False),
    Column("started_at", DateTime(True), nullable=False),
    Column("priority", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("summary", Text, nullable=False),
    Column("closed_at", DateTime(True)),
    Column("closed_reason", Text),
    Column("record_key", Uuid, nullable=False),
    ForeignKeyConstraint(["alarm_id"], ["alarm.id"], name="notification_episode_alarm_id_fkey"),
    PrimaryKeyConstraint("id", name="notification_episode_pkey"),
    UniqueConstraint("record_key", name="notification_episode_record_key_key"),
    Index("notification_episode_open_idx", "alarm_id", unique=True, postgresql_where="(closed_at IS NULL)"),
)

notification = Table(
    "notification",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("episode_id", BigInteger, nullable=False),
    Column("alarm_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("tier", SmallInteger, nullable=False),
    Column("repeat", SmallInteger, nullable=False),
    Column("due_at", DateTime(True), nullable=False),
    Column("status", Text, nullable=False),
    Column("detail", Text),
    Column("created_at", DateTime(True), nullable=False),
    Column("settled_at", DateTime(True)),
    CheckConstraint("kind = ANY (ARRAY['alert'::text, 'acknowledged'::text, 'returned'::text])",
                    name="notification_kind_check"),
    CheckConstraint("status = ANY (ARRAY['pending'::text, 'expanded'::text, 'cancelled'::text])",
                    name="notification_status_check"),
    ForeignKeyConstraint(["episode_id"], ["notification_episode.id"], name="notification_episode_id_fkey"),
    ForeignKeyConstraint(["alarm_id"], ["alarm.id"], name="notification_alarm_id_fkey"),
    PrimaryKeyConstraint("id", name="notification_pkey"),
    UniqueConstraint("episode_id", "kind", "tier", "repeat", name="notification_episode_id_kind_tier_repeat_key"),
    Index("notification_due_idx", "due_at", postgresql_where="(status = 'pending'::text)"),
    Index("notification_alarm_idx", "alarm_id", "id"),
)

notification_delivery = Table(
    "notification_delivery",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("notification_id", BigInteger),
    Column("contact_point_id", BigInteger, nullable=False),
    Column("username", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(True), nullable=False),
    Column("claimed_by", Text),
    Column("claimed_until", DateTime(True)),
    Column("sent_at", DateTime(True)),
    Column("last_error", Text),
    Column("ack_token_hash", CHAR(64)),
    Column("ack_expires_at", DateTime(True)),
    Column("ack_used_at", DateTime(True)),
    Column("created_at", DateTime(True), nullable=False),
    CheckConstraint("status = ANY (ARRAY['pending'::text, 'sent'::text, 'failed'::text, 'cancelled'::text])",
                    name="notification_delivery_status_check"),
    ForeignKeyConstraint(["notification_id"], ["notification.id"], name="notification_delivery_notification_id_fkey"),
    ForeignKeyConstraint(["contact_point_id"], ["contact_point.id"],
                         name="notification_delivery_contact_point_id_fkey"),
    PrimaryKeyConstraint("id", name="notification_delivery_pkey"),
    UniqueConstraint("notification_id", "contact_point_id",
                     name="notification_delivery_notification_id_contact_point_id_key"),
    UniqueConstraint("ack_token_hash", name="notification_delivery_ack_token_hash_key"),
    Index("notification_delivery_due_idx", "next_attempt_at", postgresql_where="(status = 'pending'::text)"),
)

notification_attempt = Table(
    "notification_attempt",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("delivery_id", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", DateTime(True), nullable=False),
    Column("finished_at", DateTime(True), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("detail", Text),
    Column("replica", Text, nullable=False),
    ForeignKeyConstraint(["delivery_id"], ["notification_delivery.id"], name="notification_attempt_delivery_id_fkey"),
    PrimaryKeyConstraint("id", name="notification_attempt_pkey"),
    Index("notification_attempt_delivery_idx", "delivery_id", "attempt"),
)

calibration = Table(
    "calibration",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("device", Text, nullable=False),
    Column("point", Text, nullable=False),
    Column("calibrated_on", Date, nullable=False),
    Column("due_on", Date, nullable=False),
    Column("certificate", Text, nullable=False),
    Column("performed_by", Text, nullable=False),
    Column("recorded_by", Text, nullable=False),
    Column("recorded_at", DateTime(True), nullable=False),
    CheckConstraint("due_on > calibrated_on", name="calibration_check"),
    ForeignKeyConstraint(["device"], ["device.name"], name="calibration_device_fkey"),
    PrimaryKeyConstraint("id", name="calibration_pkey"),
    Index("calibration_point_idx", "device", "point", "id"),
)

record_review = Table(
    "record_review",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("exception_key", Text, nullable=False),
    Column("fingerprint", CHAR(64), nullable=False),
    Column("comment", Text, nullable=False),
    Column("reviewed_by", Text, nullable=False),
    Column("reviewed_at", DateTime(True), nullable=False),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="record_review_run_id_fkey"),
    PrimaryKeyConstraint("id", name="record_review_pkey"),
    Index("record_review_run_idx", "run_id", "exception_key", "id"),
)

batch_record_version = Table(
    "batch_record_version",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("number", Integer, nullable=False),
    Column("previous", Integer),
    Column("content_hash", CHAR(64), nullable=False),
    Column("signed_hash", CHAR(64)),
    Column("record", JSONB, nullable=False),
    Column("pdf", LargeBinary, nullable=False),
    Column("issued_at", DateTime(True), nullable=False),
    Column("issued_by", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("chain_seq", BigInteger, nullable=False),
    Column("chain_hash", CHAR(64), nullable=False),
    CheckConstraint("number >= 1", name="batch_record_version_number_check"),
    CheckConstraint("(number = 1) = (previous IS NULL)", name="batch_record_version_check"),
    ForeignKeyConstraint(["run_id"], ["culture_run.id"], name="batch_record_version_run_id_fkey"),
    PrimaryKeyConstraint("id", name="batch_record_version_pkey"),
    UniqueConstraint("run_id", "number", name="batch_record_version_run_id_number_key"),
)

cluster_replica = Table(
    "cluster_replica",
    metadata,
    Column("id", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("started_at", DateTime(True), nullable=False),
    Column("seen_at", DateTime(True), nullable=False),
    Column("stopping", Boolean, nullable=False, server_default=text("false")),
    PrimaryKeyConstraint("id", name="cluster_replica_pkey"),
)

cluster_lease = Table(
    "cluster_lease",
    metadata,
    Column("name", Text, nullable=False),
    Column("holder", Text),
    Column("epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("expires_at", DateTime(True)),
    Column("acquired_at", DateTime(True)),
    Column("renewed_at", DateTime(True)),
    Column("state", Text),
    Column("state_since", DateTime(True)),
    CheckConstraint("(holder IS NULL) = (expires_at IS NULL)", name="cluster_lease_check"),
    PrimaryKeyConstraint("name", name="cluster_lease_pkey"),
)

live_event_batch = Table(  # UNLOGGED: a short ring of live events (app/cluster/events.py)
    "live_event_batch",
    metadata,
    Column("first_id", BigInteger, nullable=False, autoincrement=False),
    Column("last_id", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("replica", Text, nullable=False),
    Column("created_at", DateTime(True), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    CheckConstraint("count >= 1 AND last_id = first_id + count - 1", name="live_event_batch_check"),
    PrimaryKeyConstraint("first_id", name="live_event_batch_pkey"),
    Index("live_event_batch_last_id_idx", "last_id", unique=True),
    prefixes=["UNLOGGED"],
)
