"""Database access: the embedded PostgreSQL, connections and pools, the migrations runner.

`from app import db` and then `db.connect(...)`, `db.upgrade_async(...)`, `db.EmbeddedPostgres(...)`: the package
gathers its modules' public names. Each table's queries live in the module that owns the table, not here.
"""

from app.db.connect import (
    APP_ROLE,
    TARGET_SESSION_ATTRS,
    UNAVAILABLE,
    DBConnection,
    NoUsableServer,
    assume_app_role,
    asyncpg_connect_kwargs,
    connect,
    create_database,
    create_engine,
    create_pool,
    database_name,
    drop_database,
    engine_creator,
    hosts,
    on_unavailable,
    ping,
    plain_dsn,
    redact,
    server_read_only,
    sqlalchemy_url,
    with_database,
)
from app.db.embedded import EmbeddedPostgres
from app.db.migrate import (
    MIGRATIONS_PACKAGE,
    alembic_config,
    current_revision,
    downgrade,
    downgrade_async,
    migrations_location,
    timescale_enabled,
    upgrade,
    upgrade_async,
)

__all__ = [
    "APP_ROLE", "MIGRATIONS_PACKAGE", "TARGET_SESSION_ATTRS", "UNAVAILABLE", "DBConnection", "EmbeddedPostgres",
    "NoUsableServer", "alembic_config", "assume_app_role", "asyncpg_connect_kwargs", "connect", "create_database",
    "create_engine", "create_pool", "current_revision", "database_name", "downgrade", "downgrade_async",
    "drop_database", "engine_creator", "hosts", "migrations_location", "on_unavailable", "ping", "plain_dsn", "redact",
    "server_read_only", "sqlalchemy_url", "timescale_enabled", "upgrade", "upgrade_async", "with_database",
]
