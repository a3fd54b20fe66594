"""Step inputs, pure: validate posted values against the recipe, then evaluate their acceptance limits.

Two different outcomes:
- `validate_inputs` finds values the step cannot record at all (unknown field, missing required value,
  wrong type or unit, NaN/Inf, a number beyond MAX_MAGNITUDE, outside the input's valid min/max, a text
  too long, not one of the choices): the API answers 422 with these field errors.
- `evaluate_limits` finds recorded values outside their acceptance limits (accept_min/accept_max, an
  expected value, or equality with a run attribute such as the donor id): the step is recorded and each
  failure becomes a deviation (severity "deviation") or an alert (severity "alert").

A posted value is either plain (`92.5`) or `{"value": 92.5, "unit": "%"}`; a unit, when given, must be the
recipe's unit exactly (no conversion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from app.protocol.recipe import Severity, Step, StepInput

Value = bool | int | float | str
# A technical sanity cap, not a process limit: anything larger is a typo or an attack on the arithmetic.
MAX_MAGNITUDE = 1e15


@dataclass(frozen=True, slots=True)
class FieldError:
    """A posted value the step cannot record, naming the field, the rule broken and the limit."""

    field: str
    rule: str  # unknown_field, required, type, unit, not_finite, too_large, below_min, above_max, too_long, choice,
    # lot_missing, lot_expired, unknown_reagent (materials)
    message: str
    limit: Any = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a 422 problem body."""
        return {"field": self.field, "rule": self.rule, "detail": self.message, "limit": self.limit}


@dataclass(frozen=True, slots=True)
class LimitFailure:
    """A recorded value outside its acceptance limit."""

    field: str
    limit: str  # e.g. ">= 80 %", "== donor_id (D-123)"
    value: Value | None
    severity: Severity
    label: str  # the recipe's name for the failure, or the field's
    message: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a deviation's facts."""
        return {"field": self.field, "limit": self.limit, "value": self.value, "severity": self.severity,
                "label": self.label, "detail": self.message}


def _unit(inp: StepInput) -> str:
    return f" {inp.unit}" if inp.unit else ""


def _check(inp: StepInput, raw: object) -> tuple[Value | None, FieldError | None]:
    """One posted value: the typed value, or the error naming its field and limit."""
    name = inp.name

    def err(rule: str, message: str, limit: Any = None) -> tuple[None, FieldError]:
        return None, FieldError(name, rule, f"{name}: {message}", limit)

    if isinstance(raw, Mapping):
        extra = set(raw) - {"value", "unit"}
        if extra or "value" not in raw:
            return err("type", "give a value, or an object with value and unit only")
        unit = raw.get("unit")
        if unit is not None and unit != inp.unit:
            return err("unit", f"unit {unit!r} is not the recipe's unit {inp.unit!r}", inp.unit)
        raw = raw["value"]
    if inp.kind in ("number", "integer"):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return err("type", f"a {inp.kind} is required, got {type(raw).__name__}")
        if isinstance(raw, float) and not math.isfinite(raw):
            return err("not_finite", f"{raw!r} is not a finite number")
        if abs(raw) > MAX_MAGNITUDE:
            return err("too_large", f"{raw!r} exceeds the magnitude limit {MAX_MAGNITUDE:g}", MAX_MAGNITUDE)
        number: int | float = float(raw)
        if inp.kind == "integer":
            if not float(raw).is_integer():
                return err("type", f"an integer is required, got {raw!r}")
            number = int(raw)
        value = number
        if inp.min is not None and number < inp.min:
            return err("below_min", f"{number:g} is below the valid minimum {inp.min:g}{_unit(inp)}", inp.min)
        if inp.max is not None and number > inp.max:
            return err("above_max", f"{number:g} is above the valid maximum {inp.max:g}{_unit(inp)}", inp.max)
        return value, None
    if inp.kind == "bool":
        if not isinstance(raw, bool):
            return err("type", f"true or false is required, got {type(raw).__name__}")
        return raw, None
    if not isinstance(raw, str):
        return err("type", f"text is required, got {type(raw).__name__}")
    text = raw.strip()
    if inp.kind == "datetime":
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return err("type", f"{text[:40]!r} is not an ISO 8601 date and time")
        if when.tzinfo is None or when.utcoffset() is None:
            return err("type", f"{text[:40]!r} has no UTC offset (e.g. 2027-01-05T09:30:00+01:00)")
        return when.isoformat(), None
    if inp.kind == "choice":
        if text not in inp.choices:
            return err("choice", f"{text!r} is not one of {', '.join(inp.choices)}", list(inp.choices))
        return text, None
    if len(text) > inp.max_length:
        return err("too_long", f"{len(text)} characters, at most {inp.max_length}", inp.max_length)
    if not text and inp.required:
        return err("required", "a value is required")
    return (text or None), None


