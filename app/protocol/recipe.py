"""Protocol recipes: the versioned YAML that says which steps a culture run takes, when, and what they record.

A recipe is identified by `key` + `version`; `content_hash` is the SHA-256 of the canonical JSON of the
validated model (sorted keys, no whitespace), so YAML formatting, comments and key order do not change it.
Every number docs/process.md marks [A] lives here as data, never as a constant in code. Unknown fields are
rejected everywhere (extra="forbid"), and `Recipe` cross-checks what one field cannot: step keys and
anchors exist, the step order has no cycle, windows are ordered, units and device points are known.

Windows are in hours relative to an anchor: "t0" (the moment the `t0_step`, seeding, is done; before that
the planned T0) or another step's key (that step's done time, else its planned target).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.alarms.door import PlannedOpening
from app.alarms.excursion import ExcursionRule
from app.alarms.model import AlarmDefinition
from app.protocol.forecast import GrowthForecast
from drivers.roles import ALARM_BEACON, DEVICE_CLASSES, known_roles, role

Meaning = Literal["performed", "verified", "reviewed", "approved"]
InputKind = Literal["number", "integer", "text", "bool", "choice", "datetime"]
Severity = Literal["deviation", "alert"]
CellSource = Literal["mobilized", "cord"]
TransplantType = Literal["t_cell_depleted", "ptcy_hla_mismatched", "haploidentical"]
Arm = Literal["adult", "paediatric"]
QcKind = Literal["negative_positive", "endotoxin"]

# Units an input may carry; posted values must use exactly the recipe's unit (no conversion).
KNOWN_UNITS: frozenset[str] = frozenset({
    "h", "min", "d", "degC", "%", "%RH", "mL", "cm2", "kg", "cells", "cells/mL", "cells/cm2", "cells/kg",
    "CD7+ cells/kg", "CD3+ cells/kg", "EU/kg/h", "EU/mL", "ug/mL", "ng/mL", "x", "pH", "cells/mL x10^6",
})
# Run attributes an acceptance limit may compare a value with (`expected_from`).
CONTEXT_KEYS: frozenset[str] = frozenset({"donor_id", "patient_id", "cell_source", "graft_din", "product_id"})
DEFAULT_RECIPE = "htlp-dl4-tnfa-v2.yaml"

Key = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Hours = Annotated[float, Field(allow_inf_nan=False, ge=-24 * 30, le=24 * 60)]


class RecipeError(ValueError):
    """A recipe file that cannot be read or does not validate; `errors` lists each problem as `where: what`."""

    def __init__(self, source: str, errors: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Model):
    """When a step may be done, in hours after its anchor; hard_latest None means latest is the hard limit."""

    anchor: str = "t0"
    earliest: Hours
    target: Hours
    latest: Hours
    hard_latest: Hours | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        hard = self.latest if self.hard_latest is None else self.hard_latest
        if not self.earliest <= self.target <= self.latest <= hard:
            raise ValueError(
                "window must have earliest <= target <= latest <= hard_latest, got "
                f"{self.earliest:g} / {self.target:g} / {self.latest:g} / "
                f"{'none' if self.hard_latest is None else f'{self.hard_latest:g}'}"
            )
        return self


class StepInput(_Model):
    """One value a step records: its type and unit, the range a value must be in, and its acceptance limits."""

    name: Key
    kind: InputKind
    unit: str | None = None
    required: bool = True
    description: str = ""
    min: Finite | None = None  # valid range: outside it the post is refused (422)
    max: Finite | None = None
    max_length: int = Field(default=200, ge=1, le=10_000)  # text
    choices: tuple[str, ...] = ()
    accept_min: Finite | None = None  # acceptance: outside it the step is recorded and a failure reported
    accept_max: Finite | None = None
    expected: bool | float | str | None = None
    expected_from: str | None = None
    severity: Severity = "deviation"
    limit_label: str = ""  # what a failure is called, e.g. "low viability"

    @field_validator("expected")
    @classmethod
    def _finite(cls, v: bool | float | str | None) -> bool | float | str | None:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("expected must be finite")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StepInput:
        numeric = self.kind in ("number", "integer")
        if self.unit is not None and self.unit not in KNOWN_UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; known: {', '.join(sorted(KNOWN_UNITS))}")
        if numeric and self.unit is None:
            raise ValueError(f"a {self.kind} input needs a unit")
        if not numeric and any(v is not None for v in (self.min, self.max, self.accept_min, self.accept_max)):
            raise ValueError(f"min/max/accept_min/accept_max apply to number and integer inputs, not {self.kind}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"valid range min {self.min:g} > max {self.max:g}")
        if self.accept_min is not None and self.accept_max is not None and self.accept_min > self.accept_max:
            raise ValueError(f"acceptance accept_min {self.accept_min:g} > accept_max {self.accept_max:g}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError("a choice input needs choices, and only a choice input has them")
        if self.expected is not None and self.expected_from is not None:
            raise ValueError("give expected or expected_from, not both")
        has_range = self.accept_min is not None or self.accept_max is not None
        if has_range and (self.expected is not None or self.expected_from is not None):
            raise ValueError("give accept_min/accept_max or an expected value, not both")
        if self.expected_from is not None and self.expected_from not in CONTEXT_KEYS:
            raise ValueError(f"expected_from {self.expected_from!r} is not a run attribute; "
                             f"known: {', '.join(sorted(CONTEXT_KEYS))}")
        if self.expected is not None:
            ok = {"bool": isinstance(self.expected, bool), "text": isinstance(self.expected, str),
                  "choice": self.expected in self.choices,
                  "number": isinstance(self.expected, float), "integer": isinstance(self.expected, float)}
            if not ok[self.kind]:
                raise ValueError(f"expected {self.expected!r} does not fit a {self.kind} input"
                                 + (f" with choices {list(self.choices)}" if self.kind == "choice" else ""))
        return self

    @property
    def has_limit(self) -> bool:
        """True when the input has an acceptance limit."""
        return any(v is not None for v in (self.accept_min, self.accept_max, self.expected, self.expected_from))


class Setpoint(_Model):
    """A device setpoint to apply when the step opens (its phase starts) or when it is done."""

    device_kind: str
    point: str
    value: Finite
    apply: Literal["on_open", "on_done"] = "on_done"

    @model_validator(mode="after")
    def _writable(self) -> Setpoint:
        if self.device_kind not in DEVICE_CLASSES:
            raise ValueError(f"unknown device kind {self.device_kind!r}; known: {', '.join(DEVICE_CLASSES)}")
        spec = role(self.device_kind, self.point)
        # the alarm beacon is the alarm service's (app/alarms/beacon.py), never a process setpoint
        if spec is None or not spec.writable or spec.name == ALARM_BEACON:
            writable = [r for r in known_roles(self.device_kind)
                        if (x := role(self.device_kind, r)) and x.writable and r != ALARM_BEACON]
            raise ValueError(f"{self.device_kind}.{self.point} is not a setpoint role; setpoints: {writable}")
        lo, hi = spec.plausible
        if not lo <= self.value <= hi:
            raise ValueError(f"{self.device_kind}.{self.point} = {self.value:g} is outside {lo:g}..{hi:g} "
                             f"{spec.unit}")
        return self


class Step(_Model):
    """One protocol step (an ISA-88 phase of an operation) with its window, inputs and signatures."""

    key: Key
    title: str
    operation: str = Field(min_length=1)  # ISA-88 operation, e.g. "preparation", "expansion"
    phase: str = Field(min_length=1)  # ISA-88 phase, e.g. "coat", "feed"
    window: Window
    predecessors: tuple[str, ...] = ()
    optional: bool = False
    inputs: tuple[StepInput, ...] = ()
    signatures: tuple[Meaning, ...] = ()
    setpoints: tuple[Setpoint, ...] = ()
    channels: tuple[str, ...] = ()  # "<device class>.<role>" the step concerns
    # The door is opened inside its window. True (recipe v1): door alarms are suppressed by design for 10 min; a
    # PlannedOpening also states the expected recovery, inside which temperature and CO2 alarms are suppressed too.
    door_opening: bool | PlannedOpening = False
    materials: tuple[str, ...] = ()  # reagent keys (recipe `materials`) whose lot and expiry the step records

    @model_validator(mode="after")
    def _own_fields(self) -> Step:
        names = [i.name for i in self.inputs]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"duplicate input names {dup}")
        if dup := sorted({m for m in self.materials if self.materials.count(m) > 1}):
            raise ValueError(f"duplicate materials {dup}")
        if len(set(self.signatures)) != len(self.signatures):
            raise ValueError(f"duplicate signature meanings {list(self.signatures)}")
        for ch in self.channels:
            kind, _, point = ch.partition(".")
            if role(kind, point) is None:
                raise ValueError(f"unknown channel {ch!r}: use <device class>.<role> of the role vocabulary")
        return self

    def input(self, name: str) -> StepInput | None:
        """The input called `name`, or None."""
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def planned_opening(self) -> PlannedOpening | None:
        """The door opening this step plans with its expected recovery, or None (no opening, or v1's bare true)."""
        return self.door_opening if isinstance(self.door_opening, PlannedOpening) else None


class SourceRanges(_Model):
    """Expected total fold (T0 to harvest) and %CD7+ at harvest for one cell source."""

    fold: tuple[Finite, Finite]
    cd7_percent: tuple[Finite, Finite]

    @model_validator(mode="after")
    def _ranges(self) -> SourceRanges:
        if not 1 <= self.fold[0] <= self.fold[1]:
            raise ValueError(f"fold range must be 1 <= low <= high, got {list(self.fold)}")
        if not 0 < self.cd7_percent[0] <= self.cd7_percent[1] <= 100:
            raise ValueError(f"cd7_percent range must be 0 < low <= high <= 100, got {list(self.cd7_percent)}")
        return self


class Projection(_Model):
    """Parameters of the dose projection: the fold-by-day growth model (app/protocol/forecast.py) in `growth`.

    `sources` and `day3_uncertainty` are recipe v1's exponential extrapolation, kept so released v1 recipes still
    load; the service no longer uses them (a recipe without `growth` shows no projection band).
    """

    culture_hours: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    growth: GrowthForecast | None = None
    sources: dict[CellSource, SourceRanges] | None = None
    day3_low_fold: Annotated[float, Field(gt=0, allow_inf_nan=False)]  # below it: "low expansion" alert
    day3_uncertainty: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    split_threshold_cells_per_ml: Annotated[float, Field(gt=0, allow_inf_nan=False)]


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Dose(_Model):
    """Allowed dose levels, the harvest's overage, and the acceptance of the formulated dose."""

    allowed_per_kg: tuple[Positive, ...] = Field(min_length=1)  # the studied dose levels
    acceptance_percent: tuple[Finite, Finite]  # formulated dose as % of its dose level
    patient_weight_kg: tuple[Finite, Finite]  # plausible range of a patient's weight
    # The harvest must hold the required CD7+ cells x (1 + overage / 100): QC samples and losses in formulation.
    harvest_overage_percent: Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)] = 0.0
    # When the harvest cannot reach the target, QA may decide (signed) to formulate at a lower studied level, or
    # declare the product out of specification (docs/protocol.md, "Dose").
    lower_dose_route: bool = False

    @model_validator(mode="after")
    def _ranges(self) -> Dose:
        if not 0 < self.acceptance_percent[0] <= 100 <= self.acceptance_percent[1]:
            raise ValueError(f"acceptance_percent must be low <= 100 <= high, got {list(self.acceptance_percent)}")
        if not 0 < self.patient_weight_kg[0] <= self.patient_weight_kg[1]:
            raise ValueError(f"patient_weight_kg must be 0 < low <= high, got {list(self.patient_weight_kg)}")
        return self


