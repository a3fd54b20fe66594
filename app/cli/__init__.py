"""The `culturectl` command: serve, demo, simulate, database migrations, devices and certificates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from pydantic import SecretStr

from app.cli.admin import apikey_app, user_app
from app.cli.audit import audit_app
from app.cli.common import configure_logging, settings_with, with_database
from app.cli.device import certs_app, device_app
from app.cli.notify import notify_app
from app.cli.recipe import recipe_app
from app.cli.run import run_app, step_app
from app.cli.sbom import sbom_command
from app.core.clock import ScaledClock, utcnow
from app.settings import Settings

if TYPE_CHECKING:  # for annotations only: the demo's modules load when the demo runs
    from app.demo.setup import DemoAccounts, DemoRun
    from app.demo.stack import Simulators

app = typer.Typer(help="culturectl: monitor and control 7-day cell-culture runs.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
app.add_typer(audit_app, name="audit")
app.add_typer(recipe_app, name="recipe")
app.add_typer(notify_app, name="notify")
app.add_typer(run_app, name="run")
app.add_typer(step_app, name="step")
app.add_typer(device_app, name="device")
app.add_typer(certs_app, name="certs")
app.command("sbom")(sbom_command)

DEMO_SCALE = 7 * 24 * 60 / 30  # 7 days in 30 minutes

log = logging.getLogger("culturectl.cli")


async def _serve(settings: Settings, clock: ScaledClock | None = None) -> None:
    from app.main import create_app, make_server

    await make_server(create_app(settings, clock=clock), settings).serve()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="bind port")] = None,
    time_scale: Annotated[float | None, typer.Option(help="clock seconds per wall second")] = None,
) -> None:
    """Run the service (API, live stream, device supervisors, ingest) with settings from CULTURECTL_*."""
    settings = settings_with(host=host, port=port, time_scale=time_scale)
    configure_logging(settings.log_level)
    asyncio.run(_serve(settings))


@app.command()
def simulate(
    which: Annotated[str, typer.Argument(
        help="incubator, culture-system or all; or `fault` to talk to a running fault control interface")] = "all",
    action: Annotated[str | None, typer.Argument(help="after `fault`: inject, clear or list")] = None,
    spec: Annotated[str | None, typer.Argument(
        help="after `fault inject|clear`: SIMULATOR:FAULT:POINT (simulator and point optional), "
        "e.g. culture-system:frozen_sensor:ph")] = None,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    incubator_port: Annotated[int, typer.Option(help="OPC UA port")] = 4840,
    culture_port: Annotated[int, typer.Option(help="Modbus TCP port")] = 5020,
    time_scale: Annotated[float | None, typer.Option(help="clock seconds per wall second")] = None,
    seed: Annotated[int, typer.Option(help="seed of the physics noise")] = 0,
    fault: Annotated[list[str] | None, typer.Option(
        "--fault", help="inject SIMULATOR:FAULT:POINT at start (repeatable; simulator and point optional); "
        "the simulator defaults to the only one with that fault; faults: door_left_open, co2_supply_empty, "
        "heater_stuck_on, heater_stuck_off, frozen_sensor, modbus_timeout, opcua_restart, setpoint_ignored")] = None,
    control_port: Annotated[int | None, typer.Option(
        help="serve the fault control interface on 127.0.0.1:PORT")] = None,
    control: Annotated[str, typer.Option(help="with `fault`: URL of the control interface")]
    = "http://127.0.0.1:8765",
) -> None:
    """Run the hardware simulators on the shared clock (CULTURECTL_CLOCK_EPOCH / _TIME_SCALE), or drive their faults.

    `culturectl simulate fault inject|clear|list --control URL` talks to simulators started with --control-port.
    """
    from simulators.faults import FaultRequest, parse_fault_spec
    from simulators.runner import run_simulators

    def parse(text: str, option: str) -> FaultRequest:
        try:
            return parse_fault_spec(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=option) from None

    if which == "fault":
        if action not in ("inject", "clear", "list"):
            raise typer.BadParameter(f"{action!r}: choose inject, clear or list", param_hint="ACTION")
        if action == "list":
            _fault_call(control, "GET", "/faults")
            return
        if spec is None:
            raise typer.BadParameter("give the fault as [simulator:]fault[:point]", param_hint="SPEC")
        req = parse(spec, "SPEC")
        if action == "inject":
            _fault_call(control, "POST", "/faults",
                        json={"simulator": req.simulator, "fault": str(req.fault), "point": req.point})
        else:
            _fault_call(control, "DELETE", f"/faults/{req.simulator}/{req.fault}",
                        params={"point": req.point} if req.point else None)
        return
    if which not in ("incubator", "culture-system", "all"):
        raise typer.BadParameter(f"{which!r}: choose incubator, culture-system, all or fault")
    if action is not None or spec is not None:
        raise typer.BadParameter(f"unexpected argument {action or spec!r} after {which!r}")
    faults = [parse(text, "--fault") for text in fault or []]
    wrong = [r for r in faults if which != "all" and r.simulator != which]
    if wrong:
        raise typer.BadParameter(f"{wrong[0].fault} is a fault of the {wrong[0].simulator} simulator, "
                                 f"which is not being run", param_hint="--fault")
    settings = settings_with(time_scale=time_scale)
    configure_logging(settings.log_level)
    kind: Literal["incubator", "culture-system", "all"] = which  # type: ignore[assignment]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_simulators(kind, settings.make_clock(), host=host, incubator_port=incubator_port,
                                   culture_port=culture_port, seed=seed, faults=faults, control_port=control_port))


def _fault_call(control: str, method: str, path: str, **kwargs: object) -> None:
    """One request to the fault control interface; prints the active faults, exits 2 on a refused fault."""
    import httpx

    try:
        response = httpx.request(method, control.rstrip("/") + path, timeout=10, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the fault control interface at {control}: {exc}", err=True)
        raise typer.Exit(1) from None
    body = response.json() if response.content else {}
    if response.status_code >= 400:
        typer.echo(f"refused ({response.status_code}): {body.get('detail', body)}", err=True)
        raise typer.Exit(2 if response.status_code == 400 else 1)
    lines = [f"{f['simulator']}  {f['fault']}" + (f"  point={f['point']}" if f.get("point") else "")
             + f"  since {f['since']}" for faults in body.values() for f in faults]
    typer.echo("\n".join(lines) if lines else "no active faults")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply migrations (to the embedded database when CULTURECTL_DATABASE_URL is unset)."""
    with_database(lambda dsn: _migrate(dsn, "upgrade", revision))


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. base or -1")]) -> None:
    """Revert migrations down to REVISION."""
    with_database(lambda dsn: _migrate(dsn, "downgrade", revision))


