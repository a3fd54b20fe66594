"""Pure helpers of the dashboard: what a page shows of a run, an alarm, a step's inputs and a chart.

No I/O here: the page routes (app/web/pages.py) load data with the same protocol, alarm and service functions the API
uses and pass it through these functions to the templates. No business rule is decided here either: step
posts, alarm actions and signatures go to the JSON API, which answers with the rule that applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from app.devices import calibration
from app.protocol.recipe import Recipe, Step, StepInput

PRIORITIES = ("high", "medium", "low", "advisory")
PRIORITY_ICONS = {"high": "\u25b2\u25b2", "medium": "\u25b2", "low": "\u25bc", "advisory": "\u2139"}
STATUS_TEXT = {
    "active_unack": "ACTIVE, UNACKNOWLEDGED",
    "active_ack": "ACTIVE, ACKNOWLEDGED",
    "returned_unack": "RETURNED, UNACKNOWLEDGED",
    "shelved": "SHELVED",
    "suppressed_by_design": "SUPPRESSED BY DESIGN",
    "out_of_service": "OUT OF SERVICE",
    "normal": "NORMAL",
}
STEP_STATUS_ICONS = {"pending": "\u25cb", "open": "\u25d4", "due": "\u25d1", "late": "\u26a0", "missed": "\u2716",
                     "skipped": "\u2192", "done": "\u2714"}
RUN_DAYS = 7
# The run page's charts by role: (device class, role, label); each shows the point playing the role on the bound
# device (channel keys are "<device>.<point>").
CHART_POINTS: tuple[tuple[str, str, str], ...] = (
    ("incubator", "temperature", "Incubator temperature"),
    ("incubator", "co2", "Incubator CO2"),
    ("incubator", "humidity", "Incubator RH"),
    ("culture-system", "viable_cell_density", "Viable cell density"),
    ("culture-system", "viability", "Viability"),
    ("culture-system", "cd7_percent", "%CD7+"),
)


def parse_time(value: str | datetime | None) -> datetime | None:
    """An ISO 8601 string (as the API's JSON has it) or a datetime, as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def fmt_time(value: str | datetime | None, seconds: bool = False) -> str:
    """UTC time as the dashboard shows it: 2026-11-21 14:05 UTC."""
    t = parse_time(value)
    if t is None:
        return "\u2014"
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def fmt_number(value: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits (1.23e+07 style for large counts); text as is."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def run_day(status: str, t0: datetime | None, now: datetime) -> str:
    """'Day x of 7' from T0 (day 1 is the first 24 h after seeding), or 'Planned' before seeding."""
    if status == "planned" or t0 is None or now < t0:
        return "Planned"
    day = int((now - t0) // timedelta(days=1)) + 1
    return f"Day {day} of {RUN_DAYS}"


def countdown_target(next_due: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """What the next step's countdown counts to: (label, ISO time) by its status."""
    if not next_due:
        return ("no step due", None)
    window = next_due.get("window") or {}
    status = next_due.get("status")
    if status in ("pending", "open"):
        return ("due in", window.get("target"))
    if status == "due":
        return ("late in", window.get("latest"))
    if status == "late":
        return ("missed in", window.get("hard_latest") or window.get("latest"))
    return (str(status), None)


def window_text(window: Mapping[str, Any] | None) -> str:
    """A step window as one line: earliest .. latest (target), hard limit if any."""
    if not window:
        return ""
    text = f"{fmt_time(window.get('earliest'))} \u2013 {fmt_time(window.get('latest'))}"
    text += f" (target {fmt_time(window.get('target'))}"
    if window.get("hard_latest"):
        text += f", hard limit {fmt_time(window.get('hard_latest'))}"
    return text + ")"


def alarm_status_text(status: str) -> str:
    """An alarm state in words (colour is never the only signal)."""
    return STATUS_TEXT.get(status, status.replace("_", " ").upper())


def group_alarms(alarms: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Alarms grouped by priority, most urgent first; empty groups left out; order inside kept."""
    groups: dict[str, list[Mapping[str, Any]]] = {p: [] for p in PRIORITIES}
    for a in alarms:
        groups.setdefault(str(a.get("priority")), []).append(a)
    return [(p, items) for p, items in groups.items() if items]


def unacknowledged(alarms: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The alarms waiting for acknowledgement (active_unack, returned_unack): id -> priority. The page title counts
    them; the sound toggle repeats its tone while one of them is high."""
    return {str(a["id"]): str(a.get("priority")) for a in alarms
            if a.get("status") in ("active_unack", "returned_unack")}


def alarm_summary(alarms: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """How many alarms are not normal, how many wait for acknowledgement, and the most urgent priority."""
    items = list(alarms)
    unack = sum(1 for a in items if a.get("status") in ("active_unack", "returned_unack"))
    top = next((p for p in PRIORITIES if any(a.get("priority") == p for a in items)), None)
    return {"count": len(items), "unack": unack, "top": top}


def dose_status(dose: Mapping[str, Any] | None) -> dict[str, Any]:
    """The most recent dose fact of a run: the formulated dose, else the harvest's sufficiency, else the newest
    forecast band."""
    if not dose:
        return {"state": "unknown", "text": "no dose target", "basis": None, "message": ""}
    achieved = dose.get("achieved")
    if achieved:
        ok = bool(achieved.get("within_acceptance"))
        return {"state": "ok" if ok else "alert", "basis": "formulate",
                "text": f"formulated {fmt_number(achieved.get('percent_of_level'))} % of the dose level"
                + ("" if ok else " (outside acceptance)"), "message": achieved.get("message", "")}
    harvest = dose.get("harvest")
    if harvest:
        ok = bool(harvest.get("enough"))
        return {"state": "ok" if ok else "alert", "basis": "harvest",
                "text": f"harvest holds {fmt_number(harvest.get('percent_of_needed'))} % of what is needed"
                + ("" if ok else " (short: QA decides)"), "message": harvest.get("message", "")}
    for basis in ("feed_day5", "day3", "seed"):
        band = dose.get(basis)
        if band:
            below = bool(band.get("below_target"))
            return {"state": "alert" if below else "ok", "basis": basis,
                    "text": ("BELOW TARGET" if below else "on track") + f" ({'day-3' if basis == 'day3' else 'seed'}"
                    " projection)", "message": band.get("message", "")}
    return {"state": "unknown", "basis": None, "message": "",
            "text": f"no projection yet (required {fmt_number(dose.get('required_cd7_cells'))} CD7+ cells)"}


def timeline(schedule: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """Each step's window as percentages of the span from the first earliest to the last deadline."""
    if not schedule:
        return {"start": None, "end": None, "steps": [], "now_pct": None}
    starts = [parse_time(s["window"]["earliest"]) for s in schedule]
    ends = [parse_time(s["window"].get("hard_latest") or s["window"]["latest"]) for s in schedule]
    lo = min(t for t in starts if t is not None)
    hi = max(t for t in ends if t is not None)
    span = max((hi - lo).total_seconds(), 1.0)

    def pct(t: datetime | None) -> float:
        if t is None:
            return 0.0
        return round(min(100.0, max(0.0, (t - lo).total_seconds() / span * 100)), 3)

    steps = []
    for s in schedule:
        w = s["window"]
        e, tg, la = parse_time(w["earliest"]), parse_time(w["target"]), parse_time(w["latest"])
        hard = parse_time(w.get("hard_latest"))
        steps.append({**s, "icon": STEP_STATUS_ICONS.get(str(s["status"]), ""),
                      "window_text": window_text(w),
                      "bar": {"left": pct(e), "width": round(pct(la) - pct(e), 3), "target": pct(tg),
                              "hard_width": round(pct(hard) - pct(la), 3) if hard else 0.0,
                              "done": pct(parse_time(s.get("done_at"))) if s.get("done_at") else None}})
    return {"start": lo.isoformat(), "end": hi.isoformat(), "steps": steps, "now_pct": pct(now)}


def input_field(inp: StepInput) -> dict[str, Any]:
    """What a form shows of one recipe input: its control, unit and valid range (the API checks them)."""
    if inp.min is not None and inp.max is not None:
        rng = f"{fmt_number(inp.min)} \u2013 {fmt_number(inp.max)}"
    elif inp.min is not None:
        rng = f"\u2265 {fmt_number(inp.min)}"
    elif inp.max is not None:
        rng = f"\u2264 {fmt_number(inp.max)}"
    else:
        rng = ""
    control = {"number": "number", "integer": "number", "bool": "bool", "choice": "choice"}.get(inp.kind, "text")
    hint = " ".join(p for p in (f"range {rng}" if rng else "", f"{inp.unit}" if inp.unit and not rng else "",
                                inp.description) if p)
    if rng and inp.unit:
        hint = f"range {rng} {inp.unit}" + (f"; {inp.description}" if inp.description else "")
    return {"name": inp.name, "label": inp.name.replace("_", " "), "kind": inp.kind, "control": control,
            "unit": inp.unit or "", "required": inp.required, "choices": list(inp.choices), "hint": hint,
            "max_length": inp.max_length if inp.kind == "text" else None}


def step_forms(recipe: Recipe | None) -> list[dict[str, Any]]:
    """One form description per recipe step: its inputs, the reagents whose lot and expiry it records, and the
    signature meanings it needs."""
    if recipe is None:
        return []
    names = {m.key: m.name for m in recipe.materials}
    return [_step_form(s, names) for s in recipe.steps]


def _step_form(step: Step, names: Mapping[str, str]) -> dict[str, Any]:
    # the calibration inputs are read from the records when the step is posted: nobody types them
    return {"key": step.key, "title": step.title, "signatures": list(step.signatures),
            "fields": [input_field(i) for i in step.inputs if i.name not in calibration.STEP_INPUTS],
            "read": [i.name.replace("_", " ") for i in step.inputs if i.name in calibration.STEP_INPUTS],
            "materials": [{"key": m, "name": names.get(m, m)} for m in step.materials]}


def limit_bands(definition: Mapping[str, Any] | None) -> dict[str, float]:
    """The HH/H/L/LL values of a limit alarm definition (as GET /api/v1/alarms/{id} shows it)."""
    if not definition or definition.get("kind") != "limit":
        return {}
    out: dict[str, float] = {}
    for level in ("ll", "l", "h", "hh"):
        lim = definition.get(level)
        if isinstance(lim, Mapping) and lim.get("value") is not None:
            out[level] = float(lim["value"])
    return out


def chart_specs(run: Mapping[str, Any], channel_ids: Mapping[str, int], units: Mapping[str, str],
                limits: Mapping[str, Mapping[str, float]], recipe: Recipe | None,
                roles: Mapping[str, str]) -> list[dict[str, Any]]:
    """The run page's charts: channel key and id, label, unit, alarm limits and the recipe's excursion band.

    `roles` maps "<device>.<role>" to the channel key of the point playing it; a role the device lacks has no
    chart."""
    devices = {"incubator": run.get("incubator"), "culture-system": run.get("culture_system")}
    bands = {e.channel: e for e in recipe.excursions} if recipe is not None else {}
    out = []
    for kind, role, label in CHART_POINTS:
        device = devices.get(kind)
        key = roles.get(f"{device}.{role}") if device else None
        if key is None:
            continue
        band = bands.get(f"{kind}.{role}")
        out.append({"channel": key, "channel_id": channel_ids.get(key), "label": label, "unit": units.get(key, ""),
                    "limits": dict(limits.get(key, {})),
                    "band": None if band is None else {"low": band.low, "high": band.high}})
    return out


def chart_range(run: Mapping[str, Any], now: datetime, first_data: datetime | None = None) -> dict[str, str]:
    """The charts' first view, ending now: from a day before T0, but not before the first reading since then,
    at most 8 days back and at least the last hour."""
    t0 = parse_time(run.get("t0")) or parse_time(run.get("planned_t0"))
    start = now - timedelta(days=8) if t0 is None else max(t0 - timedelta(days=1), now - timedelta(days=8))
    if first_data is not None:
        start = max(start, first_data - timedelta(minutes=10))
    start = min(start, now - timedelta(hours=1))
    return {"start": start.isoformat(), "end": now.isoformat()}
