"""Recipes: released versions with hash and signatures, a readable view of each, and a side-by-side diff of two.

Loaded as GET /api/v1/recipes and GET /api/v1/signatures load them (app/protocol/recipes.py, app/records/
signatures.py); the diff is app/protocol/recipe_diff.py over the two validated models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from app.api.deps import ConnectionDep, SmallId
from app.api.security import CurrentPrincipal
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol import recipes
from app.protocol.recipe import Recipe, Step, StepInput, Window
from app.protocol.recipe_diff import diff_recipes, value_text
from app.records import signatures
from app.web import render, views

router = render.page_router()

REF = re.compile(r"^([a-z][a-z0-9-]{0,63})/([1-9][0-9]{0,8})$")
# The recipe's sections besides its steps, in the order the page shows them, with their headings.
SECTIONS = (("dose", "Dose"), ("arms", "Trial arms"), ("transplant_types", "Transplant types"),
            ("planning", "Planning"), ("materials", "Materials"), ("vessel_types", "Vessel types"),
            ("seeding", "Seeding"), ("release", "Release and QC tests"), ("excursions", "Excursion bands"),
            ("alarms", "Alarm overrides"), ("projection", "Dose projection"))


def parse_ref(text: str | None, name: str) -> tuple[str, int]:
    """`key/version` of a query parameter; 400 naming the parameter when it is missing or malformed."""
    m = REF.match(text or "")
    if m is None:
        got = "missing" if not text else f"{text!r} is not key/version"
        raise Problem(400, "invalid-parameter", "Invalid query parameter",
                      f"{name}: {got}; give a released recipe as key/version, e.g. htlp-dl4-tnfa/2", field=name)
    return m.group(1), int(m.group(2))


async def _signatures(conn: DBConnection, recipe_id: int | None = None) -> dict[str, list[Any]]:
    """Signatures on recipes (one, or all) by recipe id, oldest first."""
    out: dict[str, list[Any]] = {}
    for s in await signatures.list_signatures(conn, "recipe", None if recipe_id is None else str(recipe_id),
                                              limit=10_000):
        out.setdefault(s.entity_id, []).append(s)
    return out


def _grouped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Released recipes by key, newest version first."""
    keys: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        keys.setdefault(r["key"], []).append(r)
    return [{"key": k, "versions": sorted(v, key=lambda r: -int(r["version"]))} for k, v in keys.items()]


def _compare_defaults(groups: list[dict[str, Any]]) -> tuple[str, str]:
    """The two newest versions of the first key that has two (or the only one twice)."""
    for g in groups:
        if len(g["versions"]) > 1:
            new, old = g["versions"][0], g["versions"][1]
            return f"{old['key']}/{old['version']}", f"{new['key']}/{new['version']}"
    first = groups[0]["versions"][0] if groups else None
    ref = f"{first['key']}/{first['version']}" if first else ""
    return ref, ref


# ---- a recipe in words ----------------------------------------------------------------------------------------

def _hours(h: float) -> str:
    return f"{views.fmt_number(abs(h))} h"


def _offset(anchor: str, h: float) -> str:
    sign = "+" if h > 0 else "\u2212"
    return anchor if h == 0 else f"{anchor} {sign} {_hours(h)}"


def window_words(w: Window, titles: Mapping[str, str]) -> dict[str, str]:
    """A step window as offsets from its anchor: T0, or the named step's done time."""
    anchor = "T0" if w.anchor == "t0" else f"“{titles.get(w.anchor, w.anchor)}” done"
    hard = w.latest if w.hard_latest is None else w.hard_latest
    return {"anchor": anchor, "target": _offset(anchor, w.target),
            "soft": f"{_offset(anchor, w.earliest)} \u2013 {_offset(anchor, w.latest)}",
            "hard": _offset(anchor, hard) + ("" if w.hard_latest is not None else " (the latest time)")}


def _range(lo: float | None, hi: float | None, unit: str | None) -> str:
    u = f" {unit}" if unit else ""
    if lo is None and hi is None:
        return ""
    if lo is None:
        return f"\u2264 {views.fmt_number(hi)}{u}"
    if hi is None:
        return f"\u2265 {views.fmt_number(lo)}{u}"
    return f"{views.fmt_number(lo)} \u2013 {views.fmt_number(hi)}{u}"