def validate_inputs(step: Step, posted: Mapping[str, object]) -> tuple[dict[str, Value], list[FieldError]]:
    """The typed values of a post and the field errors; record the step only when the error list is empty."""
    errors: list[FieldError] = []
    values: dict[str, Value] = {}
    known = {i.name for i in step.inputs}
    for name in posted:
        if name not in known:
            errors.append(FieldError(str(name), "unknown_field",
                                     f"{name}: not an input of step {step.key}; inputs: {', '.join(sorted(known))}"))
    for inp in step.inputs:
        raw = posted.get(inp.name)
        if raw is None:
            if inp.required:
                errors.append(FieldError(inp.name, "required", f"{inp.name}: a value is required"))
            continue
        value, error = _check(inp, raw)
        if error is not None:
            errors.append(error)
        elif value is not None:
            values[inp.name] = value
    return values, errors


def _num(v: float) -> str:
    return f"{v:g}"


def evaluate_limits(step: Step, values: Mapping[str, Value],
                    context: Mapping[str, object] | None = None) -> list[LimitFailure]:
    """Acceptance failures of validated values; `context` holds the run attributes `expected_from` names."""
    failures: list[LimitFailure] = []
    ctx = context or {}
    for inp in step.inputs:
        if not inp.has_limit or inp.name not in values:
            continue
        value = values[inp.name]
        label = inp.limit_label or inp.name

        def fail(limit: str, inp: StepInput = inp, value: Value = value, label: str = label) -> None:
            failures.append(LimitFailure(inp.name, limit, value, inp.severity, label,
                                         f"{step.key}.{inp.name} = {value!r}{_unit(inp)} fails {limit} ({label})"))

        if inp.accept_min is not None or inp.accept_max is not None:
            assert isinstance(value, int | float) and not isinstance(value, bool)
            if inp.accept_min is not None and value < inp.accept_min:
                fail(f">= {_num(inp.accept_min)}{_unit(inp)}")
            if inp.accept_max is not None and value > inp.accept_max:
                fail(f"<= {_num(inp.accept_max)}{_unit(inp)}")
        elif inp.expected_from is not None:
            if inp.expected_from not in ctx:
                raise KeyError(f"step {step.key} input {inp.name} compares with the run's {inp.expected_from}, "
                               "which the context does not give")
            expected = ctx[inp.expected_from]
            if value != expected:
                fail(f"== {inp.expected_from} ({expected!r})")
        elif inp.expected is not None:
            if isinstance(inp.expected, float) and isinstance(value, int | float):
                ok = math.isclose(value, inp.expected)
            else:
                ok = value == inp.expected
            if not ok:
                fail(f"== {inp.expected!r}")
    return failures


def validate_lots(step: Step, reagents: Mapping[str, str], lots: Mapping[str, tuple[str, date]],
                  use_date: date) -> tuple[dict[str, dict[str, str]], list[FieldError]]:
    """The lots a step records (one lot and expiry per material it uses) and the errors: a missing or unknown
    reagent, or a lot whose expiry is before the day of use. `reagents` maps the recipe's reagent keys to names."""
    errors: list[FieldError] = []
    out: dict[str, dict[str, str]] = {}
    for key in lots:
        if key not in step.materials:
            errors.append(FieldError(f"lots.{key}", "unknown_reagent",
                                     f"lots.{key}: step {step.key} uses no reagent {key!r}; it uses "
                                     f"{', '.join(step.materials) or 'none'}", list(step.materials)))
    for key in step.materials:
        name = reagents.get(key, key)
        if key not in lots:
            errors.append(FieldError(f"lots.{key}", "lot_missing", f"lots.{key}: the lot and expiry of {name} "
                                                                    "are required"))
            continue
        lot, expiry = lots[key]
        if expiry < use_date:
            errors.append(FieldError(f"lots.{key}", "lot_expired",
                                     f"lots.{key}: {name} lot {lot} expired on {expiry.isoformat()}, before its use on "
                                     f"{use_date.isoformat()}", expiry.isoformat()))
            continue
        out[key] = {"reagent": name, "lot": lot, "expiry": expiry.isoformat()}
    return out, errors
