"""What changed between two versions of a recipe: steps added, removed or changed, and for a changed step (or a
top-level section) each field with its old and new value. Pure functions over two `Recipe` models, no I/O.

Fields are compared on the models' JSON (defaults included, so a default written out is no change). Lists of
objects that name themselves (steps' inputs by `name`, materials and QC tests by `key`, alarm overrides and
excursion bands by `channel`) are matched by that name, so an added input is one change, not a shift of every
later one; other lists (signatures, choices, dose levels) are compared whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.protocol.recipe import Recipe

ChangeKind = Literal["added", "removed", "changed"]
# The fields a list's objects are matched by, in this order (the first every object has, each value once).
IDENTITY_FIELDS = ("key", "name", "channel")
MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs: where (e.g. "window.latest", "inputs[viability].min"), how, old and new value
    (None on the side where it is absent)."""

    path: str
    kind: ChangeKind
    old: Any = None
    new: Any = None


@dataclass(frozen=True, slots=True)
class StepDiff:
    """A step only in one version (added/removed, with its fields in `changes` empty) or in both and changed."""

    key: str
    title: str
    kind: ChangeKind
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True, slots=True)
class RecipeDiff:
    fields: tuple[Change, ...]  # everything but the steps (title, version, dose, materials, release ...)
    steps: tuple[StepDiff, ...]

    @property
    def empty(self) -> bool:
        return not self.fields and not self.steps

    @property
    def counts(self) -> dict[ChangeKind, int]:
        """Steps added, removed and changed."""
        out: dict[ChangeKind, int] = {"added": 0, "removed": 0, "changed": 0}
        for s in self.steps:
            out[s.kind] += 1
        return out


def _identity(items: list[Any]) -> str | None:
    """The field every object of `items` is named by (each name once), or None: compare the list whole."""
    if not items or not all(isinstance(i, Mapping) for i in items):
        return None
    for name in IDENTITY_FIELDS:
        values = [i.get(name) for i in items]
        if all(isinstance(v, str) for v in values) and len(set(values)) == len(values):
            return name
    return None


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    """`value` as path -> leaf; objects of a named list become one entry keyed `path[name]` plus their fields
    (the entry's value is the whole object, so an added or removed one is a single change)."""
    if isinstance(value, Mapping):  # an empty one adds nothing: {} and no entries are the same
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
        return
    if isinstance(value, list | tuple):
        items = list(value)
        if not items:  # like an empty object: an empty list and no list are the same, so [] -> [a] is "a added"
            return
        ident = _identity(items)
        if ident is None:
            out[path] = items
            return
        for item in items:
            sub = f"{path}[{item[ident]}]"
            out[sub] = _Whole(item)
            _flatten({k: v for k, v in item.items() if k != ident}, sub, out)
        return
    out[path] = value


class _Whole:
    """A named object of a list: present or not is what counts, its fields are compared one by one."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Whole)

    __hash__ = None  # type: ignore[assignment]


def _unwrap(v: Any) -> Any:
    return v.value if isinstance(v, _Whole) else v


def diff_values(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[Change, ...]:
    """The changes from `old` to `new` (JSON-like mappings), in the order the fields appear; inside an added or
    removed named object only the object itself is listed."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(old, "", a)
    _flatten(new, "", b)
    out: list[Change] = []
    gone: list[str] = []  # named objects added or removed: their fields are not listed again
    for path in dict.fromkeys([*a, *b]):
        if any(path.startswith(g) and path[len(g):len(g) + 1] in (".", "[") for g in gone):
            continue
        va, vb = a.get(path, MISSING), b.get(path, MISSING)
        if va is MISSING:
            out.append(Change(path, "added", None, _unwrap(vb)))
        elif vb is MISSING:
            out.append(Change(path, "removed", _unwrap(va), None))
        elif va != vb:
            out.append(Change(path, "changed", va, vb))
            continue
        else:
            continue
        if isinstance(va if vb is MISSING else vb, _Whole):
            gone.append(path)
    return tuple(out)


def _step_order(old: Iterable[str], new: Iterable[str]) -> Change | None:
    """The steps both versions have, in another order."""
    both_old = [k for k in old if k in set(new)]
    both_new = [k for k in new if k in set(old)]
    return None if both_old == both_new else Change("step order", "changed", both_old, both_new)


def diff_recipes(old: Recipe, new: Recipe) -> RecipeDiff:
    """What changed from `old` to `new`: top-level fields, then steps in the new version's order (removed steps
    where they were)."""
    da, db = old.model_dump(mode="json"), new.model_dump(mode="json")
    steps_a = {s["key"]: s for s in da.pop("steps")}
    steps_b = {s["key"]: s for s in db.pop("steps")}
    fields = list(diff_values(da, db))
    order = _step_order(steps_a, steps_b)
    if order is not None:
        fields.append(order)
    steps: list[StepDiff] = []
    for key in _merged_order(list(steps_a), list(steps_b)):
        sa, sb = steps_a.get(key), steps_b.get(key)
        if sa is None:
            assert sb is not None
            steps.append(StepDiff(key, sb["title"], "added"))
        elif sb is None:
            steps.append(StepDiff(key, sa["title"], "removed"))
        elif changes := diff_values(sa, sb):
            steps.append(StepDiff(key, sb["title"], "changed", changes))
    return RecipeDiff(tuple(fields), tuple(steps))


def _merged_order(old: list[str], new: list[str]) -> list[str]:
    """The new order, with each removed key placed after the key that preceded it in the old order."""
    out = list(new)
    for i, key in enumerate(old):
        if key in new:
            continue
        before = next((old[j] for j in range(i - 1, -1, -1) if old[j] in out), None)
        out.insert(0 if before is None else out.index(before) + 1, key)
    return out


def value_text(value: Any) -> str:
    """A field's value in words for the diff table: lists comma-separated, objects as `field: value` pairs
    (empty and unset fields left out), none as an em dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(value_text(v) for v in value) if value else "(none)"
    if isinstance(value, Mapping):
        parts = [f"{k}: {value_text(v)}" for k, v in value.items() if not _unset(v)]
        return "; ".join(parts) if parts else "(empty)"
    return str(value)


def _unset(v: Any) -> bool:
    """None, false or empty: left out of an object's words."""
    return v is None or v is False or (isinstance(v, str | list | tuple | Mapping) and not v)
