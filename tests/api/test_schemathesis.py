"""The API keeps its OpenAPI contract: schemathesis generates requests for every operation (every check, a few
examples each), as a user with a token and as a script with an API key, against the app served in this process;
any failure fails, not only a server error.

The service runs on uvicorn in a thread of this process (its own event loop), on the module's database; the
generated requests go over loopback. Operations that would end the fuzzing principal's own credentials (logout,
changing its password, disabling users, revoking keys) are left out here: test_auth.py and test_users_and_keys.py
cover them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
import schemathesis.specs.openapi.checks
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis import checks as st_checks

from app import db
from app.auth import apikeys, users
from app.auth.principal import Role, cli_principal
from app.core.clock import ScaledClock
from app.demo import stack
from app.settings import Settings
from tests.support import free_port

PASSWORD = "Seven-Day-Culture-42"
ALL_CHECKS = st_checks.CHECKS.get_all()
EXAMPLES = 3  # per operation and principal: every operation, every check, in about a minute on 2 cores
OWN_CREDENTIALS = (r"^/api/v1/auth/logout$", r"^/api/v1/users/me/password$", r"^/api/v1/users/\{user_id\}/disable$",
                   r"^/api/v1/apikeys/\{key_id\}/revoke$", r"^/api/v1/stream$")


@dataclass
class Served:
    base_url: str
    headers: dict[str, dict[str, str]]


def _serve(dsn: str, data_dir: Path, port: int, ready: threading.Event, stop: threading.Event,
           out: dict[str, str]) -> None:
    async def main() -> None:
        conn = await db.connect(dsn)
        try:
            await users.create_user(conn, username="contract", display_name="Contract Fuzzer", role=Role.SUPERVISOR,
                                    password=PASSWORD, actor=cli_principal())
            _, out["key"] = await apikeys.create_api_key(conn, name="contract-fuzz", role=Role.AUTOMATION,
                                                         actor=cli_principal(), reason="contract test")
        finally:
            await conn.close()
        settings_ = Settings(database_url=SecretStr(dsn), data_dir=data_dir, port=port, connect_devices=False)
        async with stack.service(settings_, ScaledClock()):
            ready.set()
            await asyncio.to_thread(stop.wait)

    try:
        asyncio.run(main())
    except BaseException as exc:  # the fixture says why instead of waiting for a service that never comes
        out["error"] = repr(exc)
        ready.set()


@pytest.fixture(scope="module")
def served(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ready, stop, out = threading.Event(), threading.Event(), {}
    port = free_port()
    thread = threading.Thread(target=_serve, daemon=True, name="contract-service",
                              args=(db_dsn, tmp_path_factory.mktemp("contract"), port, ready, stop, out))
    thread.start()
    try:
        assert ready.wait(60) and "error" not in out, f"the service did not start: {out.get('error')}"
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/api/v1/auth/login", json={"username": "contract", "password": PASSWORD},
                           timeout=10).json()["access_token"]
        yield Served(base, {"user": {"Authorization": f"Bearer {token}"},
                            "apikey": {"Authorization": f"Bearer {out['key']}"}})
    finally:
        stop.set()
        thread.join(30)


@pytest.fixture(scope="module")
def api_schema(served: Served) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json")
    for pattern in OWN_CREDENTIALS:
        schema = schema.exclude(path_regex=pattern)
    return schema


def _fuzz(schema: schemathesis.BaseSchema, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Every operation, a few generated cases each, every check: (cases run, the failure per operation and mode)."""
    failures: dict[str, str] = {}
    total = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:  # valid requests must be accepted, invalid ones refused with a 4xx
            cases, failure = _fuzz_operation(operation, mode, headers)
            total += cases
            if failure is not None:
                failures[f"{operation.label} ({mode.value})"] = failure
    return total, failures


def _fuzz_operation(operation: schemathesis.APIOperation, mode: GenerationMode,
                    headers: dict[str, str]) -> tuple[int, str | None]:
    """(cases run, the first failure's report or None) for one operation in one generation mode."""
    cases = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case: schemathesis.Case) -> None:
        nonlocal cases
        cases += 1
        case.call_and_validate(headers=headers, checks=ALL_CHECKS)

    try:
        run()
    except Unsatisfiable:  # nothing invalid to send (an operation without parameters or body)
        return cases, None
    except Exception as exc:  # the check's own report names the rule that failed and how to reproduce it
        return cases, str(exc)[:2000]
    return cases, None


@pytest.mark.parametrize("who", ["user", "apikey"])
def test_every_operation_keeps_its_contract(api_schema: schemathesis.BaseSchema, served: Served, who: str) -> None:
    cases, failures = _fuzz(api_schema, served.headers[who])
    assert cases >= 2 * len(list(api_schema.get_all_operations()))  # the generator really ran
    assert failures == {}
