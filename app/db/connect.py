"""DSN helpers, connections, pools and engines, the service's database role, and test databases.

DSNs are plain libpq-style URIs (`postgresql://user:pass@host:port/db`). The embedded server gives a unix-socket
URI (`postgresql://postgres:@/postgres?host=/path/to/socket-dir`); every helper here accepts both forms, and the
multi-host forms libpq knows for high availability: `postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=
read-write`, or `?host=h1,h2&port=5432,5433`. Hosts are tried in order, each with its own connect timeout (the
DSN's `connect_timeout`, as libpq does), until one is reachable and matches `target_session_attrs`; a pool drops
its connections when the server they reach becomes read-only (see docs/high-availability.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
import asyncpg.pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("culturectl.db")

# A connection from `asyncpg.connect` or one borrowed from a pool: both work everywhere here.
DBConnection: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"


class NoUsableServer(ConnectionError):
    """No server of the DSN can be used now: every host refused, timed out or did not match
    `target_session_attrs` (during a failover: the old primary is gone or read-only, the new one not promoted yet),
    or the server a connection reaches has become read-only. An OSError, so every handler of "the database cannot
    be reached" treats it as one."""


# What "the database cannot be reached now" looks like from asyncpg: refused or broken connections, timeouts, a
# server shutting down or starting, no host matching target_session_attrs, and a server that has become read-only
# (a primary demoted, or a standby reached during a failover: SQLSTATE 25006). A data or constraint error is not
# among them: that is a bug or bad data.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.TargetServerAttributeNotMatched,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)

TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
"""The values of `target_session_attrs` (libpq's, which asyncpg implements)."""

# A connection failure after which the next host is tried (libpq does not try further hosts after an
# authentication failure, and neither do we).
_NEXT_HOST: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.TargetServerAttributeNotMatched,
    asyncpg.exceptions.TooManyConnectionsError,
)

# libpq keywords that are connection parameters, not server settings
_DSN_KEYWORDS = ("host", "port", "user", "password", "dbname", "sslmode", "target_session_attrs",
                 "connect_timeout")


@dataclass(frozen=True)
class _DSN:
    scheme: str
    user: str | None
    password: str | None
    hosts: tuple[str, ...]  # "" for libpq's default; a path is a unix-socket directory
    ports: tuple[int | None, ...]  # as many as hosts
    database: str
    query: tuple[tuple[str, str], ...]  # everything but host, port, user, password, dbname
    fragment: str


def _split_dsn(dsn: str) -> tuple[str, str, str, str, list[tuple[str, str]]]:
    parts = urlsplit(dsn)
    if parts.scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URI: scheme {parts.scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    return parts.scheme, parts.netloc, parts.path, parts.fragment, query


def _host_port(item: str) -> tuple[str, int | None]:
    """One `host[:port]` of a netloc host list (`[v6addr]:port` too)."""
    if item.startswith("["):
        addr, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return addr, _port(port)
    host, sep, port = item.rpartition(":")
    if not sep:
        return unquote(item), None
    return unquote(host), _port(port)


def _port(text: str) -> int | None:
    if text == "":
        return None
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"invalid port {text!r} in the DSN") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port} in the DSN")
    return port


