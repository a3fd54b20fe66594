"""Device profiles: validation with errors that name the file, the point and the field; units and roles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.devices import DevicesFileError, parse_devices
from drivers.modbus import plan_reads
from drivers.modbus_codec import candidates, decode, encode, pack, unpack
from drivers.profiles import ModbusProfile, ProfileError, build_library, load_profile, parse_profile, point_specs
from drivers.roles import ROLES, conversion

PROFILES = Path(__file__).parent.parent / "profiles"


def _modbus(**point: Any) -> dict[str, Any]:
    base = {"schema": 1, "name": "x", "version": "1", "device_class": "culture-system", "protocol": "modbus",
            "points": [{"name": "VCD", "role": "viable_cell_density", "table": "input", "address": 0,
                        "data_type": "float32", "unit": "cells/mL"}]}
    base["points"].append(point)
    return base


def _error(data: dict[str, Any], source: str = "site/x.yaml") -> str:
    with pytest.raises(ProfileError) as exc:
        parse_profile(data, source)
    return str(exc.value)


def test_the_shipped_and_test_profiles_load() -> None:
    lib = build_library(PROFILES)
    assert {n for n, _ in lib.profiles} >= {"culturectl-sim-incubator", "culturectl-sim-culture-system",
                                             "acme-cellmaster-170", "lads-incubator", "bioflow-cs200"}
    assert lib.get("acme-cellmaster-170").version == "2.1"
    with pytest.raises(ProfileError, match=re.escape("has no version '9'; known: 2.1")):
        lib.get("acme-cellmaster-170", "9")
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        lib.get("nope")


@pytest.mark.parametrize(("point", "message"), [
    ({"name": "T", "role": "chamber_temperature", "table": "input", "address": 4, "data_type": "float32",
      "unit": "degC"},
     "site/x.yaml: points[1] (T).role: 'chamber_temperature' is not a role of device class culture-system; "
     "known: alarm_beacon, cd7_percent"),
    ({"name": "T", "role": "temperature", "table": "input", "address": 1, "data_type": "float32", "unit": "degC"},
     "site/x.yaml: points[1] (T).address: input 1 overlaps point 'VCD'"),
    ({"name": "T", "table": "input", "address": 4, "data_type": "float16", "unit": "degC"},
     "site/x.yaml: points[1] (T).data_type: Input should be 'bool', 'int16'"),
    ({"name": "T", "role": "temperature", "table": "input", "address": 4, "data_type": "float32", "unit": "mL"},
     "site/x.yaml: points[1] (T).unit: 'mL' cannot be converted to 'degC', the unit of role "
     "culture-system.temperature"),
    ({"name": "T", "table": "input", "address": 4, "data_type": "float32", "colour": "red"},
     "site/x.yaml: points[1] (T).colour: Extra inputs are not permitted"),
    ({"name": "S", "role": "pump_rate_setpoint", "table": "holding", "address": 40, "data_type": "float32",
      "unit": "mL/h", "writable": True},
     "site/x.yaml: points[1] (S): a writable point needs min and max"),
    ({"name": "S", "role": "pump_rate_setpoint", "table": "input", "address": 40, "data_type": "float32",
      "unit": "mL/h", "writable": True, "min": 0, "max": 5},
     "a input cannot be written: only holding registers and coils can"),
    ({"name": "B", "table": "holding", "address": 9, "data_type": "bool"},
     "a bool in a register needs the bit it is (bit: 0..15)"),
    ({"name": "S", "role": "pump_rate_setpoint", "table": "holding", "address": 40, "data_type": "float32",
      "unit": "mL/h", "writable": True, "min": 0, "max": 5, "write_function": 6},
     "write_function 6 cannot write this point; use one of [16]"),
])
def test_a_bad_point_is_refused_naming_the_file_point_and_field(point: dict[str, Any], message: str) -> None:
    assert message in _error(_modbus(**point))


def test_two_bits_of_one_status_word_are_two_points_but_the_same_bit_twice_overlaps() -> None:
    ok = _modbus(name="A", table="input", address=9, data_type="bool", bit=0)
    ok["points"].append({"name": "B", "table": "input", "address": 9, "data_type": "bool", "bit": 3})
    assert isinstance(parse_profile(ok, "x"), ModbusProfile)
    ok["points"].append({"name": "C", "table": "input", "address": 9, "data_type": "bool", "bit": 3})
    assert "points[3] (C).address: input 9 overlaps point 'B'" in _error(ok)


def test_opcua_points_name_their_namespace_and_node_form() -> None:
    base = {"schema": 1, "name": "y", "version": "1", "device_class": "incubator", "protocol": "opcua",
            "opcua": {"namespaces": {"acme": "urn:acme"}}, "points": []}
    cases = [
        ({"name": "T", "node": "ns=vendor;i=1042"}, "points[0] (T).node: namespace 'vendor' is neither an index"),
        ({"name": "T", "node": "ns=acme;i=12a"}, "a numeric identifier (i=) must be digits"),
        ({"name": "T", "node": "Temperature"}, "is not a NodeId"),
        ({"name": "T", "node": "ns=acme;i=1", "browse_path": ["acme:T"]}, "give exactly one of node and browse_path"),
        ({"name": "T", "browse_path": ["other:Chamber", "acme:T"]}, "points[0] (T).browse_path: namespace 'other'"),
        ({"name": "T", "node": "ns=acme;i=1", "data_type": "Float128"}, "points[0] (T).data_type: Input should be"),
    ]
    for point, message in cases:
        assert message in _error({**base, "points": [point]}), point


def test_a_devices_file_error_names_the_file_and_device(tmp_path: Path) -> None:
    text = yaml.safe_dump({"devices": [
        {"name": "inc-9", "profile": "acme-cellmaster-170", "endpoint": "opc.tcp://127.0.0.1:1/x"},
        {"name": "cs-9", "profile": "bioflow-cs200", "protocol": "opcua", "endpoint": "modbus://127.0.0.1:2"},
        {"name": "cs-8", "profile": {"schema": 1, "name": "inline", "version": "1", "device_class": "culture-system",
                                     "protocol": "modbus", "points": [{"name": "x", "table": "input", "address": 0,
                                                                       "role": "bogus"}]},
         "endpoint": "modbus://127.0.0.1:3"},
    ]})
    with pytest.raises(DevicesFileError) as exc:
        parse_devices(text, PROFILES, "site/devices.yaml")
    text_ = str(exc.value)
    assert "site/devices.yaml: devices[1] (cs-9): protocol 'opcua' does not match profile 'bioflow-cs200'" in text_
    assert "devices[2] (cs-8): site/devices.yaml: device 'cs-8': inline profile: points[0] (x).role: 'bogus'" \
        in text_
    devices = parse_devices(yaml.safe_dump({"devices": [yaml.safe_load(text)["devices"][0]]}), PROFILES)
    assert devices[0].kind == "incubator" and devices[0].profile_version == "2.1"
    assert devices[0].role_point("temperature") is not None
    assert devices[0].role_point("temperature").name == "ChamberTemp"  # type: ignore[union-attr]


def test_a_profile_defined_twice_with_one_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text((PROFILES / "acme-incubator.yaml").read_text())
    (tmp_path / "b.yaml").write_text((PROFILES / "acme-incubator.yaml").read_text())
    twice = "b.yaml: profile 'acme-cellmaster-170' version 2.1 is also defined in"
    with pytest.raises(ProfileError, match=re.escape(twice)):
        build_library(tmp_path)


def test_units_convert_to_the_role_unit_or_refuse() -> None:
    gain, bias = conversion("°F", "degC") or (0, 0)
    assert round(98.6 * gain + bias, 6) == 37.0
    assert conversion("fraction", "%") == (100.0, 0.0)
    assert conversion("mL/min", "mL/h") == (60.0, 0.0)
    assert conversion("ppm", "%") == (1e-4, 0.0)
    assert conversion("mL", "degC") is None
    assert all(r.unit for roles in ROLES.values() for r in roles.values())


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
def test_every_word_order_round_trips_and_differs(order: str) -> None:
    regs = pack("float32", order, 12.5)  # type: ignore[arg-type]
    assert unpack("float32", order, regs) == 12.5  # type: ignore[arg-type]
    assert unpack("float64", order, pack("float64", order, -1.25e9)) == -1.25e9  # type: ignore[arg-type]
    assert unpack("int32", order, pack("int32", order, -70000)) == -70000  # type: ignore[arg-type]
    # 12.5 is 0x41480000 big-endian
    expected = {"ABCD": [0x4148, 0x0000], "CDAB": [0x0000, 0x4148], "BADC": [0x4841, 0x0000],
                "DCBA": [0x0000, 0x4841]}[order]
    assert regs == expected


def test_decode_applies_scale_offset_bits_and_units() -> None:
    prof = load_profile(PROFILES / "bioflow-culture-system.yaml")
    specs = {p.name: p for p in point_specs(prof)}
    assert decode(specs["VCD"], pack("float32", "CDAB", 1.5)) == 1.5e6
    assert decode(specs["Viability"], pack("float32", "CDAB", 0.925)) == pytest.approx(92.5)
    assert decode(specs["pH"], [0xFFFF & -5]) == pytest.approx(-0.05)
    assert decode(specs["MediumTotal"], pack("uint32", "CDAB", 250_000)) == pytest.approx(250.0)
    status = 0b1001
    assert decode(specs["PumpRunning"], [status]) == 1.0 and decode(specs["LidClosed"], [status]) == 1.0
    assert decode(specs["PumpRunning"], [0b1000]) == 0.0
    assert encode(specs["PumpRateSet"], 30.0) == pack("float32", "CDAB", 0.5)
    assert "uint16 ABCD" not in candidates([0x4148, 0], 0) and candidates([0x4148, 0], 0)["float32 ABCD"] == 12.5


def test_reads_merge_neighbours_but_never_a_refused_gap_or_more_than_the_limit() -> None:
    prof = load_profile(PROFILES / "bioflow-culture-system.yaml")
    assert isinstance(prof, ModbusProfile)
    spans = [(s.register_type, s.start, s.count) for s in plan_reads(point_specs(prof), prof.modbus)]
    assert spans == [("coil", 5, 1), ("input", 0, 10), ("input", 12, 5), ("holding", 40, 2)]
    wide = prof.modbus.model_copy(update={"max_registers_per_read": 6, "unreadable": [], "max_gap": 10})
    spans = [(s.start, s.count) for s in plan_reads(point_specs(prof), wide) if s.register_type == "input"]
    assert spans == [(0, 6), (6, 4), (12, 5)]
