"""DSN helpers: single-host, unix-socket and libpq multi-host URIs map to asyncpg's arguments, SQLAlchemy's URL
and a redacted form; a host list is tried in order, each host with its own timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from app import db
from tests.support import free_port

MULTI = "postgresql://u:p%40ss@h1:5432,h2:5433/db?target_session_attrs=read-write"


@pytest.mark.parametrize(("dsn", "expected"), [
    ("postgresql://u:pw@localhost:5433/db",
     {"user": "u", "password": "pw", "database": "db", "host": "localhost", "port": 5433}),
    ("postgresql+asyncpg://u@db.example.org/x", {"user": "u", "database": "x", "host": "db.example.org"}),
    ("postgresql://postgres:@/postgres?host=/run/sock%2Fdir",
     {"user": "postgres", "database": "postgres", "host": "/run/sock/dir"}),
    ("postgresql://u:p@h/db?sslmode=require&application_name=culturectl",
     {"user": "u", "password": "p", "database": "db", "host": "h", "ssl": "require",
      "server_settings": {"application_name": "culturectl"}}),
    (MULTI,
     {"user": "u", "password": "p@ss", "database": "db", "host": ["h1", "h2"], "port": [5432, 5433],
      "target_session_attrs": "read-write"}),
    ("postgresql://u@h1,h2,h3/db", {"user": "u", "database": "db", "host": ["h1", "h2", "h3"],
                                    "port": [5432, 5432, 5432]}),
    ("postgresql://u@/db?host=a,b&port=6000,6001&target_session_attrs=primary&connect_timeout=3",
     {"user": "u", "database": "db", "host": ["a", "b"], "port": [6000, 6001], "target_session_attrs": "primary",
      "timeout": 3.0}),
    ("postgresql://u@/db?host=a,b&port=6000", {"user": "u", "database": "db", "host": ["a", "b"],
                                              "port": [6000, 6000]}),
    ("postgresql://u@[::1]:5433,[fe80::2]/db", {"user": "u", "database": "db", "host": ["::1", "fe80::2"],
                                                "port": [5433, 5432]}),
    ("postgresql:///db?user=v&password=s&dbname=other", {"user": "v", "password": "s", "database": "other"}),
])
def test_connect_kwargs(dsn: str, expected: dict[str, Any]) -> None:
    assert db.asyncpg_connect_kwargs(dsn) == expected


@pytest.mark.parametrize("dsn", [
    "mysql://u@h/db",
    "postgresql://u@h1:5432,h2:x/db",
    "postgresql://u@/db?host=a,b,c&port=1,2",
    "postgresql://u@h1,/db",
    "postgresql://u@h/db?target_session_attrs=writable",
])
def test_bad_dsns_are_refused(dsn: str) -> None:
    with pytest.raises(ValueError):
        db.asyncpg_connect_kwargs(dsn)


def test_hosts_in_order() -> None:
    assert db.hosts(MULTI) == [("h1", 5432), ("h2", 5433)]
    assert db.hosts("postgresql://u@/d?host=/sock") == [("/sock", None)]


def test_redact_hides_the_password_of_any_form() -> None:
    assert db.redact(MULTI) == "postgresql://u:***@/db?host=h1,h2&port=5432,5433&target_session_attrs=read-write"
    assert db.redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert "secret" not in db.redact("postgresql://u@h/db?password=secret")
    assert db.redact("postgresql://postgres:@/postgres?host=/a/b") == "postgresql://postgres:@/postgres?host=/a/b"


def test_database_name_and_with_database() -> None:
    assert db.database_name(MULTI) == "db"
    assert db.database_name("postgresql://alice@h") == "alice"
    other = db.with_database(MULTI, "t_1")
    assert db.database_name(other) == "t_1"
    assert db.hosts(other) == db.hosts(MULTI)
    assert db.asyncpg_connect_kwargs(other)["target_session_attrs"] == "read-write"
    assert db.database_name(db.with_database("postgresql://u@/x?host=/s&dbname=x", "y")) == "y"


def test_sqlalchemy_url_of_a_multi_host_dsn() -> None:
    url = db.sqlalchemy_url(MULTI)
    assert url == "postgresql+asyncpg://u:p%40ss@/db?host=h1,h2&port=5432,5433&target_session_attrs=read-write"
    assert db.sqlalchemy_url(url) == url  # the migrations' env.py passes it through again
    parsed = make_url(url)
    assert parsed.password == "p@ss" and parsed.database == "db"
    # SQLAlchemy's asyncpg dialect reads the same host list
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    _args, opts = dialect().create_connect_args(parsed)
    assert opts["host"] == ["h1", "h2"] and opts["port"] == [5432, 5433]
    single = db.sqlalchemy_url("postgresql://u:p@h:5433/d?sslmode=require")
    assert single == "postgresql+asyncpg://u:p@h:5433/d?sslmode=require"
    assert make_url(db.sqlalchemy_url("postgresql://u:p@/d?host=/sock%2Fdir")).query["host"] == "/sock/dir"


def test_unavailable_covers_failover_errors() -> None:
    for exc in (db.NoUsableServer("x"), asyncpg.exceptions.ReadOnlySQLTransactionError("x"),
                asyncpg.exceptions.TargetServerAttributeNotMatched("x"), ConnectionRefusedError()):
        assert isinstance(exc, db.UNAVAILABLE)
    assert isinstance(db.NoUsableServer("x"), OSError)  # handlers of "cannot be reached" take it too
    assert not isinstance(asyncpg.exceptions.UniqueViolationError("x"), db.UNAVAILABLE)


async def test_each_host_gets_its_own_timeout_and_the_failures_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that never answers (a lost machine) costs one timeout, then the next host is tried: asyncpg's own
    timeout covers the whole list. Here no host is usable; the error lists each."""
    calls: list[tuple[str, int, float]] = []

    async def fake_connect(**kw: Any) -> Any:
        calls.append((kw["host"], kw["port"], kw["timeout"]))
        if kw["host"] == "blackhole":
            await asyncio.sleep(kw["timeout"])
            raise TimeoutError()
        if kw["host"] == "standby":
            raise asyncpg.exceptions.TargetServerAttributeNotMatched("not read-write")
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(asyncpg, "connect", fake_connect)
    started = time.monotonic()
    with pytest.raises(db.NoUsableServer) as info:
        await db.connect("postgresql://u@blackhole:1,standby:2,gone:3/db?target_session_attrs=read-write"
                         "&connect_timeout=2", timeout=0.2)
    assert time.monotonic() - started < 2
    assert [c[:2] for c in calls] == [("blackhole", 1), ("standby", 2), ("gone", 3)]
    assert all(c[2] == 0.2 for c in calls)
    text = str(info.value)
    assert "blackhole:1" in text and "standby:2" in text and "gone:3" in text


async def test_prefer_standby_falls_back_to_any(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    async def fake_connect(**kw: Any) -> Any:
        seen.append((kw["host"], kw["target_session_attrs"]))
        if kw["target_session_attrs"] == "standby":
            raise asyncpg.exceptions.TargetServerAttributeNotMatched("a primary")
        return "conn"

    monkeypatch.setattr(asyncpg, "connect", fake_connect)
    assert await db.connect("postgresql://u@a,b/db?target_session_attrs=prefer-standby") == "conn"
    assert seen == [("a", "standby"), ("b", "standby"), ("a", "any")]


async def test_a_refused_host_list_is_no_usable_server() -> None:
    ports = [free_port(), free_port()]
    with pytest.raises(db.NoUsableServer):
        await db.connect(f"postgresql://u@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/db", timeout=2)
