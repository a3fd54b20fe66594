"""Secure OPC UA against a real secured server on 127.0.0.1: every policy and mode, user name and password, the
trust list on both sides, and no fallback to SecurityPolicy None."""

from __future__ import annotations

import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import ua

from app.core.clock import ScaledClock
from app.runtime import quiet_library_loggers
from drivers.base import DeviceProtocolError
from drivers.devices import DeviceConfig, OpcUaSecurity
from drivers.opcua import OpcUaDriver
from drivers.opcua_security import Pki, thumbprint
from simulators.incubator import IncubatorSimulator
from simulators.opcua_security import ServerSecurity

PASSWORD = "Incubator-Secret-9"


def _config(endpoint: str, policy: str, mode: str, password_env: str = "CC_TEST_OPCUA_PASSWORD") -> DeviceConfig:
    return DeviceConfig(name="inc-secure", kind="incubator", endpoint=endpoint, timeout=5.0,
                        security=OpcUaSecurity(policy=policy, mode=mode, username="culturectl",  # type: ignore[arg-type]
                                               password_env=password_env))


@pytest.fixture
async def pki(tmp_path: Path) -> Pki:
    store = Pki.in_data_dir(tmp_path / "data")
    await store.own()
    return store


@pytest.fixture
async def secured(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[IncubatorSimulator]:
    monkeypatch.setenv("CC_TEST_OPCUA_PASSWORD", PASSWORD)
    mine = thumbprint(pki.cert_file.read_bytes())
    sim = IncubatorSimulator(ScaledClock(), security=ServerSecurity(tmp_path / "server-pki", {"culturectl": PASSWORD},
                                                                     trusted_clients={mine}))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def _connect(cfg: DeviceConfig, data_dir: Path) -> OpcUaDriver:
    driver = OpcUaDriver(cfg, ScaledClock(), data_dir=data_dir)
    try:
        await driver.connect()
    except BaseException:
        await driver.close()
        raise
    return driver


async def test_every_policy_and_mode_after_trusting_the_server(secured: IncubatorSimulator, pki: Pki,
                                                               tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    # an empty trust list: refused, with the thumbprint and the command that trusts it
    with pytest.raises(DeviceProtocolError) as exc:
        await _connect(_config(secured.endpoint, "Basic256Sha256", "SignAndEncrypt"), data)
    assert secured.security is not None
    t = thumbprint(secured.security.certificate())
    assert f"thumbprint {t}" in str(exc.value) and f"culturectl certs trust {t}" in str(exc.value)
    assert pki.listing()["rejected"][0][0] == t
    pki.trust(t)
    for policy in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"):
        for mode in ("Sign", "SignAndEncrypt"):
            driver = await _connect(_config(secured.endpoint, policy, mode), data)
            try:
                assert driver.connected and all(c.ok for c in driver.checks)
                reading = await anext(driver.readings())
                assert reading.value is not None
                client = driver._client
                assert client is not None and client.security_policy.Mode == getattr(ua.MessageSecurityMode, mode)
            finally:
                await driver.close()
    assert stat.S_IMODE(pki.key_file.stat().st_mode) == 0o600
    # culturectl never logs it; asyncua's DEBUG messages print request bodies, so the service never lets asyncua
    # log below INFO, not even at log level DEBUG
    assert not [r for r in caplog.records if r.name.startswith("culturectl") and PASSWORD in r.getMessage()]
    quiet_library_loggers()
    assert not logging.getLogger("asyncua.client.ua_client").isEnabledFor(logging.DEBUG)


async def test_a_client_the_server_does_not_trust_and_a_wrong_password_are_refused(
        tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_TEST_OPCUA_PASSWORD", PASSWORD)
    sim = IncubatorSimulator(ScaledClock(), security=ServerSecurity(tmp_path / "spki", {"culturectl": PASSWORD},
                                                                     trusted_clients={"0" * 40}))
    await sim.start()
    try:
        assert sim.security is not None
        pki.trust(str(sim.security.cert_file))  # we trust the server; it does not trust us
        with pytest.raises(DeviceProtocolError, match="refused the session"):
            await _connect(_config(sim.endpoint, "Basic256Sha256", "Sign"), tmp_path / "data")
        sim.security.trusted_clients = None  # now it would take any client certificate ...
        monkeypatch.setenv("CC_TEST_OPCUA_PASSWORD", "not-the-password")
        with pytest.raises(DeviceProtocolError):  # ... but not a wrong password
            await _connect(_config(sim.endpoint, "Basic256Sha256", "Sign"), tmp_path / "data")
        monkeypatch.delenv("CC_TEST_OPCUA_PASSWORD")
        with pytest.raises(DeviceProtocolError, match="CC_TEST_OPCUA_PASSWORD is not set"):
            await _connect(_config(sim.endpoint, "Basic256Sha256", "Sign"), tmp_path / "data")
    finally:
        await sim.stop()


async def test_no_fallback_to_none_when_the_policy_is_not_offered(tmp_path: Path, pki: Pki,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_TEST_OPCUA_PASSWORD", PASSWORD)
    security = ServerSecurity(tmp_path / "spki", {"culturectl": PASSWORD}, allow_none=True,
                              policies=[ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    sim = IncubatorSimulator(ScaledClock(), security=security)
    await sim.start()
    try:
        pki.trust(str(security.cert_file))
        with pytest.raises(DeviceProtocolError, match="offers no endpoint with Aes256_Sha256_RsaPss/Sign "
                                                      r"\(offers: .*None.*\); not connecting with less"):
            await _connect(_config(sim.endpoint, "Aes256_Sha256_RsaPss", "Sign"), tmp_path / "data")
    finally:
        await sim.stop()


def test_the_password_comes_from_a_file_or_the_environment_never_the_devices_file(tmp_path: Path) -> None:
    from drivers.opcua_security import password_of

    secret = tmp_path / "opcua.pw"
    secret.write_text("From-A-File-3\nignored second line\n")
    sec = OpcUaSecurity(policy="Basic256Sha256", mode="SignAndEncrypt", username="u", password_file=secret)
    assert password_of(sec) == "From-A-File-3"
    with pytest.raises(DeviceProtocolError, match="cannot read the password file"):
        password_of(sec.model_copy(update={"password_file": tmp_path / "missing"}))
    with pytest.raises(ValueError, match="needs password_env or password_file"):
        OpcUaSecurity(policy="Basic256Sha256", mode="Sign", username="u")
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        OpcUaSecurity(policy="Basic256Sha256", mode="Sign", username="u", password="inline")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="needs mode Sign or SignAndEncrypt"):
        OpcUaSecurity(policy="Basic256Sha256")
