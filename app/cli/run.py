"""`culturectl run ...` and `culturectl step post`: culture runs over the HTTP API, with an API key (or a token).

The service's address is `--url` (default CULTURECTL_URL, else http://127.0.0.1:8000) and the credential
`--api-key` (default CULTURECTL_API_KEY), so automation scripts use the same audited path as people.
Errors print the problem's detail and exit with status 1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

run_app = typer.Typer(help="Culture runs over the HTTP API: create, list, show.", no_args_is_help=True)
step_app = typer.Typer(help="Protocol steps over the HTTP API: post one.", no_args_is_help=True)

Url = Annotated[str, typer.Option("--url", envvar="CULTURECTL_URL", help="the service's base URL")]
ApiKey = Annotated[str, typer.Option("--api-key", envvar="CULTURECTL_API_KEY",
                                     help="an API key ck_... (or a login token)", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="print the response as JSON")]
DEFAULT_URL = "http://127.0.0.1:8000"


def call(method: str, url: str, path: str, key: str, body: Any = None,
         headers: dict[str, str] | None = None) -> Any:
    """One API request; a problem answer is printed (detail, rule) and exits 1."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url.rstrip("/") + "/api/v1" + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Accept": "application/json",
                                          **({"Content-Type": "application/json"} if data else {}),
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read())
        except ValueError:
            problem = {"detail": exc.reason}
        rule = f" [{problem['rule']}]" if isinstance(problem, dict) and problem.get("rule") else ""
        detail = problem.get("detail", "") if isinstance(problem, dict) else str(problem)
        typer.echo(f"error {exc.code}{rule}: {detail}", err=True)
        for e in problem.get("errors", []) if isinstance(problem, dict) else []:
            typer.echo(f"  {e.get('detail') or e.get('msg')}", err=True)
        raise typer.Exit(1) from None
    except urllib.error.URLError as exc:
        typer.echo(f"error: cannot reach {url}: {exc.reason}", err=True)
        raise typer.Exit(1) from None


def _key(api_key: str | None) -> str:
    if not api_key:
        typer.echo("error: give --api-key or set CULTURECTL_API_KEY", err=True)
        raise typer.Exit(2)
    return api_key


@run_app.command("create")
def create(
    donor_id: Annotated[str, typer.Option("--donor-id")],
    patient_id: Annotated[str, typer.Option("--patient-id")],
    weight: Annotated[float, typer.Option("--weight", help="patient weight, kg")],
    dose: Annotated[float, typer.Option("--dose", help="target CD7+ cells/kg, e.g. 4e6")],
    hsct: Annotated[str, typer.Option("--hsct", help="planned HSCT time with a UTC offset (ISO 8601)")],
    cell_source: Annotated[str, typer.Option("--cell-source", help="mobilized or cord")] = "mobilized",
    recipe: Annotated[str, typer.Option("--recipe", help="released recipe key")] = "htlp-dl4-tnfa",
    recipe_version: Annotated[int | None, typer.Option("--recipe-version")] = None,
    planned_t0: Annotated[str | None, typer.Option("--t0", help="planned T0; unset: proposed from the HSCT")] = None,
    incubator: Annotated[str | None, typer.Option("--incubator")] = None,
    culture_system: Annotated[str | None, typer.Option("--culture-system")] = None,
    vessel: Annotated[list[str] | None, typer.Option("--vessel", help="a vessel id (repeat)")] = None,
    url: Url = DEFAULT_URL, api_key: ApiKey = "", as_json: AsJson = False,
) -> None:
    """Plan a run from a released recipe; prints its id, T0 and any infusion warning."""
    body: dict[str, Any] = {"recipe_key": recipe, "donor_id": donor_id, "patient_id": patient_id,
                            "patient_weight_kg": weight, "target_dose_per_kg": dose, "cell_source": cell_source,
                            "hsct_at": hsct, "vessel_ids": vessel or []}
    for name, value in (("recipe_version", recipe_version), ("planned_t0", planned_t0), ("incubator", incubator),
                        ("culture_system", culture_system)):
        if value is not None:
            body[name] = value
    run = call("POST", url, "/runs", _key(api_key), body)
    if as_json:
        typer.echo(json.dumps(run))
        return
    typer.echo(f"run {run['id']} {run['code']}: {run['status']}, planned T0 {run['planned_t0']}")
    if run.get("infusion") and run["infusion"].get("warning"):
        typer.echo(f"warning: {run['infusion']['warning']}")