class ArmRule(_Model):
    """One arm of the trial (adult, paediatric): its weight range and, when narrower, its dose levels."""

    patient_weight_kg: tuple[Finite, Finite]
    allowed_per_kg: tuple[Positive, ...] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> ArmRule:
        if not 0 < self.patient_weight_kg[0] <= self.patient_weight_kg[1]:
            raise ValueError(f"patient_weight_kg must be 0 < low <= high, got {list(self.patient_weight_kg)}")
        return self


class TransplantRule(_Model):
    """What a transplant type constrains: the T-cell limit of the product and the earliest infusion day."""

    cd3_limit_per_kg: Positive  # CD3+ cells per kg of patient weight in the infused product, at most
    earliest_infusion_day: Finite  # HSCT day; e.g. after the post-transplant cyclophosphamide days
    description: str = ""


class Reagent(_Model):
    """A material the culture uses: its concentration in use; each use records its lot and expiry."""

    key: Key
    name: str = Field(min_length=1)
    concentration: Positive | None = None
    unit: Literal["ug/mL", "ng/mL", "%"] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _unit(self) -> Reagent:
        if (self.concentration is None) != (self.unit is None):
            raise ValueError("give concentration and unit together")
        return self


class VesselType(_Model):
    """A culture vessel type and its DL-4-coated surface area (seeding density = cells / area)."""

    area_cm2: Positive
    description: str = ""