def _parse(dsn: str) -> _DSN:
    scheme, netloc, path, fragment, query = _split_dsn(dsn)
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        userinfo, hostlist = "", netloc
    user_s, colon, password_s = userinfo.partition(":")
    user: str | None = unquote(user_s) or None
    password: str | None = unquote(password_s) if colon else None
    pairs = [_host_port(item) for item in hostlist.split(",")] if hostlist else [("", None)]
    hosts = [h for h, _ in pairs]
    ports = [p for _, p in pairs]
    database = unquote(path.lstrip("/"))
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key == "host":  # libpq: the query wins over the netloc; a list for several hosts
            hosts = value.split(",")
            if len(ports) != len(hosts) and all(p is None for p in ports):
                ports = [None] * len(hosts)
        elif key == "port":
            ports = [_port(p) for p in value.split(",")]
        elif key == "user":
            user = value or None
        elif key == "password":
            password = value
        elif key == "dbname":
            database = value
        else:
            rest.append((key, value))
    if len(ports) == 1 and len(hosts) > 1:
        ports = ports * len(hosts)  # one port for every host, as libpq does
    if len(ports) != len(hosts):
        raise ValueError(f"the DSN names {len(hosts)} hosts but {len(ports)} ports")
    if len(hosts) > 1 and not all(hosts):
        raise ValueError("a DSN with several hosts needs every host named")
    attrs = dict(rest).get("target_session_attrs")
    if attrs is not None and attrs not in TARGET_SESSION_ATTRS:
        raise ValueError(f"target_session_attrs must be one of {', '.join(TARGET_SESSION_ATTRS)}; got {attrs!r}")
    return _DSN(scheme, user, password, tuple(hosts), tuple(ports), database, tuple(rest), fragment)


def hosts(dsn: str) -> list[tuple[str, int | None]]:
    """The (host, port) pairs a DSN names, in the order they are tried (host "" means libpq's default)."""
    parsed = _parse(dsn)
    return list(zip(parsed.hosts, parsed.ports, strict=True))


def _render(d: _DSN, *, scheme: str, password: str | None) -> str:
    """The DSN in one canonical form: a single TCP host in the netloc, a socket directory or several hosts as
    `host=`/`port=` query lists."""
    userinfo = ""
    if d.user is not None or password is not None:
        userinfo = quote(d.user or "", safe="")
        if password is not None:
            userinfo += ":" + (password if password == "***" else quote(password, safe=""))
        userinfo += "@"
    query: list[tuple[str, str]] = []
    netloc_host = ""
    single_tcp = len(d.hosts) == 1 and not d.hosts[0].startswith("/")
    if single_tcp:
        host = d.hosts[0]
        netloc_host = f"[{host}]" if ":" in host else quote(host, safe="")
        if d.ports[0] is not None:
            netloc_host += f":{d.ports[0]}"
    else:
        query.append(("host", ",".join(d.hosts)))
        if any(p is not None for p in d.ports):
            query.append(("port", ",".join("" if p is None else str(p) for p in d.ports)))
    query.extend(d.query)
    path = "/" + quote(d.database, safe="") if d.database else "/"
    return urlunsplit((scheme, userinfo + netloc_host, path, urlencode(query, safe="/,"), d.fragment))


def with_database(dsn: str, dbname: str) -> str:
    """The same server(s) and credentials, another database."""
    scheme, netloc, _path, fragment, query = _split_dsn(dsn)
    query = [(k, v) for k, v in query if k != "dbname"]
    return urlunsplit((scheme, netloc, "/" + quote(dbname, safe=""), urlencode(query, safe="/,"), fragment))


def database_name(dsn: str) -> str:
    """The database a DSN names (default: the user name, as libpq does)."""
    parsed = _parse(dsn)
    return parsed.database or parsed.user or "postgres"


def plain_dsn(dsn: str) -> str:
    """A DSN without a SQLAlchemy driver suffix (`postgresql+asyncpg://` -> `postgresql://`)."""
    _scheme, netloc, path, fragment, query = _split_dsn(dsn)
    return urlunsplit(("postgresql", netloc, path, urlencode(query, safe="/,"), fragment))


