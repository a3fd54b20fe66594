"""`culturectl notify`: check a notification policy file, put it in force, show who is on call."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

notify_app = typer.Typer(help="Notifications: validate a policy file (rules, rotas), put it in force, who is on call.",
                         no_args_is_help=True)


def _load(file: Path) -> Any:
    """The policy in a YAML or JSON file, or every problem (exit status 1)."""
    import yaml
    from pydantic import ValidationError

    from app.notify.rules import Policy

    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        typer.echo(f"{file}: cannot read the policy: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        return Policy.model_validate(doc if doc is not None else {})
    except ValidationError as exc:
        typer.echo(f"{file}: invalid notification policy", err=True)
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top)"
            typer.echo(f"  {where}: {e['msg']}", err=True)
        raise typer.Exit(1) from None


@notify_app.command("validate")
def validate(file: Annotated[Path, typer.Argument(help="policy YAML or JSON file", dir_okay=False)]) -> None:
    """Validate a notification policy: print its rules and rotas, or every problem (exit status 1)."""
    policy = _load(file)
    typer.echo(f"ok: {len(policy.rules)} rules ({', '.join(r.name for r in policy.rules) or 'none'}), "
               f"{len(policy.rotas)} rotas ({', '.join(r.name for r in policy.rotas) or 'none'})")


@notify_app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="policy YAML or JSON file", dir_okay=False)],
    reason: Annotated[str, typer.Option("--reason", help="why the policy changes (audited)")],
) -> None:
    """Save the file as the new version of the notification policy (audited; the command line is the actor)."""
    from app.auth.principal import cli_principal
    from app.cli.common import run_on_database
    from app.core.clock import utcnow
    from app.notify import store

    policy = _load(file)
    if not reason.strip():
        typer.echo("error: give a reason (--reason)", err=True)
        raise typer.Exit(1)

    async def action(conn: Any) -> int:
        return await store.save(conn, policy, principal=cli_principal(), reason=reason, at=utcnow(), client="cli")

    version = run_on_database(action)
    typer.echo(f"notification policy version {version} in force: {len(policy.rules)} rules, "
               f"{len(policy.rotas)} rotas")


@notify_app.command("oncall")
def oncall(
    at: Annotated[str | None, typer.Option("--at", help="an instant with its UTC offset; default: now")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Who is on call in each rota of the policy in force (overrides included), in the site's time zone."""
    from app.cli.common import run_on_database
    from app.core.clock import utcnow
    from app.notify import rules, store
    from app.settings import Settings

    when = utcnow()
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            when = datetime.min
        if when.tzinfo is None:
            typer.echo(f"error: --at {at!r}: give an ISO time with its UTC offset, e.g. 2026-12-05T03:00+01:00",
                       err=True)
            raise typer.Exit(1)
    zone = Settings().zone()

    async def action(conn: Any) -> list[dict[str, Any]]:
        current = await store.current(conn)
        if current is None:
            return []
        overrides = store.as_overrides(await store.overrides(conn, covering=when))
        return [{"rota": r.name, "users": list(rules.on_call(r, overrides, when, zone))} for r in current[1].rotas]

    out = run_on_database(action)
    if as_json:
        typer.echo(json.dumps({"at": when.isoformat(), "rotas": out}))
        return
    if not out:
        typer.echo("no notification policy with rotas is in force")
    for r in out:
        typer.echo(f"{r['rota']}: {', '.join(r['users']) or 'NOBODY'} at {when.astimezone(zone):%Y-%m-%d %H:%M %Z}")
