"""Release and infusion of a fresh product, pure: expiry, QC results, the endotoxin figure, the bedside check.

The product is infused within hours of formulation, so release cannot wait for every result. Each QC test of
the recipe's `release.tests` has its own status: `not_sampled` until the step that takes its sample is recorded,
then `pending`, then `reported` with an outcome. Release needs every `before_release` test reported and passing
(Gram stain and endotoxin sampled at formulation; mycoplasma sampled in process, a rapid test); sterility is
sampled at formulation and reported after infusion, and a positive result then is notified.

Endotoxin is measured in EU/mL; the limit is EU per kg per hour of infusion:
    EU/kg/h = EU/mL x infused volume (mL) / patient weight (kg) / infusion time (h).
At release the figure uses the product volume net of the QC samples and the recipe's `planned_infusion_hours`
(the shortest infusion allowed, so the highest rate); after infusion it is computed again with the infused
volume and the recorded start and end.

Infusion (the bedside check) is refused, naming the rule, when a QC result is out of specification
(`qc_result_failed`), when the scanned patient or product id does not match (`bedside_mismatch`), when the times are
impossible (`infusion_times`: an end before the start, a start before the release, an end in the future), after
the product's expiry (`product_expired`, formulation + `product_shelf_life_hours`), or on an HSCT day outside the
recipe's window or before the transplant type's earliest day (`infusion_outside_window`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from app.protocol.numbers import positive
from app.protocol.recipe import QcTest, Recipe

QcStatus = Literal["not_sampled", "pending", "reported"]


@dataclass(frozen=True, slots=True)
class QcState:
    """Where one QC test of a run stands."""

    test: str
    status: QcStatus
    passed: bool | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A reported QC result: whether it passes, and the facts recorded with it."""

    passed: bool
    facts: dict[str, Any]
    message: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why release or infusion cannot be recorded: the rule and a message naming the limit."""

    rule: str
    message: str
    facts: dict[str, Any]


def product_expiry(recipe: Recipe, formulated_at: datetime) -> datetime | None:
    """When the product expires: formulation + the recipe's shelf life (None when the recipe states none)."""
    if recipe.release is None:
        return None
    return formulated_at + timedelta(hours=recipe.release.product_shelf_life_hours)


def endotoxin_per_kg_h(eu_per_ml: float, volume_ml: float, weight_kg: float, hours: float) -> float:
    """EU/kg/h from a result in EU/mL, the infused volume, the patient's weight and the infusion time."""
    return (positive("endotoxin", eu_per_ml, allow_zero=True) * positive("infused volume", volume_ml, allow_zero=True)
            / positive("patient weight", weight_kg) / positive("infusion time", hours))


def qc_outcome(recipe: Recipe, test: QcTest, result: Mapping[str, Any], *, volume_ml: float | None,
               weight_kg: float | None, hours: float | None = None) -> Outcome:
    """Whether a result passes. `result` is {"result": "negative"|"positive"} or {"eu_per_ml": x} (endotoxin)."""
    if test.kind == "negative_positive":
        value = result.get("result")
        if value not in ("negative", "positive"):
            raise ValueError(f"{test.key}: result must be 'negative' or 'positive', got {value!r}")
        passed = value == "negative"
        return Outcome(passed, {"result": value}, f"{test.title}: {value}")
    eu = result.get("eu_per_ml")
    if isinstance(eu, bool) or not isinstance(eu, int | float):
        raise ValueError(f"{test.key}: eu_per_ml must be a number (EU/mL), got {eu!r}")
    assert recipe.release is not None
    limit = recipe.release.endotoxin_limit_eu_per_kg_h
    if volume_ml is None or weight_kg is None:
        raise ValueError(f"{test.key}: the EU/kg/h figure needs the formulated volume and the patient's weight")
    h = recipe.release.planned_infusion_hours if hours is None else hours
    rate = endotoxin_per_kg_h(float(eu), volume_ml, weight_kg, h)
    passed = rate <= limit
    facts = {"eu_per_ml": float(eu), "volume_ml": volume_ml, "weight_kg": weight_kg, "infusion_hours": h,
             "eu_per_kg_h": rate, "limit_eu_per_kg_h": limit}
    return Outcome(passed, facts, f"{test.title}: {float(eu):g} EU/mL x {volume_ml:g} mL / {weight_kg:g} kg / "
                                  f"{h:g} h = {rate:.3g} EU/kg/h ({'within' if passed else 'above'} the limit "
                                  f"{limit:g} EU/kg/h)")