def input_words(i: StepInput) -> dict[str, Any]:
    """An input's kind, unit, valid range or choices, and its acceptance limit, in words."""
    if i.expected_from is not None:
        accept = f"equals the run's {i.expected_from.replace('_', ' ')}"
    elif i.expected is not None:
        accept = f"= {value_text(i.expected)}"
    else:
        accept = _range(i.accept_min, i.accept_max, i.unit)
    valid = ", ".join(i.choices) if i.choices else _range(i.min, i.max, i.unit)
    if i.kind == "text":
        valid = f"up to {i.max_length} characters"
    return {"input": i, "valid": valid, "accept": accept,
            "on_failure": f"{i.severity}{': ' + i.limit_label if i.limit_label else ''}" if accept else ""}


def step_words(step: Step, recipe: Recipe) -> dict[str, Any]:
    titles = {s.key: s.title for s in recipe.steps}
    names = {m.key: m.name for m in recipe.materials}
    door = step.door_opening
    return {"step": step, "window": window_words(step.window, titles),
            "predecessors": [titles.get(p, p) for p in step.predecessors],
            "inputs": [input_words(i) for i in step.inputs],
            "materials": [f"{names.get(m, m)} ({m})" for m in step.materials],
            "setpoints": [f"{sp.device_kind}.{sp.point} = {views.fmt_number(sp.value)} "
                          f"({'when the step opens' if sp.apply == 'on_open' else 'when it is done'})"
                          for sp in step.setpoints],
            "door": "" if door is False else ("planned, door alarms suppressed by design" if door is True
                                              else "planned: " + value_text(door.model_dump(mode="json")))}


def flat(rows: list[Any]) -> bool:
    """Rows whose values are all plain (no object, no list of objects): a small table even deep inside."""
    return all(not isinstance(v, Mapping) and not (isinstance(v, list) and any(isinstance(x, Mapping) for x in v))
               for r in rows for v in r.values())


def sections(recipe: Recipe) -> list[dict[str, Any]]:
    """The recipe's other sections that it has, as JSON for the generic renderer (recipe_value.html)."""
    data = recipe.model_dump(mode="json")
    return [{"key": k, "title": t, "value": data[k]} for k, t in SECTIONS if data.get(k) not in (None, [], {})]


# ---- pages -----------------------------------------------------------------------------------------------------

@router.get("/recipes", response_class=HTMLResponse)
async def recipes_page(request: Request, principal: CurrentPrincipal, conn: ConnectionDep) -> HTMLResponse:
    groups = _grouped(await recipes.list_recipes(conn))
    a, b = _compare_defaults(groups)
    return render.page(request, "recipes.html", principal, "recipes", groups=groups,
                       signatures=await _signatures(conn), compare_a=a, compare_b=b)


@router.get("/recipes/diff", response_class=HTMLResponse)
async def recipe_diff_page(request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                           a: Annotated[str | None, Query(max_length=100)] = None,
                           b: Annotated[str | None, Query(max_length=100)] = None) -> HTMLResponse:
    ref_a, ref_b = parse_ref(a, "a"), parse_ref(b, "b")
    row_a, row_b = await recipes.find_recipe(conn, *ref_a), await recipes.find_recipe(conn, *ref_b)
    old, new = recipes.recipe_of(row_a), recipes.recipe_of(row_b)
    return render.page(request, "recipe_diff.html", principal, "recipes", diff=diff_recipes(old, new),
                       old=recipes.recipe_view(row_a), new=recipes.recipe_view(row_b), value_text=value_text,
                       groups=_grouped(await recipes.list_recipes(conn)),
                       compare_a=f"{ref_a[0]}/{ref_a[1]}", compare_b=f"{ref_b[0]}/{ref_b[1]}")


@router.get("/recipes/{key}/{version}", response_class=HTMLResponse)
async def recipe_page(key: str, version: SmallId, request: Request, principal: CurrentPrincipal,
                      conn: ConnectionDep) -> HTMLResponse:
    row = await recipes.find_recipe(conn, key, version)  # 404 problem naming what was asked
    recipe = recipes.recipe_of(row)
    sigs = (await _signatures(conn, int(row["id"]))).get(str(row["id"]), [])
    return render.page(request, "recipe.html", principal, "recipes", meta=recipes.recipe_view(row), recipe=recipe,
                       signatures=sigs, steps=[step_words(s, recipe) for s in recipe.steps],
                       sections=sections(recipe), value_text=value_text, flat=flat)