@run_app.command("list")
def list_runs(url: Url = DEFAULT_URL, api_key: ApiKey = "", as_json: AsJson = False) -> None:
    """Runs, newest first."""
    runs = call("GET", url, "/runs", _key(api_key))
    if as_json:
        typer.echo(json.dumps(runs))
        return
    for r in runs:
        typer.echo(f"{r['id']:>5}  {r['code']:<24} {r['status']:<10} T0 {r['t0'] or r['planned_t0']}  "
                   f"open deviations {r['open_deviations']}")


@run_app.command("show")
def show(run_id: Annotated[int, typer.Argument()], url: Url = DEFAULT_URL, api_key: ApiKey = "",
         as_json: AsJson = False) -> None:
    """A run with its schedule: each step's status and window, the next due step."""
    run = call("GET", url, f"/runs/{run_id}", _key(api_key))
    if as_json:
        typer.echo(json.dumps(run))
        return
    typer.echo(f"run {run['id']} {run['code']}: {run['status']}; now {run['now']}; "
               f"open deviations {run['open_deviations']}")
    for s in run["schedule"]:
        w = s["window"]
        typer.echo(f"  {s['key']:<16} {s['status']:<8} {w['earliest']} .. {w['latest']}"
                   + (f"  done {s['done_at']}" if s["done_at"] else ""))
    if run["next_due"]:
        typer.echo(f"next: {run['next_due']['key']} ({run['next_due']['status']})")


@step_app.command("post")
def post(
    run_id: Annotated[int, typer.Argument()],
    step_key: Annotated[str, typer.Argument()],
    value: Annotated[list[str] | None,
                     typer.Option("--value", "-v", help="NAME=VALUE (JSON value or text); repeat")] = None,
    inputs_file: Annotated[Path | None, typer.Option("--inputs", help="a JSON file of the inputs")] = None,
    lot: Annotated[list[str] | None,
                   typer.Option("--lot", help="REAGENT=LOT@YYYY-MM-DD (the lot and expiry of a material); repeat")
                   ] = None,
    count_import: Annotated[int | None, typer.Option("--count-import", help="a count import's id")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    url: Url = DEFAULT_URL, api_key: ApiKey = "", as_json: AsJson = False,
) -> None:
    """Record a step's inputs (as the API key's owner); prints the record, deviations and dose."""
    inputs: dict[str, Any] = json.loads(inputs_file.read_text()) if inputs_file else {}
    for item in value or []:
        name, sep, raw = item.partition("=")
        if not sep:
            typer.echo(f"error: --value {item!r} is not NAME=VALUE", err=True)
            raise typer.Exit(2)
        try:
            inputs[name] = json.loads(raw)
        except ValueError:
            inputs[name] = raw
    lots: dict[str, dict[str, str]] = {}
    for item in lot or []:
        reagent, sep, rest = item.partition("=")
        number, at, expiry = rest.partition("@")
        if not (sep and at and reagent and number and expiry):
            typer.echo(f"error: --lot {item!r} is not REAGENT=LOT@YYYY-MM-DD", err=True)
            raise typer.Exit(2)
        lots[reagent] = {"lot": number, "expiry": expiry}
    body: dict[str, Any] = {"inputs": inputs}
    if lots:
        body["lots"] = lots
    if count_import is not None:
        body["count_import"] = count_import
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    out = call("POST", url, f"/runs/{run_id}/steps/{step_key}", _key(api_key), body, headers)
    if as_json:
        typer.echo(json.dumps(out))
        return
    rec = out["step_record"]
    typer.echo(f"recorded {rec['step_key']} of run {rec['run_id']} at {rec['posted_at']} (record {rec['id']}); "
               f"run {out['run']['status']}")
    for d in out["deviations"]:
        typer.echo(f"deviation {d['id']}: {d['description']}")
    for basis, facts in (out.get("dose") or {}).items():
        typer.echo(f"dose {basis}: {facts.get('message', facts)}")
