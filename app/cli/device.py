"""`culturectl device` and `culturectl certs`: discover devices, check them against their profiles, and manage the
trust list of OPC UA server certificates."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
import yaml

device_app = typer.Typer(help="Devices: browse an OPC UA server, probe Modbus registers, check configured devices "
                              "and profiles.", no_args_is_help=True)
certs_app = typer.Typer(help="OPC UA certificates: culturectl's own, and the server certificates it trusts.",
                        no_args_is_help=True)

Policy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
Mode = Literal["None", "Sign", "SignAndEncrypt"]


def _data_dir() -> Path:
    from app.settings import Settings

    return Settings().data_dir


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


@device_app.command("browse")
def browse(
    endpoint: Annotated[str, typer.Argument(help="opc.tcp://host:port/path")],
    policy: Annotated[Policy, typer.Option(help="security policy")] = "None",
    mode: Annotated[Mode, typer.Option(help="message security mode")] = "None",
    user: Annotated[str | None, typer.Option(help="user name (password from --password-env)")] = None,
    password_env: Annotated[str | None, typer.Option(help="environment variable holding the password")] = None,
    name: Annotated[str, typer.Option(help="the draft profile's name")] = "new-device",
    device_class: Annotated[str, typer.Option("--class", help="incubator or culture-system")] = "incubator",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write the draft here, not to stdout")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 10.0,
) -> None:
    """Walk the server's address space and print a draft profile: every numeric or boolean variable with its
    NodeId, browse path, data type, access level and units (fill in roles, units and limits)."""
    from drivers.base import DriverError
    from drivers.devices import OpcUaSecurity
    from drivers.discovery import browse_opcua, connect_opcua, draft_profile

    try:
        security = OpcUaSecurity(policy=policy, mode=mode, username=user, password_env=password_env)
    except ValueError as exc:
        raise _fail(f"security options: {exc}") from None

    async def go() -> tuple[dict[str, object], int, float]:
        started = time.monotonic()
        client = await connect_opcua(endpoint, security, timeout, _data_dir())
        try:
            result = await browse_opcua(client, progress=lambda line: typer.echo(f"browse: {line}", err=True))
        finally:
            await client.disconnect()
        return draft_profile(result, name, device_class), len(result.variables), time.monotonic() - started

    try:
        draft, count, took = asyncio.run(go())
    except DriverError as exc:
        raise _fail(str(exc)) from None
    text = (f"# draft profile from {endpoint}: {count} variables, browsed in {took:.1f} s\n"
            "# give each point you need a role (culturectl docs: docs/devices.md), check units, set writable with "
            "min and max\n" + yaml.safe_dump(draft, sort_keys=False, allow_unicode=True))
    if output is not None:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"{output}: {len(draft['points'])} points ({count} variables) in {took:.1f} s")  # type: ignore[arg-type]
    else:
        typer.echo(text)


@device_app.command("probe")
def probe(
    endpoint: Annotated[str, typer.Argument(help="modbus://host:port")],
    unit: Annotated[int, typer.Option(help="unit (device) id")] = 1,
    range_: Annotated[str, typer.Option("--range", help="first-last register, e.g. 0-199")] = "0-19",
    table: Annotated[str, typer.Option(help="holding or input")] = "holding",
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 2.0,
) -> None:
    """Read a register range and print each address decoded in every candidate type and word order."""
    from drivers.base import DriverError
    from drivers.discovery import probe_modbus
    from drivers.modbus_codec import candidates

    try:
        first, last = (int(x) for x in range_.split("-", 1))
    except ValueError:
        raise _fail(f"--range {range_!r}: use first-last, e.g. 0-199") from None
    if not 0 <= first <= last <= 65535 or table not in ("holding", "input"):
        raise _fail("--range must be within 0-65535 (first <= last); --table holding or input")
    try:
        result = asyncio.run(probe_modbus(endpoint, unit, first, last, table, timeout))
    except DriverError as exc:
        raise _fail(str(exc)) from None
    regs = result.registers
    typer.echo(f"# {endpoint} unit {unit}, {table} registers {first}-{last} ('-': refused by the device)")
    for i, r in enumerate(regs):
        address = first + i
        if r is None:
            typer.echo(f"{address:5d}  -")
            continue
        run = []
        for v in regs[i : i + 4]:
            if v is None:
                break
            run.append(v)
        cands = candidates(run, 0)
        shown = "  ".join(f"{k}={v:.6g}" for k, v in cands.items() if k != "uint16")
        typer.echo(f"{address:5d}  0x{r:04X}  uint16={r}  {shown}")


@device_app.command("check")
def check(
    devices_file: Annotated[Path | None, typer.Argument(help="devices YAML (default: CULTURECTL_DEVICES_FILE)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to connect to each device")] = 20.0,
) -> None:
    """Connect to every configured device and report per point: found, type, unit, value, writable as declared.
    Exit status 1 on any mismatch or unreachable device."""
    from app.core.clock import ScaledClock
    from app.settings import Settings
    from drivers.base import DriverError
    from drivers.devices import DevicesFileError, load_devices
    from drivers.discovery import check_device, format_checks

    settings = Settings()
    try:
        devices = load_devices(devices_file or settings.devices_file, settings.profiles_dir)
    except (DevicesFileError, OSError) as exc:
        raise _fail(str(exc)) from None

    async def go() -> bool:
        ok = True
        for d in devices:
            typer.echo(f"{d.name}: {d.protocol} {d.endpoint}, profile {d.profile_spec.name} "
                       f"{d.profile_spec.version}")
            try:
                checks = await asyncio.wait_for(check_device(d, ScaledClock(), settings.data_dir), timeout)
            except (DriverError, TimeoutError) as exc:
                typer.echo(f"  UNREACHABLE {exc or 'timed out'}")
                ok = False
                continue
            for line in format_checks(checks):
                typer.echo(line)
            ok = ok and all(c.ok for c in checks)
        return ok

    if not asyncio.run(go()):
        raise typer.Exit(1)
    typer.echo("every point as declared")


@device_app.command("profiles")
def profiles(
    file: Annotated[list[Path] | None, typer.Argument(help="profile files to validate (default: list the library)")]
    = None,
) -> None:
    """Validate profile files (errors name the file, point and field), or list the library and the site's."""
    from app.settings import Settings
    from drivers.profiles import ProfileError, library, load_profile, point_specs

    if file:
        bad = False
        for f in file:
            try:
                prof = load_profile(f)
            except ProfileError as exc:
                typer.echo(str(exc), err=True)
                bad = True
                continue
            roles = [p.role for p in point_specs(prof) if p.role]
            typer.echo(f"ok {f}: {prof.name} {prof.version} ({prof.protocol}, {prof.device_class}), "
                       f"{len(prof.points)} points, roles: {', '.join(roles) or 'none'}")
        if bad:
            raise typer.Exit(1)
        return
    try:
        lib = library(Settings().profiles_dir)
    except ProfileError as exc:
        raise _fail(str(exc)) from None
    for (n, v), prof in sorted(lib.profiles.items()):
        typer.echo(f"{n} {v}  {prof.protocol} {prof.device_class}  {lib.sources[(n, v)]}")


