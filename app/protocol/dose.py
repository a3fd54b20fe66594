"""Dose arithmetic, pure: the CD7+ cells a patient needs, the projection band, and the dose achieved at harvest.

Required CD7+ cells = target dose per kg x patient weight (9e6/kg x 70 kg = 6.3e8).

Projection model (every parameter comes from the recipe's `projection` section):
    projected CD7+ at harvest = viable cells seeded x total fold (T0 to harvest) x %CD7+ at harvest / 100.
    At seed the band spans the cell source's prior ranges: low = N0 x fold_low x cd7_low, high = N0 x
    fold_high x cd7_high.
    At the day-3 count the observed fold f3 = N3 / N0 after h hours is extrapolated as exponential growth
    over the whole culture, F = f3 ** (culture_hours / h), with an uncertainty factor u (F / u .. F x u).
    Where that band overlaps the prior fold range it is narrowed to the overlap; where it does not, the
    observation wins (a culture growing far below or above the prior is shown as it grows). %CD7+ keeps
    the prior range: at day 3 the CD7+ share is still rising and does not predict the harvest value.
    An alert is raised when the band's low end is below the required cells; a day-3 fold below
    `day3_low_fold` is a "low expansion" alert of its own.
At harvest: CD7+ cells = total viable x %CD7+ / 100; achieved dose per kg = CD7+ cells / weight, and its
% of the target must lie in the recipe's `acceptance_percent` (80-120 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from app.protocol.recipe import Recipe, SourceRanges

Basis = Literal["seed", "day3"]


@dataclass(frozen=True, slots=True)
class DoseBand:
    """A projection of the CD7+ cells at harvest, against what the patient needs."""

    basis: Basis
    low: float
    high: float
    required: float
    fold: tuple[float, float]
    cd7_percent: tuple[float, float]
    observed_fold: float | None  # day 3 only
    low_expansion: bool  # day-3 fold below the recipe's threshold
    alert: bool  # low < required
    message: str


@dataclass(frozen=True, slots=True)
class DoseResult:
    """The dose achieved at harvest/formulation."""

    cd7_cells: float
    per_kg: float
    target_per_kg: float
    percent_of_target: float
    acceptance_percent: tuple[float, float]
    within_acceptance: bool
    message: str


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number > {'=' if allow_zero else ''}0, got {value!r}")
    return v


def check_target_dose(recipe: Recipe, dose_per_kg: float) -> float:
    """The target dose if the recipe allows it; ValueError names the allowed doses."""
    allowed = recipe.dose.allowed_per_kg
    for a in allowed:
        if math.isclose(dose_per_kg, a, rel_tol=1e-9):
            return a
    raise ValueError(f"target dose {dose_per_kg:g} CD7+ cells/kg is not allowed; allowed: "
                     f"{', '.join(f'{a:g}' for a in allowed)}")


def check_weight(recipe: Recipe, weight_kg: float) -> float:
    """The patient weight if it is in the recipe's plausible range; ValueError names the range."""
    lo, hi = recipe.dose.patient_weight_kg
    w = _positive("patient weight", weight_kg)
    if not lo <= w <= hi:
        raise ValueError(f"patient weight {w:g} kg is outside {lo:g}..{hi:g} kg")
    return w


def required_cd7(recipe: Recipe, dose_per_kg: float, weight_kg: float) -> float:
    """CD7+ cells the patient needs: target dose per kg (an allowed one) x weight."""
    return check_target_dose(recipe, dose_per_kg) * check_weight(recipe, weight_kg)


def _band(basis: Basis, seeded: float, fold: tuple[float, float], cd7: tuple[float, float], required: float,
          observed: float | None, low_expansion: bool) -> DoseBand:
    low = seeded * fold[0] * cd7[0] / 100
    high = seeded * fold[1] * cd7[1] / 100
    alert = low < required
    text = (f"projected CD7+ at harvest ({basis}) {low:.3g} .. {high:.3g} cells, required {required:.3g}"
            + ("; the low end is below the required dose" if alert else ""))
    if low_expansion and observed is not None:
        text += f"; low expansion: day-3 fold {observed:.2f}x"
    return DoseBand(basis, low, high, required, fold, cd7, observed, low_expansion, alert, text)


def projection_at_seed(recipe: Recipe, source: str, viable_cells_seeded: float, required: float) -> DoseBand:
    """The band from the cell source's prior fold and %CD7+ ranges."""
    ranges = _source(recipe, source)
    seeded = _positive("viable cells seeded", viable_cells_seeded)
    return _band("seed", seeded, ranges.fold, ranges.cd7_percent, _positive("required", required), None, False)


def projection_at_day3(recipe: Recipe, source: str, viable_cells_seeded: float, viable_cells_day3: float,
                       hours_since_t0: float, required: float) -> DoseBand:
    """The band narrowed by the observed day-3 fold (see the module docstring for the model)."""
    p = recipe.projection
    ranges = _source(recipe, source)
    seeded = _positive("viable cells seeded", viable_cells_seeded)
    n3 = _positive("viable cells at day 3", viable_cells_day3, allow_zero=True)
    hours = _positive("hours since T0", hours_since_t0)
    f3 = n3 / seeded
    extrapolated = f3 ** (p.culture_hours / hours) if f3 > 0 else 0.0
    lo, hi = extrapolated / p.day3_uncertainty, extrapolated * p.day3_uncertainty
    prior_lo, prior_hi = ranges.fold
    if lo <= prior_hi and hi >= prior_lo:
        lo, hi = max(lo, prior_lo), min(hi, prior_hi)
    return _band("day3", seeded, (lo, hi), ranges.cd7_percent, _positive("required", required), f3,
                 f3 < p.day3_low_fold)


def _source(recipe: Recipe, source: str) -> SourceRanges:
    for key, ranges in recipe.projection.sources.items():
        if key == source:
            return ranges
    raise ValueError(f"cell source {source!r} has no projection ranges; known: "
                     f"{', '.join(sorted(recipe.projection.sources))}")


def needs_split(recipe: Recipe, viable_density: float) -> bool:
    """True when a count's viable density is above the recipe's split threshold."""
    return _positive("viable density", viable_density, allow_zero=True) > recipe.projection.split_threshold_cells_per_ml


def harvest_cd7(total_viable_cells: float, cd7_percent: float) -> float:
    """CD7+ cells in a harvest: total viable x %CD7+ / 100."""
    pct = _positive("%CD7+", cd7_percent, allow_zero=True)
    if pct > 100:
        raise ValueError(f"%CD7+ must be <= 100, got {cd7_percent!r}")
    return _positive("total viable cells", total_viable_cells, allow_zero=True) * pct / 100


def achieved_dose(recipe: Recipe, cd7_cells: float, weight_kg: float, target_per_kg: float) -> DoseResult:
    """The dose per kg that `cd7_cells` give this patient, and whether it is within the recipe's % of target."""
    cells = _positive("CD7+ cells", cd7_cells, allow_zero=True)
    target = check_target_dose(recipe, target_per_kg)
    per_kg = cells / check_weight(recipe, weight_kg)
    pct = per_kg / target * 100
    lo, hi = recipe.dose.acceptance_percent
    ok = lo <= pct <= hi
    msg = (f"achieved {per_kg:.3g} CD7+ cells/kg = {pct:.1f} % of the target {target:.3g}/kg "
           f"({'within' if ok else 'outside'} {lo:g}-{hi:g} %)")
    return DoseResult(cells, per_kg, target, pct, (lo, hi), ok, msg)