class Seeding(_Model):
    """The seeding density (computed from the viable cells seeded and the run's vessels' area) and its limits."""

    density_per_cm2: tuple[Positive, Positive]

    @model_validator(mode="after")
    def _ranges(self) -> Seeding:
        if self.density_per_cm2[0] > self.density_per_cm2[1]:
            raise ValueError(f"density_per_cm2 must be low <= high, got {list(self.density_per_cm2)}")
        return self


class QcTest(_Model):
    """A quality-control test of the product: where it is sampled, and whether release waits for its result."""

    key: Key
    title: str
    sampled_at: str  # the step whose record takes the sample
    before_release: bool  # release needs its result (reported and passing)
    kind: QcKind  # negative_positive: passes when negative; endotoxin: EU/mL, the EU/kg/h figure is computed
    notify_positive: bool = False  # a positive result after infusion: alarm, SSE and audit


class Release(_Model):
    """Release of a fresh product: expiry, the endotoxin limit and the QC tests with their timing."""

    product_shelf_life_hours: Positive  # product expiry: formulation time + this
    endotoxin_limit_eu_per_kg_h: Positive
    planned_infusion_hours: Positive  # the infusion time the release figure is computed with (the shortest allowed)
    tests: tuple[QcTest, ...] = ()

    @model_validator(mode="after")
    def _tests(self) -> Release:
        keys = [t.key for t in self.tests]
        if dup := sorted({k for k in keys if keys.count(k) > 1}):
            raise ValueError(f"duplicate QC tests {dup}")
        if sum(t.kind == "endotoxin" for t in self.tests) > 1:
            raise ValueError("at most one endotoxin test")
        return self

    def test(self, key: str) -> QcTest:
        """The QC test called `key`; KeyError names the known tests."""
        for t in self.tests:
            if t.key == key:
                return t
        raise KeyError(f"unknown QC test {key!r}; tests: {', '.join(t.key for t in self.tests) or 'none'}")