@certs_app.command("show")
def certs_show() -> None:
    """culturectl's application instance certificate (created now if it does not exist): thumbprint, subject,
    validity, file; give the file to a server's administrator to trust."""
    from cryptography import x509

    from drivers.opcua_security import APPLICATION_URI, Pki, thumbprint

    pki = Pki.in_data_dir(_data_dir())
    cert_file, key_file = asyncio.run(pki.own())
    der = cert_file.read_bytes()
    cert = x509.load_der_x509_certificate(der)
    typer.echo(f"thumbprint  {thumbprint(der)}\nsubject     {cert.subject.rfc4514_string()}\n"
               f"uri         {APPLICATION_URI}\nvalid       {cert.not_valid_before_utc:%Y-%m-%d} to "
               f"{cert.not_valid_after_utc:%Y-%m-%d}\ncertificate {cert_file}\nkey         {key_file} (owner only)")


@certs_app.command("list")
def certs_list() -> None:
    """The trusted and the rejected server certificates."""
    from drivers.opcua_security import Pki

    for which, rows in Pki.in_data_dir(_data_dir()).listing().items():
        typer.echo(f"{which}:")
        for t, subj in rows:
            typer.echo(f"  {t}  {subj}")
        if not rows:
            typer.echo("  (none)")


@certs_app.command("trust")
def certs_trust(
    certificate: Annotated[str, typer.Argument(help="thumbprint of a rejected certificate, or a certificate file")],
) -> None:
    """Trust a server certificate (one that was refused, by thumbprint, or a file from the server's admin)."""
    from drivers.opcua_security import Pki

    try:
        t = Pki.in_data_dir(_data_dir()).trust(certificate)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"trusted {t}")


@certs_app.command("reject")
def certs_reject(thumbprint: Annotated[str, typer.Argument(help="thumbprint of a trusted certificate")]) -> None:
    """Stop trusting a server certificate (it moves to the rejected list)."""
    from drivers.opcua_security import Pki

    try:
        t = Pki.in_data_dir(_data_dir()).untrust(thumbprint)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"rejected {t}")