def release_refusals(recipe: Recipe, qc: Mapping[str, QcState], *, held: bool, hold_reason: str | None,
                     expiry: datetime | None, now: datetime) -> list[Refusal]:
    """What stops release now, in order: a hold, the expiry, results missing or failing."""
    out: list[Refusal] = []
    if held:
        out.append(Refusal("run_held", f"the run is held for QA disposition ({hold_reason or 'no reason given'}); "
                                       "QA resumes it (signed) before release", {"hold_reason": hold_reason}))
    if expiry is not None and now > expiry:
        out.append(Refusal("product_expired", f"the product expired at {expiry.isoformat(timespec='seconds')}",
                           {"expiry": expiry.isoformat()}))
    if recipe.release is None:
        return out
    waiting = [t.key for t in recipe.release.tests if t.before_release
               and qc.get(t.key, QcState(t.key, "not_sampled")).status != "reported"]
    if waiting:
        out.append(Refusal("qc_results_pending", f"release waits for the results of {', '.join(waiting)}",
                           {"tests": waiting}))
    failing = [t.key for t in recipe.release.tests if t.before_release and qc.get(t.key) is not None
               and qc[t.key].status == "reported" and qc[t.key].passed is False]
    if failing:
        out.append(Refusal("qc_result_failed", f"QC results out of specification: {', '.join(failing)}",
                           {"tests": failing}))
    return out


INFUSION_CLOCK_TOLERANCE = timedelta(minutes=5)  # a bedside clock a little ahead of the service's


def infusion_refusals(recipe: Recipe, *, patient_id: str, product_id: str, scanned_patient: str,
                      scanned_product: str, start: datetime, end: datetime, expiry: datetime | None,
                      hsct: datetime | None, earliest_day: float | None, released_at: datetime | None = None,
                      now: datetime | None = None, qc: Mapping[str, QcState] | None = None) -> list[Refusal]:
    """What stops an infusion from being recorded (module docstring)."""
    out: list[Refusal] = []
    failing = sorted(k for k, st in (qc or {}).items() if st.status == "reported" and st.passed is False)
    if failing:
        out.append(Refusal("qc_result_failed", f"QC results out of specification: {', '.join(failing)}; do not "
                                               "infuse", {"tests": failing}))
    if scanned_patient.strip() != patient_id or scanned_product.strip() != product_id:
        which = [name for name, ok in (("patient", scanned_patient.strip() == patient_id),
                                       ("product", scanned_product.strip() == product_id)) if not ok]
        out.append(Refusal("bedside_mismatch", f"bedside check failed: the scanned {' and '.join(which)} id does not "
                                               f"match the run (patient {patient_id}, product {product_id}); do not "
                                               "infuse", {"mismatch": which}))
    if end <= start:
        out.append(Refusal("infusion_times", f"infusion_end {end.isoformat(timespec='seconds')} is not after "
                                             f"infusion_start {start.isoformat(timespec='seconds')}", {}))
    if released_at is not None and start < released_at:
        out.append(Refusal("infusion_times", f"infusion_start {start.isoformat(timespec='seconds')} is before the "
                                             f"release at {released_at.isoformat(timespec='seconds')}",
                           {"released_at": released_at.isoformat()}))
    if now is not None and end > now + INFUSION_CLOCK_TOLERANCE:
        out.append(Refusal("infusion_times", f"infusion_end {end.isoformat(timespec='seconds')} is in the future "
                                             f"(now {now.isoformat(timespec='seconds')}): record an infusion once it "
                                             "has ended", {"now": now.isoformat()}))
    if expiry is not None and start > expiry:
        out.append(Refusal("product_expired", f"infusion at {start.isoformat(timespec='seconds')} is after the "
                                              f"product's expiry {expiry.isoformat(timespec='seconds')}",
                           {"expiry": expiry.isoformat()}))
    if hsct is not None:
        day = (start - hsct) / timedelta(days=1)
        lo, hi = recipe.planning.infusion_window_days
        first = lo if earliest_day is None else max(lo, earliest_day)
        if not first <= day <= hi:
            out.append(Refusal("infusion_outside_window",
                               f"infusion on HSCT day {day:+.2f} is outside the allowed day {first:+g} .. {hi:+g}"
                               + ("" if earliest_day is None or earliest_day <= lo
                                  else " (the transplant type's earliest infusion day)"),
                               {"hsct_day": day, "window_days": [first, hi]}))
    return out