class Planning(_Model):
    """How T0 is planned backwards from the transplant (HSCT) and where infusion must fall."""

    infusion_window_days: tuple[Finite, Finite]  # infusion allowed on HSCT day +low .. +high
    planned_infusion_day: Finite  # HSCT day the plan aims the infusion at
    infusion_after_t0_hours: Annotated[float, Field(gt=0, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _ranges(self) -> Planning:
        lo, hi = self.infusion_window_days
        if not lo <= self.planned_infusion_day <= hi:
            raise ValueError(f"planned_infusion_day {self.planned_infusion_day:g} is outside "
                             f"infusion_window_days {lo:g}..{hi:g}")
        return self


def _read_only_channel(channel: str) -> None:
    kind, _, point = channel.partition(".")
    spec = role(kind, point)
    if spec is None or spec.writable:
        raise ValueError(f"unknown channel {channel!r}: use <device class>.<role> of a measured role")


class AlarmOverride(_Model):
    """Alarm definitions of one channel that replace the defaults, for the whole run or while steps are in window.

    Phase-aware: with `during`, the definitions apply while one of those steps is open, due or late (in its
    window); otherwise the run's other overrides or the docs/process.md defaults apply. The first match wins.
    """

    channel: str  # "<device kind>.<point>"
    during: tuple[str, ...] = ()
    definitions: tuple[AlarmDefinition, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> AlarmOverride:
        _read_only_channel(self.channel)
        names = [d.name for d in self.definitions]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"{self.channel}: duplicate alarm names {dup}")
        return self


class Recipe(_Model):
    """A validated protocol recipe."""

    key: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
    version: Annotated[int, Field(ge=1)]
    title: str
    description: str = ""
    t0_step: str  # the step whose completion sets T0 (seeding)
    dose: Dose
    planning: Planning
    projection: Projection
    arms: dict[Arm, ArmRule] = Field(default_factory=dict)
    transplant_types: dict[TransplantType, TransplantRule] = Field(default_factory=dict)
    materials: tuple[Reagent, ...] = ()
    vessel_types: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")], VesselType] = Field(
        default_factory=dict)
    seeding: Seeding | None = None
    release: Release | None = None
    steps: tuple[Step, ...] = Field(min_length=1)
    alarms: tuple[AlarmOverride, ...] = ()  # overrides of the docs/process.md alarm defaults, per channel and phase
    excursions: tuple[ExcursionRule, ...] = ()  # bands whose excursions are accounted per run (batch record)

    @model_validator(mode="after")
    def _cross(self) -> Recipe:
        keys = [s.key for s in self.steps]
        if dup := sorted({k for k in keys if keys.count(k) > 1}):
            raise ValueError(f"duplicate step keys {dup}")
        known = set(keys)
        errors: list[str] = []
        if self.t0_step not in known:
            errors.append(f"t0_step {self.t0_step!r} is not a step of this recipe")
        for step in self.steps:
            for pred in step.predecessors:
                if pred not in known:
                    errors.append(f"step {step.key!r}: predecessor {pred!r} is not a step of this recipe")
                elif pred == step.key:
                    errors.append(f"step {step.key!r}: a step cannot be its own predecessor")
            anchor = step.window.anchor
            if anchor != "t0" and anchor not in known:
                errors.append(f"step {step.key!r}: window anchor {anchor!r} is neither t0 nor a step of this recipe")
            elif anchor == step.key:
                errors.append(f"step {step.key!r}: a window cannot be anchored to its own step")
        for o in self.alarms:
            errors += [f"alarms of {o.channel}: during {k!r} is not a step of this recipe" for k in o.during
                       if k not in known]
        reagents = [m.key for m in self.materials]
        if dup := sorted({k for k in reagents if reagents.count(k) > 1}):
            errors.append(f"materials: duplicate reagent keys {dup}")
        for step in self.steps:
            errors += [f"step {step.key!r}: material {m!r} is not a reagent of this recipe (materials)"
                       for m in step.materials if m not in reagents]
        if self.release is not None:
            errors += [f"release.tests[{t.key}]: sampled_at {t.sampled_at!r} is not a step of this recipe"
                       for t in self.release.tests if t.sampled_at not in known]
        for e in self.excursions:
            try:
                _read_only_channel(e.channel)
            except ValueError as exc:
                errors.append(f"excursions: {exc}")
        if errors:
            raise ValueError("; ".join(errors))
        if self.step(self.t0_step).window.anchor != "t0":
            raise ValueError(f"t0_step {self.t0_step!r} must be anchored to t0")
        if cycle := _find_cycle({s.key: _depends_on(s) for s in self.steps}):
            raise ValueError("cycle in step order (predecessors and anchors): " + " -> ".join(cycle))
        return self

    def required_roles(self) -> dict[str, frozenset[str]]:
        """Device class -> the roles this recipe uses on the device bound as that class (steps' channels,
        setpoints, alarm overrides, excursions): a device lacking one cannot be bound to a run of it."""
        refs = [ch for s in self.steps for ch in s.channels]
        refs += [f"{sp.device_kind}.{sp.point}" for s in self.steps for sp in s.setpoints]
        refs += [o.channel for o in self.alarms] + [e.channel for e in self.excursions]
        out: dict[str, set[str]] = {}
        for ref in refs:
            kind, _, name = ref.partition(".")
            out.setdefault(kind, set()).add(name)
        return {k: frozenset(v) for k, v in out.items()}

    def key_of(self, operation: str) -> str | None:
        """The key of the first step of an ISA-88 `operation` (harvest, formulation, release, infusion), or None.
        Rules find steps by what they do, so a site may name its steps as it likes."""
        return next((s.key for s in self.steps if s.operation == operation), None)

    @property
    def count_steps(self) -> tuple[str, ...]:
        """The in-process count steps (phase "feed"), in recipe order; the first is the day-3 count."""
        return tuple(s.key for s in self.steps if s.phase == "feed")

    def reagent(self, key: str) -> Reagent:
        """The reagent called `key`; KeyError names the known reagents."""
        for m in self.materials:
            if m.key == key:
                return m
        raise KeyError(f"unknown reagent {key!r}; materials: {', '.join(m.key for m in self.materials) or 'none'}")

    def step(self, key: str) -> Step:
        """The step called `key`; KeyError names the known steps."""
        for s in self.steps:
            if s.key == key:
                return s
        raise KeyError(f"unknown step {key!r}; steps: {', '.join(s.key for s in self.steps)}")

    @property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the validated recipe."""
        return hashlib.sha256(canonical_json(self).encode("utf-8")).hexdigest()

    @property
    def step_keys(self) -> tuple[str, ...]:
        """The step keys in recipe order."""
        return tuple(s.key for s in self.steps)


def _depends_on(step: Step) -> tuple[str, ...]:
    return step.predecessors + (() if step.window.anchor == "t0" else (step.window.anchor,))


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle in `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def canonical_json(recipe: Recipe) -> str:
    """The canonical JSON of a recipe: every field (defaults included), sorted keys, no whitespace."""
    return json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _where(loc: tuple[int | str, ...], data: Any) -> str:
    """A validation error location with step keys instead of list indexes, e.g. steps[seed].inputs[volume]."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and 0 <= item < len(node):
            node = node[item]
            label = node.get("key", node.get("name", item)) if isinstance(node, dict) else item
            parts.append(f"[{label}]")
        else:
            node = node.get(item) if isinstance(node, dict) else None
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "recipe"


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Parse and validate recipe YAML; RecipeError lists every problem with where it is."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(source, [f"not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, ["a recipe is a mapping with key, version, steps, ..."])
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            msg = str(e["msg"]).removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown field"
            errors.append(f"{_where(tuple(e['loc']), data)}: {msg}")
        raise RecipeError(source, errors) from None


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Load a recipe from a YAML file, or the packaged default recipe when `path` is None."""
    if path is None:
        text = resources.files("app.protocol").joinpath("recipes").joinpath(DEFAULT_RECIPE).read_text(encoding="utf-8")
        return parse_recipe(text, DEFAULT_RECIPE)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(str(p), [f"cannot read: {exc.strerror or exc}"]) from None
    return parse_recipe(text, str(p))


@functools.cache
def default_recipe() -> Recipe:
    """The packaged default recipe, htlp-dl4-tnfa v1."""
    return load_recipe(None)