def asyncpg_connect_kwargs(dsn: str) -> dict[str, Any]:
    """Keyword arguments for `connect`/`create_pool` (and `asyncpg.connect`): the host and port, or lists of them
    for a multi-host DSN, `target_session_attrs`, `ssl` from `sslmode`, `timeout` from `connect_timeout`; any
    other query parameter (application_name...) becomes a server setting."""
    d = _parse(dsn)
    kw: dict[str, Any] = {}
    if d.user:
        kw["user"] = d.user
    if d.password:
        kw["password"] = d.password
    if d.database:
        kw["database"] = d.database
    if len(d.hosts) > 1:
        kw["host"] = list(d.hosts)
        kw["port"] = [p or 5432 for p in d.ports]
    else:
        if d.hosts[0]:
            kw["host"] = d.hosts[0]
        if d.ports[0]:
            kw["port"] = d.ports[0]
    settings: dict[str, str] = {}
    for key, value in d.query:
        if key == "sslmode":
            kw["ssl"] = value
        elif key == "target_session_attrs":
            kw["target_session_attrs"] = value
        elif key == "connect_timeout":
            try:
                timeout = float(value)
            except ValueError:
                raise ValueError(f"invalid connect_timeout {value!r} in the DSN") from None
            if timeout > 0:  # 0: wait forever (libpq); asyncpg's default (60 s) then applies
                kw["timeout"] = max(timeout, 2.0)  # libpq's minimum
        else:
            settings[key] = value
    if settings:
        kw["server_settings"] = settings
    return kw


def sqlalchemy_url(dsn: str) -> str:
    """The DSN as a SQLAlchemy asyncpg URL string (`postgresql+asyncpg://...`), password included; several hosts
    become the `?host=h1,h2&port=p1,p2` form SQLAlchemy's asyncpg dialect reads. Engines made by `create_engine`
    (and the migrations) connect through `connect`, so the hosts are tried the same way everywhere."""
    d = _parse(dsn)
    return _render(d, scheme="postgresql+asyncpg", password=d.password)


def redact(dsn: str) -> str:
    """The DSN without its password, for logs."""
    d = _parse(dsn)
    return _render(d, scheme="postgresql", password=d.password and "***")


def _wants_primary(attrs: str | None) -> bool:
    return attrs in ("read-write", "primary")


def server_read_only(conn: DBConnection, attrs: str | None = "read-write") -> bool:
    """Whether the server of `conn` no longer takes writes, as it last reported (PostgreSQL 14+ reports
    `default_transaction_read_only` and `in_hot_standby` with every change, after the next command): a demoted
    primary or a standby. With `attrs="primary"` only recovery counts."""
    settings = conn.get_settings()
    if getattr(settings, "in_hot_standby", "off") == "on":
        return True
    return attrs != "primary" and getattr(settings, "default_transaction_read_only", "off") == "on"


async def _connect_hosts(_dsn: None = None, **kw: Any) -> asyncpg.Connection:
    """asyncpg.connect over a host list, libpq's way: each host in turn with its own timeout (asyncpg's timeout
    covers the whole list, so one unreachable host would use it up), the first that matches
    `target_session_attrs` wins; `prefer-standby` takes any host when no standby answers. (A pool calls it with
    its positional DSN, None: the DSN is already in the keyword arguments.)"""
    host = kw.pop("host", None)
    port = kw.pop("port", None)
    if not isinstance(host, list):
        if host is not None:
            kw["host"] = host
        if port is not None:
            kw["port"] = port
        try:
            return await asyncpg.connect(**kw)
        except asyncpg.exceptions.TargetServerAttributeNotMatched as exc:
            raise NoUsableServer(f"{host}: {exc}") from exc
    ports = port if isinstance(port, list) else [port] * len(host)
    attrs = kw.pop("target_session_attrs", None)
    passes = ["standby", "any"] if attrs == "prefer-standby" else [attrs]
    failures: list[str] = []
    last: BaseException | None = None
    for want in passes:
        for h, p in zip(host, ports, strict=True):
            try:
                return await asyncpg.connect(host=h, port=p, target_session_attrs=want, **kw)
            except _NEXT_HOST as exc:
                last = exc
                failures.append(f"{h}:{p} ({type(exc).__name__}: {exc})")
    raise NoUsableServer("no usable database server: " + "; ".join(failures)) from last


async def connect(dsn: str, **kw: Any) -> asyncpg.Connection:
    """One asyncpg connection (to the first usable host of a multi-host DSN); keyword arguments go to
    `asyncpg.connect` and win over the DSN's (`timeout` is per host, like libpq's `connect_timeout`)."""
    return await _connect_hosts(**{**asyncpg_connect_kwargs(dsn), **kw})


