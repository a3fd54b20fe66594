"""`culturectl device browse|probe|check|profiles` and `culturectl certs` as a site engineer runs them: real
subprocesses against vendor-shaped devices on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from app.core.clock import ScaledClock
from drivers.modbus_codec import pack
from drivers.profiles import ModbusProfile, OpcUaProfile, build_library, parse_profile
from simulators.incubator import IncubatorSimulator
from simulators.modbus_device import ModbusProfileDevice
from simulators.opcua_device import OpcUaProfileDevice
from simulators.opcua_security import ServerSecurity

CULTURECTL = [sys.executable, "-m", "app.cli"]
PROFILES = Path(__file__).parent.parent / "profiles"
LIB = build_library(PROFILES)


async def _cli(*args: str, data_dir: Path, env: dict[str, str] | None = None, timeout: float = 60
               ) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_")}
    base.update({"CULTURECTL_DATA_DIR": str(data_dir), "CULTURECTL_PROFILES_DIR": str(PROFILES), **(env or {})})
    proc = await asyncio.create_subprocess_exec(*CULTURECTL, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=base)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.fixture
async def acme() -> AsyncIterator[OpcUaProfileDevice]:
    prof = LIB.get("acme-cellmaster-170")
    assert isinstance(prof, OpcUaProfile)
    values = {"ChamberTemp": 37.0, "ChamberCO2": 5.0, "ChamberRH": 93.0, "DoorState": 0.0, "FanSpeed": 900.0}
    async with OpcUaProfileDevice(prof, lambda: values, parents={"ChamberTemp": ("ACME", "Chamber")}) as dev:
        yield dev


async def test_browse_prints_a_draft_profile_that_validates(acme: OpcUaProfileDevice, tmp_path: Path) -> None:
    draft = tmp_path / "draft.yaml"
    code, out = await _cli("device", "browse", acme.endpoint, "--name", "acme-draft", "-o", str(draft),
                           data_dir=tmp_path / "data")
    assert code == 0, out
    assert "browse: level 1:" in out and "variables" in out  # progress on stderr while it walks
    data = yaml.safe_load(draft.read_text())
    points = {p["name"]: p for p in data["points"]}
    temp = points["ChamberTemp"]
    assert temp["node"] == "ns=cellmaster;i=1042" and temp["data_type"] == "Float" and temp["unit"] == "degF"
    assert "ACME/Chamber/ChamberTemp" in temp["description"] and "access r" in temp["description"]
    assert "access rw" in points["TempSet"]["description"]
    assert data["opcua"]["namespaces"] == {"cellmaster": "urn:acme:cellmaster"}
    parse_profile(data, str(draft))  # a valid profile to edit, not to write from scratch
    code, out = await _cli("device", "profiles", str(draft), data_dir=tmp_path / "data")
    assert code == 0 and "ok" in out and "roles: none" in out


async def test_probe_shows_each_register_in_every_type_and_word_order(tmp_path: Path) -> None:
    prof = LIB.get("bioflow-cs200")
    assert isinstance(prof, ModbusProfile)
    async with ModbusProfileDevice(prof, lambda: {"VCD": 1.5e6, "Viability": 92.5}) as dev:
        code, out = await _cli("device", "probe", dev.endpoint, "--unit", "17", "--range", "0-11", "--table", "input",
                               data_dir=tmp_path / "data")
    assert code == 0, out
    lines = {int(line.split()[0]): line for line in out.splitlines() if line[:5].strip().isdigit()}
    hi, _lo = pack("float32", "CDAB", 1.5)
    assert f"0x{hi:04X}" in lines[0] and "float32 CDAB=1.5 " in lines[0] + " "
    assert lines[10].split()[1] == "-" and lines[11].split()[1] == "-"  # the two registers the device refuses


async def test_check_exits_1_on_a_mismatch_and_names_the_point(acme: OpcUaProfileDevice, tmp_path: Path) -> None:
    prof = LIB.get("acme-cellmaster-170")
    broken = prof.model_dump(mode="json", by_alias=True)
    broken["name"] = "acme-wrong"
    broken["points"][1]["node"] = "ns=acme;i=7777"
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": [
        {"name": "acme-1", "profile": "acme-cellmaster-170", "endpoint": acme.endpoint}]}))
    code, out = await _cli("device", "check", str(devices), data_dir=tmp_path / "data")
    assert code == 0, out
    assert "ok  ChamberTemp" in out and "unit=degF" in out and "every point as declared" in out
    devices.write_text(yaml.safe_dump({"devices": [{"name": "acme-2", "profile": broken, "endpoint": acme.endpoint},
                                                   {"name": "gone", "profile": "bioflow-cs200",
                                                    "endpoint": "modbus://127.0.0.1:9"}]}))
    code, out = await _cli("device", "check", str(devices), "--timeout", "10", data_dir=tmp_path / "data")
    assert code == 1, out
    assert "BAD ChamberCO2" in out and "BadNodeIdUnknown" in out and "UNREACHABLE" in out


async def test_certs_from_an_empty_trust_list_to_an_encrypted_browse(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out = await _cli("certs", "show", data_dir=data)
    assert code == 0 and "thumbprint" in out, out
    mine = out.split()[1]
    sim = IncubatorSimulator(ScaledClock(), security=ServerSecurity(tmp_path / "spki", {"engineer": "pw-Secret-1"},
                                                                     trusted_clients={mine}))
    await sim.start()
    try:
        args = ("device", "browse", sim.endpoint, "--policy", "Aes256_Sha256_RsaPss", "--mode", "SignAndEncrypt",
                "--user", "engineer", "--password-env", "ENGINEER_PW")
        env = {"ENGINEER_PW": "pw-Secret-1"}
        code, out = await _cli(*args, data_dir=data, env=env)
        assert code == 1 and "is not trusted" in out, out
        thumb = out.split("culturectl certs trust ")[1].split()[0]
        code, listing = await _cli("certs", "list", data_dir=data)
        assert f"rejected:\n  {thumb}" in listing, listing
        code, out = await _cli("certs", "trust", thumb, data_dir=data)
        assert code == 0 and thumb in out
        code, out = await _cli(*args, data_dir=data, env=env)
        assert code == 0 and "Incubator.Temperature" in out and "pw-Secret-1" not in out, out
        code, out = await _cli("certs", "reject", thumb, data_dir=data)
        assert code == 0
        code, out = await _cli(*args, data_dir=data, env=env)
        assert code == 1 and "is not trusted" in out
    finally:
        await sim.stop()
