"""Dose arithmetic, pure: the CD7+ cells a patient needs, whether the harvest holds them, and the formulated dose.

Required CD7+ cells = dose level per kg x patient weight (9e6/kg x 70 kg = 6.3e8).

At harvest the dose is not yet made: the harvest only has to hold enough, the required cells plus the recipe's
`harvest_overage_percent` (QC samples and losses in formulation). CD7+ cells in the harvest = total viable x
%CD7+ / 100. Holding less is an alert and a deviation (`harvest_below_required`); holding more is normal (the
product is formulated from part of it).

At formulation the dose is computed on the product (net of the QC samples):
    net CD7+ = CD7+ cells formulated x (product volume - QC sample volume) / product volume
    dose per kg = net CD7+ / patient weight; concentration = CD7+ formulated / product volume (cells/mL)
and must lie in the recipe's `acceptance_percent` (80-120 %) of its dose level: the run's target, or the lower
studied level QA decided (signed) when the harvest could not reach the target. CD3+ cells per kg in the product
(total cells = CD7+ formulated / harvest %CD7+; CD3+ = total x harvest %CD3+, net of the QC samples) must not
exceed the transplant type's `cd3_limit_per_kg`.

The projection band (at seed and at the day-3 count) is app/protocol/forecast.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.protocol.numbers import percent, positive
from app.protocol.recipe import ArmRule, Recipe


@dataclass(frozen=True, slots=True)
class HarvestCheck:
    """Whether a harvest holds the required CD7+ cells plus the overage."""

    cd7_cells: float
    required: float
    needed: float  # required x (1 + overage)
    overage_percent: float
    percent_of_needed: float
    enough: bool
    max_dose_per_kg: float  # what this harvest can give the patient, net of the overage
    message: str


@dataclass(frozen=True, slots=True)
class FormulatedDose:
    """The dose of the formulated product, against its dose level."""

    cd7_cells_formulated: float
    net_cd7_cells: float
    product_volume_ml: float
    qc_sample_volume_ml: float
    concentration_per_ml: float
    per_kg: float
    dose_level_per_kg: float
    target_per_kg: float
    percent_of_level: float
    acceptance_percent: tuple[float, float]
    within_acceptance: bool
    cd3_per_kg: float | None
    cd3_limit_per_kg: float | None
    cd3_within_limit: bool | None
    message: str


def allowed_doses(recipe: Recipe, arm: str | None = None) -> tuple[float, ...]:
    """The studied dose levels, narrowed to the arm's when the recipe gives the arm its own."""
    rule = _arm(recipe, arm)
    return rule.allowed_per_kg if rule is not None and rule.allowed_per_kg else recipe.dose.allowed_per_kg


def check_target_dose(recipe: Recipe, dose_per_kg: float, arm: str | None = None) -> float:
    """The target dose if the recipe (and the arm) allows it; ValueError names the allowed doses."""
    allowed = allowed_doses(recipe, arm)
    for a in allowed:
        if math.isclose(dose_per_kg, a, rel_tol=1e-9):
            return a
    rule = _arm(recipe, arm)
    where = f" for the {arm} arm" if rule is not None and rule.allowed_per_kg else ""
    raise ValueError(f"target dose {dose_per_kg:g} CD7+ cells/kg is not allowed{where}; allowed: "
                     f"{', '.join(f'{a:g}' for a in allowed)}")


def _arm(recipe: Recipe, arm: str | None) -> ArmRule | None:
    if arm is None:
        return None
    for key, rule in recipe.arms.items():
        if key == arm:
            return rule
    if recipe.arms:
        raise ValueError(f"arm {arm!r} is not an arm of this recipe; arms: {', '.join(recipe.arms)}")
    return None


def check_weight(recipe: Recipe, weight_kg: float, arm: str | None = None) -> float:
    """The patient weight if it is in the recipe's (and the arm's) range; ValueError names the range."""
    rule = _arm(recipe, arm)
    lo, hi = rule.patient_weight_kg if rule is not None else recipe.dose.patient_weight_kg
    w = positive("patient weight", weight_kg)
    if not lo <= w <= hi:
        where = f" of the {arm} arm" if rule is not None else ""
        raise ValueError(f"patient weight {w:g} kg is outside {lo:g}..{hi:g} kg{where}")
    return w


def required_cd7(recipe: Recipe, dose_per_kg: float, weight_kg: float) -> float:
    """CD7+ cells the patient needs: dose level per kg (a studied one) x weight."""
    return check_target_dose(recipe, dose_per_kg) * check_weight(recipe, weight_kg)


