"""What a recorded step's values imply, pure: the seeding density, the forecast, the harvest's sufficiency, the
formulated dose and the post-infusion endotoxin figure, with the deviations and alerts they call for.

Steps are found by what they do (operation harvest, formulation, infusion; phase feed for the counts, the first
being the day-3 count), not by their keys. The step post and a supervisor's correction both call `derive` with the
step's effective values, so a corrected
count re-evaluates its forecast and a corrected formulation its dose. Rules (deviation unless noted):
    seeding_density         seed: viable cells seeded / DL-4 area of the run's vessels outside the recipe's range
    forecast_below_target   a count (seed, feeds): the forecast band's low end below the required CD7+ (alert)
    low_expansion           the day-3 count: fold vs T0 below the recipe's day3_low_fold (alert)
    split_advised           a feed count above the split threshold (alert)
    harvest_below_required  harvest: CD7+ cells below required + overage (alert and deviation)
    dose_out_of_range       formulate: dose outside 80-120 % of its level (none when QA declared the product out of
                            specification: that decision opened its own deviation, `out_of_specification`)
    cd3_limit               formulate: CD3+ cells/kg above the transplant type's limit
    endotoxin_limit         infuse: the endotoxin figure with the infused volume and time above the limit
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from app.protocol import dose, forecast, release
from app.protocol.acceptance import Value
from app.protocol.common import json_ready
from app.protocol.recipe import Recipe


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What `derive` needs of the run."""

    weight_kg: float | None
    target_per_kg: float | None
    cell_source: str | None
    transplant_type: str | None
    vessel_area_cm2: float | None
    t0: datetime
    decision: str | None = None  # lower_dose | out_of_specification
    decision_dose_per_kg: float | None = None
    endotoxin_eu_per_ml: float | None = None
    arm: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """A deviation or an alert a step's values call for."""

    rule: str
    severity: str  # deviation | alert
    message: str
    facts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Derived:
    facts: dict[str, Any] | None = None
    findings: tuple[Finding, ...] = ()
    expiry: datetime | None = None

    @property
    def deviations(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "deviation"]

    @property
    def alerts(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "alert"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """A recorded step's effective values (corrections applied) and its time."""

    values: Mapping[str, Value]
    at: datetime
    facts: Mapping[str, Any] = field(default_factory=dict)


def _num(values: Mapping[str, Value], name: str) -> float | None:
    v = values.get(name)
    return None if v is None or isinstance(v, bool | str) else float(v)


def derive(recipe: Recipe, run: RunFacts, step_key: str, values: Mapping[str, Value],
           recorded: Mapping[str, Recorded], now: datetime,
           site_runs: Sequence[forecast.CompletedRun] = ()) -> Derived:
    """The facts and findings of `step_key`'s values (module docstring); `recorded` holds the other steps."""
    weight, target, source = run.weight_kg, run.target_per_kg, run.cell_source
    have_dose = weight is not None and target is not None
    required = dose.required_cd7(recipe, target, weight) if have_dose else None  # type: ignore[arg-type]
    growth = recipe.projection.growth
    harvest_key, formulate_key = recipe.key_of("harvest"), recipe.key_of("formulation")
    findings: list[Finding] = []
    facts: dict[str, Any] = {}
    if step_key == recipe.t0_step and (seeded := _num(values, "viable_cells_seeded")) is not None:
        if recipe.seeding is not None and run.vessel_area_cm2:
            density = seeded / run.vessel_area_cm2
            lo, hi = recipe.seeding.density_per_cm2
            facts["seeding"] = {"viable_cells_seeded": seeded, "area_cm2": run.vessel_area_cm2,
                                "density_per_cm2": density, "limits": [lo, hi], "within": lo <= density <= hi}
            if not lo <= density <= hi:
                findings.append(Finding("seeding_density", "deviation",
                                        f"{step_key}: seeding density {density:.3g} cells/cm2 ({seeded:.3g} cells on "
                                        f"{run.vessel_area_cm2:g} cm2) is outside {lo:.3g}-{hi:.3g} cells/cm2",
                                        facts["seeding"]))
        if growth is not None and required is not None and source is not None and seeded > 0:
            band = forecast.forecast_at_seed(growth, source, seeded, required, recipe.projection.culture_hours,
                                             site_runs)
            facts["seed"] = {**json_ready(asdict(band)), "below_target": band.alert}
            if band.alert:
                findings.append(Finding("forecast_below_target", "alert", band.message, facts["seed"]))
    elif step_key in recipe.count_steps and (cells := _num(values, "viable_cells")) is not None:
        seed = recorded.get(recipe.t0_step)
        seeded = _num(seed.values, "viable_cells_seeded") if seed is not None else None
        hours = (now - run.t0).total_seconds() / 3600
        if seeded and 0 < hours < recipe.projection.culture_hours:
            fold = cells / seeded
            day3 = step_key == recipe.count_steps[0]
            basis = "day3" if day3 else step_key
            if day3 and fold < recipe.projection.day3_low_fold:
                findings.append(Finding("low_expansion", "alert",
                                        f"{step_key}: low expansion: fold {fold:.2f}x after {hours:.0f} h is below "
                                        f"{recipe.projection.day3_low_fold:g}x", {"fold": fold, "hours": hours}))
            if growth is not None and required is not None and source is not None:
                band = forecast.forecast_at_count(growth, source, seeded, cells, hours, required,
                                                  recipe.projection.culture_hours, site_runs)
                facts[basis] = {**json_ready(asdict(band)), "below_target": band.alert}
                if band.alert:
                    findings.append(Finding("forecast_below_target", "alert", band.message, facts[basis]))
        vcd = _num(values, "viable_density")
        if vcd is not None and dose.needs_split(recipe, vcd):
            findings.append(Finding("split_advised", "alert",
                                    f"{step_key}: viable density {vcd:.3g} cells/mL is above the split threshold "
                                    f"{recipe.projection.split_threshold_cells_per_ml:.3g} cells/mL: split",
                                    {"viable_density": vcd}))
    elif step_key == harvest_key and have_dose:
        total, cd7 = _num(values, "total_viable_cells"), _num(values, "cd7_percent")
        if total is not None and cd7 is not None:
            check = dose.harvest_check(recipe, total, cd7, weight, target)  # type: ignore[arg-type]
            facts["harvest"] = json_ready(asdict(check))
            if not check.enough:
                for severity in ("alert", "deviation"):
                    findings.append(Finding("harvest_below_required", severity, f"harvest: {check.message}",
                                            facts["harvest"]))
    elif step_key == formulate_key and have_dose:
        harvest = recorded.get(harvest_key) if harvest_key else None
        hv = harvest.values if harvest is not None else {}
        formulated, volume = _num(values, "cd7_cells_formulated"), _num(values, "product_volume")
        qc = _num(values, "qc_sample_volume") or 0.0
        if formulated is not None and volume is not None:
            rule = recipe.transplant_types.get(run.transplant_type) if run.transplant_type else None  # type: ignore[call-overload]
            result = dose.formulated_dose(
                recipe, cd7_cells_formulated=formulated, product_volume_ml=volume, qc_sample_volume_ml=qc,
                weight_kg=weight, target_per_kg=target,  # type: ignore[arg-type]
                dose_level_per_kg=run.decision_dose_per_kg if run.decision == "lower_dose" else None,
                harvest_cd7_percent=_num(hv, "cd7_percent"), harvest_cd3_percent=_num(hv, "cd3_percent"),
                cd3_limit_per_kg=None if rule is None else rule.cd3_limit_per_kg, arm=run.arm)
            out_of_spec = run.decision == "out_of_specification"
            facts["achieved"] = {**json_ready(asdict(result)), "decision": run.decision,
                                 "product_status": _product_status(run.decision, result.within_acceptance)}
            if not result.within_acceptance and not out_of_spec:
                findings.append(Finding("dose_out_of_range", "deviation", f"formulate: {result.message}",
                                        facts["achieved"]))
            if result.cd3_within_limit is False:
                findings.append(Finding("cd3_limit", "deviation",
                                        f"formulate: CD3+ {result.cd3_per_kg:.3g} cells/kg is above the "
                                        f"{run.transplant_type} limit {result.cd3_limit_per_kg:.3g}/kg",
                                        facts["achieved"]))
    expiry = None
    if step_key == formulate_key:  # a correction keeps the formulation's own time
        expiry = release.product_expiry(recipe, recorded[step_key].at if step_key in recorded else now)
        if expiry is not None:
            facts["expiry"] = expiry.isoformat()
    infused = step_key == recipe.key_of("infusion")
    if infused and weight is not None and run.endotoxin_eu_per_ml is not None and recipe.release:
        start, end = values.get("infusion_start"), values.get("infusion_end")
        volume = _num(values, "infused_volume")
        if isinstance(start, str) and isinstance(end, str) and volume is not None:
            hours = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() / 3600
            if hours > 0:
                rate = release.endotoxin_per_kg_h(run.endotoxin_eu_per_ml, volume, weight, hours)
                limit = recipe.release.endotoxin_limit_eu_per_kg_h
                facts["endotoxin"] = {"eu_per_ml": run.endotoxin_eu_per_ml, "volume_ml": volume, "weight_kg": weight,
                                      "infusion_hours": hours, "eu_per_kg_h": rate, "limit_eu_per_kg_h": limit}
                if rate > limit:
                    findings.append(Finding("endotoxin_limit", "deviation",
                                            f"infuse: endotoxin {rate:.3g} EU/kg/h over {hours:.2f} h is above the "
                                            f"limit {limit:g} EU/kg/h", facts["endotoxin"]))
    return Derived(facts or None, tuple(findings), expiry)


def _product_status(decision: str | None, within: bool) -> str:
    if decision == "out_of_specification":
        return "out_of_specification"
    if decision == "lower_dose":
        return "lower_dose_level" if within else "dose_out_of_range"
    return "in_specification" if within else "dose_out_of_range"