APP_ROLE = "culturectl_app"
"""The database role the service acts as (created by migration 20261121_0003): no UPDATE, DELETE or TRUNCATE
on the audit trail. Connections log in as the configured user (the schema owner, who runs the migrations) and
switch to it with SET ROLE."""


async def assume_app_role(conn: DBConnection) -> None:
    """SET ROLE culturectl_app on a connection (survives the pool's RESET ALL between uses)."""
    await conn.execute(f"SET ROLE {APP_ROLE}")


async def create_pool(dsn: str, *, app_role: bool = True, **kw: Any) -> asyncpg.Pool:
    """An asyncpg pool (extra keyword arguments go to `asyncpg.create_pool`); its connections act as
    `APP_ROLE` unless `app_role=False` (the database must be migrated to head first).

    It follows a failover by itself: a new connection tries the DSN's hosts in order (`connect`), a connection to
    a server that went away is replaced at its next acquire, and when a connection comes back from a server that
    has become read-only (`target_session_attrs=read-write` or `primary` in the DSN) every connection of the pool
    is expired (`on_unavailable`), so the next acquires connect to whichever host is the primary now."""
    kw.setdefault("min_size", 1)
    kw.setdefault("max_size", 10)
    if app_role:
        kw.setdefault("init", assume_app_role)
    connect_kw = asyncpg_connect_kwargs(dsn)
    attrs = connect_kw.get("target_session_attrs")
    pools: list[asyncpg.Pool] = []
    if _wants_primary(attrs) and "reset" not in kw:
        kw["reset"] = _primary_reset(pools, attrs, redact(dsn))
    pool = await asyncpg.create_pool(connect=_connect_hosts, **connect_kw, **kw)
    assert pool is not None
    pools.append(pool)
    return pool


def _primary_reset(pools: list[asyncpg.Pool], attrs: str | None, where: str,
                   ) -> Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]:
    """The pool's reset on release: the default reset query, then expire the pool if the server turned read-only
    (it reports that with the reply to the connection's next command, so the connection that saw it is enough)."""
    last_log = [0.0]

    async def reset(conn: asyncpg.Connection) -> None:
        query = conn.get_reset_query()
        if query:
            await conn.execute(query)
        if server_read_only(conn, attrs) and pools:
            await on_unavailable(pools[0])
            now = time.monotonic()
            if now - last_log[0] > 30.0:
                last_log[0] = now
                log.warning("database server of %s is read-only now (failover?): pool connections expired, "
                            "new ones go to the read-write host", where)

    return reset


async def on_unavailable(pool: asyncpg.Pool) -> None:
    """Drop every connection of `pool` at its next use (the database failed over or became read-only): new
    connections try the DSN's hosts again. Connections in use finish first."""
    await pool.expire_connections()


def create_engine(dsn: str, **kw: Any) -> AsyncEngine:
    """A SQLAlchemy async engine on asyncpg; it connects through `connect` (several hosts tried in turn)."""
    kw.setdefault("pool_pre_ping", True)
    kw.setdefault("async_creator", engine_creator(dsn))
    return create_async_engine(sqlalchemy_url(dsn), **kw)


def engine_creator(dsn: str) -> Callable[[], Coroutine[Any, Any, asyncpg.Connection]]:
    """An `async_creator` for SQLAlchemy engines on `dsn` (also what the migrations connect with)."""
    plain = plain_dsn(dsn)

    async def creator() -> asyncpg.Connection:
        return await connect(plain)

    return creator


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
    """Raise unless the database answers within `timeout` seconds and takes writes (a server that reports itself
    read-only, a demoted primary, cannot store anything: NoUsableServer)."""
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("SELECT 1", timeout=timeout)
        if server_read_only(conn):
            raise NoUsableServer("the database server is read-only (a standby, or a primary being demoted)")