def needs_split(recipe: Recipe, viable_density: float) -> bool:
    """True when a count's viable density is above the recipe's split threshold."""
    return positive("viable density", viable_density, allow_zero=True) > recipe.projection.split_threshold_cells_per_ml


def harvest_cd7(total_viable_cells: float, cd7_percent: float) -> float:
    """CD7+ cells in a harvest: total viable x %CD7+ / 100."""
    return positive("total viable cells", total_viable_cells, allow_zero=True) * percent("%CD7+", cd7_percent) / 100


def harvest_check(recipe: Recipe, total_viable_cells: float, cd7_percent: float, weight_kg: float,
                  target_per_kg: float) -> HarvestCheck:
    """Whether the harvest holds the required CD7+ cells plus the recipe's overage (module docstring)."""
    cells = harvest_cd7(total_viable_cells, cd7_percent)
    required = required_cd7(recipe, target_per_kg, weight_kg)
    overage = recipe.dose.harvest_overage_percent
    needed = required * (1 + overage / 100)
    enough = cells >= needed
    max_per_kg = cells / (1 + overage / 100) / weight_kg
    pct = cells / needed * 100
    msg = (f"harvest holds {cells:.3g} CD7+ cells, {pct:.0f} % of the {needed:.3g} needed (required {required:.3g} "
           f"+ {overage:g} % overage)")
    if not enough:
        msg += (f": short of the target; it can give at most {max_per_kg:.3g} CD7+ cells/kg; QA decides a lower "
                "studied dose level or declares the product out of specification")
    return HarvestCheck(cells, required, needed, overage, pct, enough, max_per_kg, msg)


def formulated_dose(recipe: Recipe, *, cd7_cells_formulated: float, product_volume_ml: float,
                    qc_sample_volume_ml: float, weight_kg: float, target_per_kg: float,
                    dose_level_per_kg: float | None = None, harvest_cd7_percent: float | None = None,
                    harvest_cd3_percent: float | None = None, cd3_limit_per_kg: float | None = None,
                    arm: str | None = None) -> FormulatedDose:
    """The dose of the formulated product and its checks (module docstring)."""
    cells = positive("CD7+ cells formulated", cd7_cells_formulated, allow_zero=True)
    volume = positive("product volume", product_volume_ml)
    qc = positive("QC sample volume", qc_sample_volume_ml, allow_zero=True)
    if qc >= volume:
        raise ValueError(f"QC sample volume {qc:g} mL must be less than the product volume {volume:g} mL")
    weight = check_weight(recipe, weight_kg, arm)
    target = check_target_dose(recipe, target_per_kg, arm)
    level = target if dose_level_per_kg is None else check_target_dose(recipe, dose_level_per_kg, arm)
    share = (volume - qc) / volume
    net = cells * share
    per_kg = net / weight
    pct = per_kg / level * 100
    lo, hi = recipe.dose.acceptance_percent
    ok = lo <= pct <= hi
    cd3_per_kg: float | None = None
    cd3_ok: bool | None = None
    if harvest_cd7_percent is not None and harvest_cd3_percent is not None:
        cd7_pct = percent("harvest %CD7+", harvest_cd7_percent)
        cd3_pct = percent("harvest %CD3+", harvest_cd3_percent)
        total = cells / (cd7_pct / 100) if cd7_pct > 0 else 0.0
        cd3_per_kg = total * cd3_pct / 100 * share / weight
        cd3_ok = None if cd3_limit_per_kg is None else cd3_per_kg <= cd3_limit_per_kg
    lower = "" if level == target else f" (lower studied level; target {target:.3g}/kg)"
    msg = (f"formulated {per_kg:.3g} CD7+ cells/kg = {pct:.1f} % of the dose level {level:.3g}/kg{lower} "
           f"({'within' if ok else 'outside'} {lo:g}-{hi:g} %); {net:.3g} CD7+ cells net of {qc:g} mL QC samples "
           f"in {volume - qc:g} mL, {cells / volume:.3g} cells/mL")
    if cd3_per_kg is not None and cd3_limit_per_kg is not None:
        msg += (f"; CD3+ {cd3_per_kg:.3g} cells/kg ({'within' if cd3_ok else 'above'} the limit "
                f"{cd3_limit_per_kg:.3g}/kg)")
    return FormulatedDose(cells, net, volume, qc, cells / volume, per_kg, level, target, pct, (lo, hi), ok,
                          cd3_per_kg, cd3_limit_per_kg, cd3_ok, msg)
