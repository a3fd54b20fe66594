"""DSN helpers, connections, pools and engines, the service's database role, and test databases.

DSNs are plain libpq-style URIs (`postgresql://user:pass@host:port/db`). The embedded server gives a unix-socket
URI (`postgresql://postgres:@/postgres?host=/path/to/socket-dir`); every helper here accepts both forms.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
import asyncpg.pool
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("culturectl.db")

# A connection from `asyncpg.connect` or one borrowed from a pool: both work everywhere here.
DBConnection: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"

# What "the database cannot be reached now" looks like from asyncpg: refused or broken connections, timeouts, a
# server shutting down or starting. A data or constraint error is not among them: that is a bug or bad data.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)




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


async def _admin(admin_dsn: str, sql: str) -> None:
    """Run one statement on its own connection (CREATE/DROP DATABASE cannot run in a transaction or a pool)."""
    conn = await connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(admin_dsn: str, dbname: str) -> str:
    """CREATE DATABASE `dbname` on the server of `admin_dsn`; returns the new database's DSN."""
    await _admin(admin_dsn, f"CREATE DATABASE {_ident(dbname)}")
    return with_database(admin_dsn, dbname)


async def drop_database(admin_dsn: str, dbname: str) -> None:
    """DROP DATABASE IF EXISTS ... WITH (FORCE): disconnects whoever is still connected (PG 13+)."""
    await _admin(admin_dsn, f"DROP DATABASE IF EXISTS {_ident(dbname)} WITH (FORCE)")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> None:
    """Raise unless the database answers within `timeout` seconds."""
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("SELECT 1", timeout=timeout)