def _migrate(dsn: str, direction: str, revision: str) -> None:
    from app import db

    (db.upgrade if direction == "upgrade" else db.downgrade)(dsn, revision)
    typer.echo(f"database {direction}d to {revision}")


def _free_or(port: int) -> int:
    """`port` when nothing listens on it, else a free one (so the demo runs beside other things)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="HTTP port of the service and dashboard")] = 8000,
    time_scale: Annotated[float, typer.Option(help="clock seconds per wall second (default: 7 days in 30 min)")]
    = DEMO_SCALE,
    data_dir: Annotated[Path, typer.Option(help="where the demo keeps its database and state")]
    = Path("./culturectl-data"),
    seed: Annotated[int, typer.Option(help="seed of the simulators' physics")] = 0,
    exit_after: Annotated[float | None, typer.Option(help="stop by itself after this many wall seconds")]
    = None,
    open_browser: Annotated[bool, typer.Option("--open/--no-open",
                                               help="open the dashboard in a browser (when run from a terminal)")]
    = True,
) -> None:
    """Embedded PostgreSQL + both simulators + the service, on a sped-up clock. Ctrl-C stops it all."""
    configure_logging(os.environ.get("CULTURECTL_LOG_LEVEL", "INFO"))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(port, time_scale, data_dir.resolve(), seed, exit_after, open_browser))


def _open_browser(url: str) -> None:
    import webbrowser

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return  # no desktop: a console browser would take over the terminal
    with contextlib.suppress(Exception):  # no browser on this machine: the printed URL is enough
        webbrowser.open(url)


async def _demo(port: int, scale: float, data_dir: Path, seed: int, exit_after: float | None,
                open_browser: bool = False) -> None:
    # The service's modules load here, not when the command line is parsed: every other command starts fast.
    from app import db
    from app.demo import stack
    from app.demo.client import DemoAutomation
    from app.demo.setup import (
        DEMO_PASSWORD,
        DEMO_T0_AFTER,
        active_demo_run,
        create_demo_run,
        ensure_demo_accounts,
        ensure_demo_recipe,
    )
    from app.devices.registry import sync_devices
    from app.ingest import history
    from drivers.devices import load_devices

    async with stack.database(data_dir) as dsn:
        conn = await db.connect(dsn)
        try:
            demo_accounts = await ensure_demo_accounts(conn, data_dir)
        finally:
            await conn.close()
        # Continue the simulated time where the last demo stopped, so reused data stays in order.
        last = await history.last_telemetry_time(dsn)
        wall = utcnow()
        origin = max(wall, last + timedelta(seconds=1)) if last else wall
        clock = ScaledClock(epoch=wall, scale=scale, origin=origin)
        conn = await db.connect(dsn)
        try:
            await ensure_demo_recipe(conn)
            demo_run = await active_demo_run(conn)
        finally:
            await conn.close()
        # The culture simulator grows the cells from the demo run's T0 (a new run: planned a little after now).
        t0 = demo_run.t0 if demo_run is not None else origin + DEMO_T0_AFTER
        await asyncio.to_thread((data_dir / "demo.json").write_text, json.dumps({"t0": t0.isoformat(), "seed": seed}))
        async with stack.simulators(clock, data_dir / "demo-devices.yaml", seed=seed, culture_t0=t0,
                                    incubator_port=_free_or(4840), culture_port=_free_or(5020)) as sims:
            if demo_run is None:  # the run is bound to the demo devices: register them first (the service does too)
                conn = await db.connect(dsn)
                try:
                    await sync_devices(conn, load_devices(sims.devices_file))
                    demo_run = await create_demo_run(conn, origin, t0)
                finally:
                    await conn.close()
            settings = Settings(database_url=SecretStr(dsn), data_dir=data_dir, devices_file=sims.devices_file,
                                clock_epoch=wall, clock_origin=origin, time_scale=scale, host="127.0.0.1", port=port)
            async with stack.service(settings, clock) as svc:
                _print_demo(svc.base_url, data_dir, clock, scale, t0, sims, demo_accounts, demo_run)
                if open_browser and sys.stdout.isatty():  # a person at a terminal: show them the dashboard
                    asyncio.get_running_loop().call_later(1.0, _open_browser, f"{svc.base_url}/")
                stopper = None
                if exit_after is not None:
                    stopper = asyncio.get_running_loop().call_later(
                        exit_after, lambda: setattr(svc.server, "should_exit", True))
                alarms = svc.runtime.alarms

                async def door(step: str) -> None:
                    await stack.open_door(clock, sims.incubator, sync=None if alarms is None else alarms.sync)

                automation = DemoAutomation(svc.base_url, demo_accounts.automation_key, DEMO_PASSWORD, demo_run.id,
                                            poll=min(1.0, max(0.05, 600 / scale)), door=door)
                client_task = asyncio.create_task(automation.run(), name="demo-automation")
                try:
                    await svc.wait_closed()
                finally:
                    client_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await client_task
                    if stopper is not None:
                        stopper.cancel()
    typer.echo("culturectl demo stopped; data kept in " + str(data_dir))


def _print_demo(base_url: str, data_dir: Path, clock: ScaledClock, scale: float, t0: datetime, sims: Simulators,
                demo_accounts: DemoAccounts, demo_run: DemoRun) -> None:
    from app.demo.setup import KEY_FILE

    day = (clock.now() - t0) / timedelta(days=1)
    dashboard = f"{base_url}/"
    typer.echo(
        f"culturectl demo: open the dashboard at {dashboard}  (log in as operator, password "
        f"{demo_accounts.password})\n"
        f"  database        embedded PostgreSQL in {data_dir / 'pg'}\n"
        f"  incubator       OPC UA simulator at {sims.incubator.endpoint}\n"
        f"  culture system  Modbus TCP simulator at {sims.culture.endpoint}\n"
        f"  clock           x{scale:g} (7 days in {7 * 24 * 60 / scale:.0f} min), now {clock.now():%Y-%m-%d %H:%M} "
        f"UTC, culture day {day:.1f}\n"
        f"  service         {base_url}  (API docs: {base_url}/docs)\n"
        f"  users           {', '.join(f'{u} ({r.value})' for u, r in demo_accounts.users)}; "
        f"password {demo_accounts.password}\n"
        f"  automation key  {demo_accounts.automation_key}  (also in {data_dir / KEY_FILE})\n"
        f"  demo run        id {demo_run.id} ({demo_run.code}), T0 {t0:%Y-%m-%d %H:%M} UTC: "
        f"{dashboard}runs/{demo_run.id} (API: {base_url}/api/v1/runs/{demo_run.id})\n"
        "Ctrl-C stops everything."
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
