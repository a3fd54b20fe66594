"""Release and infusion of a fresh product (app/protocol/release.py), by table: expiry, the endotoxin figure, QC
outcomes, what stops a release and what stops an infusion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.protocol import recipe as rmod
from app.protocol.recipe import default_recipe, load_recipe
from app.protocol.release import (
    QcState,
    endotoxin_per_kg_h,
    infusion_refusals,
    product_expiry,
    qc_outcome,
    release_refusals,
)

R = default_recipe()
assert R.release is not None
REL = R.release
V1 = load_recipe(Path(rmod.__file__).parent / "recipes" / "htlp-dl4-tnfa-v1.yaml")
FORMULATED = datetime(2027, 1, 5, 8, 0, tzinfo=UTC)
EXPIRY = FORMULATED + timedelta(hours=12)
HSCT = datetime(2026, 12, 29, 9, 0, tzinfo=UTC)


def h(hours: float) -> datetime:
    return FORMULATED + timedelta(hours=hours)


# ---- expiry -------------------------------------------------------------------------------------------------------


def test_expiry_is_formulation_plus_the_shelf_life() -> None:
    assert REL.product_shelf_life_hours == 12
    assert product_expiry(R, FORMULATED) == datetime(2027, 1, 5, 20, 0, tzinfo=UTC)
    later = datetime(2027, 1, 5, 23, 30, tzinfo=UTC)
    assert product_expiry(R, later) == datetime(2027, 1, 6, 11, 30, tzinfo=UTC)  # over midnight
    assert product_expiry(V1, FORMULATED) is None  # v1 states no shelf life


# ---- the endotoxin figure -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("eu_per_ml", "volume_ml", "weight_kg", "hours", "rate"), [
    (0.5, 50, 10, 0.5, 5.0),  # exactly at the limit
    (0.6, 50, 10, 0.5, 6.0),
    (0.5, 50, 10, 1.0, 2.5),  # a longer infusion halves the rate
    (0.5, 50, 20, 0.5, 2.5),  # a heavier patient halves it
    (0.0, 50, 10, 0.5, 0.0),
    (1.0, 0, 10, 0.5, 0.0),  # nothing infused
    (2.0, 95, 70, 0.5, 2.0 * 95 / 70 / 0.5),
])
def test_endotoxin_per_kg_h(eu_per_ml: float, volume_ml: float, weight_kg: float, hours: float, rate: float) -> None:
    assert endotoxin_per_kg_h(eu_per_ml, volume_ml, weight_kg, hours) == pytest.approx(rate)


@pytest.mark.parametrize(("args", "name"), [
    ((-0.1, 50, 10, 0.5), "endotoxin"),
    ((0.5, -1, 10, 0.5), "infused volume"),
    ((0.5, 50, 0, 0.5), "patient weight"),
    ((0.5, 50, 10, 0), "infusion time"),
    ((float("nan"), 50, 10, 0.5), "endotoxin"),
    ((0.5, float("inf"), 10, 0.5), "infused volume"),
])
def test_endotoxin_per_kg_h_refuses_what_is_not_a_measurement(args: tuple[float, ...], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        endotoxin_per_kg_h(*args)


# ---- QC outcomes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("test", "result", "passed"), [
    ("gram_stain", "negative", True),
    ("gram_stain", "positive", False),
    ("mycoplasma", "negative", True),
    ("mycoplasma", "positive", False),
    ("sterility", "negative", True),
    ("sterility", "positive", False),
])
def test_negative_positive_results(test: str, result: str, passed: bool) -> None:
    out = qc_outcome(R, REL.test(test), {"result": result}, volume_ml=None, weight_kg=None)
    assert (out.passed, out.facts) == (passed, {"result": result})
    assert out.message == f"{REL.test(test).title}: {result}"


@pytest.mark.parametrize("result", ["Negative", "", None, 0, "unknown"])
def test_a_negative_positive_result_is_one_of_the_two(result: Any) -> None:
    with pytest.raises(ValueError, match="gram_stain: result must be 'negative' or 'positive'"):
        qc_outcome(R, REL.test("gram_stain"), {"result": result}, volume_ml=None, weight_kg=None)


@pytest.mark.parametrize(("eu_per_ml", "volume_ml", "weight_kg", "hours", "passed", "rate"), [
    (0.5, 50, 10, None, True, 5.0),  # the release figure uses the planned (shortest) infusion, 0.5 h: at the limit
    (0.6, 50, 10, None, False, 6.0),
    (0.6, 50, 10, 1.0, True, 3.0),  # recomputed with the actual infusion time
    (0, 50, 10, None, True, 0.0),
    (1, 95, 70, None, True, 1 * 95 / 70 / 0.5),
])
def test_endotoxin_results(eu_per_ml: float, volume_ml: float, weight_kg: float, hours: float | None, passed: bool,
                           rate: float) -> None:
    out = qc_outcome(R, REL.test("endotoxin"), {"eu_per_ml": eu_per_ml}, volume_ml=volume_ml, weight_kg=weight_kg,
                     hours=hours)
    assert out.passed is passed
    assert out.facts["eu_per_kg_h"] == pytest.approx(rate)
    assert out.facts["limit_eu_per_kg_h"] == REL.endotoxin_limit_eu_per_kg_h == 5
    assert out.facts["infusion_hours"] == (REL.planned_infusion_hours if hours is None else hours)
    assert (out.facts["eu_per_ml"], out.facts["volume_ml"], out.facts["weight_kg"]) == (eu_per_ml, volume_ml,
                                                                                        weight_kg)
    assert ("within the limit 5 EU/kg/h" if passed else "above the limit 5 EU/kg/h") in out.message
    assert f"{eu_per_ml:g} EU/mL x {volume_ml:g} mL / {weight_kg:g} kg" in out.message


@pytest.mark.parametrize(("result", "volume_ml", "weight_kg", "match"), [
    ({"eu_per_ml": "0.5"}, 50, 10, "eu_per_ml must be a number"),
    ({"eu_per_ml": True}, 50, 10, "eu_per_ml must be a number"),
    ({}, 50, 10, "eu_per_ml must be a number"),
    ({"eu_per_ml": 0.5}, None, 10, "needs the formulated volume and the patient's weight"),
    ({"eu_per_ml": 0.5}, 50, None, "needs the formulated volume and the patient's weight"),
    ({"eu_per_ml": -1}, 50, 10, "endotoxin must be a finite number"),
])
def test_an_endotoxin_result_needs_a_number_and_its_context(result: dict[str, Any], volume_ml: float | None,
                                                            weight_kg: float | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        qc_outcome(R, REL.test("endotoxin"), result, volume_ml=volume_ml, weight_kg=weight_kg)


# ---- release --------------------------------------------------------------------------------------------------------

BEFORE_RELEASE = ["gram_stain", "endotoxin", "mycoplasma"]


def qc(**states: str) -> dict[str, QcState]:
    """QC states by test: "pass", "fail", "pending" or "not_sampled"."""
    out = {}
    for key, s in states.items():
        if s == "pass":
            out[key] = QcState(key, "reported", True)
        elif s == "fail":
            out[key] = QcState(key, "reported", False)
        else:
            out[key] = QcState(key, s)  # type: ignore[arg-type]
    return out


ALL_PASS = qc(gram_stain="pass", endotoxin="pass", mycoplasma="pass", sterility="pending")


def test_release_needs_only_the_before_release_tests() -> None:
    assert [t.key for t in REL.tests if t.before_release] == BEFORE_RELEASE
    assert not REL.test("sterility").before_release  # reported after the infusion


@pytest.mark.parametrize(("states", "held", "now", "rules", "facts"), [
    (ALL_PASS, False, h(2), [], []),
    # sterility does not block release, whatever its state
    ({**ALL_PASS, **qc(sterility="not_sampled")}, False, h(2), [], []),
    ({k: v for k, v in ALL_PASS.items() if k != "sterility"}, False, h(2), [], []),
    # a held run: QA resumes it first
    (ALL_PASS, True, h(2), ["run_held"], [{"hold_reason": "missed step: harvest"}]),
    # expiry: at it the product is still in date, after it not
    (ALL_PASS, False, EXPIRY, [], []),
    (ALL_PASS, False, EXPIRY + timedelta(seconds=1), ["product_expired"], [{"expiry": EXPIRY.isoformat()}]),
    # results not in yet (pending, or the sample not taken), named in recipe order
    ({**ALL_PASS, **qc(mycoplasma="pending")}, False, h(2), ["qc_results_pending"], [{"tests": ["mycoplasma"]}]),
    (qc(sterility="pending"), False, h(2), ["qc_results_pending"], [{"tests": BEFORE_RELEASE}]),
    ({}, False, h(2), ["qc_results_pending"], [{"tests": BEFORE_RELEASE}]),
    ({**ALL_PASS, **qc(gram_stain="not_sampled", endotoxin="pending")}, False, h(2), ["qc_results_pending"],
     [{"tests": ["gram_stain", "endotoxin"]}]),
    # results out of specification
    ({**ALL_PASS, **qc(endotoxin="fail")}, False, h(2), ["qc_result_failed"], [{"tests": ["endotoxin"]}]),
    ({**ALL_PASS, **qc(gram_stain="fail", mycoplasma="fail")}, False, h(2), ["qc_result_failed"],
     [{"tests": ["gram_stain", "mycoplasma"]}]),
    ({**ALL_PASS, **qc(sterility="fail")}, False, h(2), [], []),  # only before-release results stop a release
    # every rule at once, in order: the hold, the expiry, pending results, failing results
    (qc(gram_stain="fail", endotoxin="pending"), True, h(13), ["run_held", "product_expired", "qc_results_pending",
                                                               "qc_result_failed"],
     [{"hold_reason": "missed step: harvest"}, {"expiry": EXPIRY.isoformat()},
      {"tests": ["endotoxin", "mycoplasma"]}, {"tests": ["gram_stain"]}]),
])
def test_release_refusals(states: dict[str, QcState], held: bool, now: datetime, rules: list[str],
                          facts: list[dict[str, Any]]) -> None:
    out = release_refusals(R, states, held=held, hold_reason="missed step: harvest" if held else None,
                           expiry=EXPIRY, now=now)
    assert [r.rule for r in out] == rules
    assert [r.facts for r in out] == facts


def test_release_refusal_messages_name_the_limit() -> None:
    states = qc(gram_stain="fail", endotoxin="pending")
    held, expired, pending, failed = release_refusals(R, states, held=True, hold_reason=None, expiry=EXPIRY,
                                                      now=h(13))
    assert "held for QA disposition (no reason given)" in held.message and "QA resumes it" in held.message
    assert expired.message == "the product expired at 2027-01-05T20:00:00+00:00"
    assert pending.message == "release waits for the results of endotoxin, mycoplasma"
    assert failed.message == "QC results out of specification: gram_stain"


def test_release_without_an_expiry_or_qc_tests() -> None:
    assert release_refusals(R, ALL_PASS, held=False, hold_reason=None, expiry=None, now=h(1000)) == []
    assert release_refusals(V1, {}, held=False, hold_reason=None, expiry=None, now=h(2)) == []  # v1: no QC tests
    assert [r.rule for r in release_refusals(V1, {}, held=True, hold_reason="x", expiry=None, now=h(2))] == [
        "run_held"]


# ---- infusion -------------------------------------------------------------------------------------------------------

PATIENT, PRODUCT = "P-0007", "RUN-0042"
START = HSCT + timedelta(days=7)  # the planned HSCT day +7


IN_DATE = object()  # the product expires 4 h after the infusion starts


def infuse(*, patient: str = PATIENT, product: str = PRODUCT, start: datetime = START,
           minutes: float = 30, expiry: Any = IN_DATE, hsct: datetime | None = HSCT,
           earliest_day: float | None = 4) -> list[Any]:
    return infusion_refusals(R, patient_id=PATIENT, product_id=PRODUCT, scanned_patient=patient,
                             scanned_product=product, start=start, end=start + timedelta(minutes=minutes),
                             expiry=start + timedelta(hours=4) if expiry is IN_DATE else expiry, hsct=hsct,
                             earliest_day=earliest_day)


@pytest.mark.parametrize(("kwargs", "rules"), [
    ({}, []),
    ({"patient": f" {PATIENT} \n"}, []),  # the scanner's whitespace is not a mismatch
    ({"patient": "P-0008"}, ["bedside_mismatch"]),
    ({"product": "RUN-0043"}, ["bedside_mismatch"]),
    ({"patient": "P-0008", "product": "RUN-0043"}, ["bedside_mismatch"]),
    ({"patient": PATIENT.lower()}, ["bedside_mismatch"]),  # ids compare exactly
    ({"minutes": 0}, ["infusion_times"]),
    ({"minutes": -5}, ["infusion_times"]),
    ({"expiry": START}, []),  # starting at the expiry is still in date
    ({"expiry": START - timedelta(seconds=1)}, ["product_expired"]),
    ({"expiry": None}, []),
    # HSCT day +4 .. +10, inclusive
    ({"start": HSCT + timedelta(days=4)}, []),
    ({"start": HSCT + timedelta(days=10)}, []),
    ({"start": HSCT + timedelta(days=4) - timedelta(minutes=1)}, ["infusion_outside_window"]),
    ({"start": HSCT + timedelta(days=10, minutes=1)}, ["infusion_outside_window"]),
    ({"start": HSCT - timedelta(days=1)}, ["infusion_outside_window"]),
    ({"hsct": None, "start": HSCT}, []),
    # PT-Cy (cyclophosphamide on days +3/+4): not before day +5
    ({"start": HSCT + timedelta(days=4, hours=12), "earliest_day": 5}, ["infusion_outside_window"]),
    ({"start": HSCT + timedelta(days=5), "earliest_day": 5}, []),
    ({"start": HSCT + timedelta(days=4, hours=12), "earliest_day": None}, []),
    ({"start": HSCT + timedelta(days=4, hours=12), "earliest_day": 2}, []),  # never before the recipe's day +4
    ({"start": HSCT + timedelta(days=3), "earliest_day": 2}, ["infusion_outside_window"]),
    # every rule at once, in order
    ({"patient": "P-0008", "minutes": -1, "expiry": START - timedelta(hours=1), "start": START,
      "hsct": START - timedelta(days=2)}, ["bedside_mismatch", "infusion_times", "product_expired",
                                           "infusion_outside_window"]),
])
def test_infusion_refusals(kwargs: dict[str, Any], rules: list[str]) -> None:
    assert [r.rule for r in infuse(**kwargs)] == rules


@pytest.mark.parametrize(("patient", "product", "which", "text"), [
    ("P-0008", PRODUCT, ["patient"], "the scanned patient id does not match"),
    (PATIENT, "RUN-0043", ["product"], "the scanned product id does not match"),
    ("P-0008", "RUN-0043", ["patient", "product"], "the scanned patient and product id does not match"),
])
def test_bedside_mismatch_names_which_id(patient: str, product: str, which: list[str], text: str) -> None:
    (r,) = infuse(patient=patient, product=product)
    assert r.rule == "bedside_mismatch" and r.facts == {"mismatch": which}
    assert text in r.message and f"(patient {PATIENT}, product {PRODUCT}); do not infuse" in r.message


def test_infusion_refusal_messages() -> None:
    (times,) = infuse(minutes=-10)
    assert "infusion_end 2027-01-05T08:50:00+00:00 is not after infusion_start 2027-01-05T09:00:00+00:00" in (
        times.message)
    (expired,) = infuse(expiry=START - timedelta(hours=1))
    assert "after the product's expiry 2027-01-05T08:00:00+00:00" in expired.message
    assert expired.facts == {"expiry": (START - timedelta(hours=1)).isoformat()}
    (late,) = infuse(start=HSCT + timedelta(days=11))
    assert "HSCT day +11.00 is outside the allowed day +4 .. +10" in late.message
    assert late.facts == {"hsct_day": 11.0, "window_days": [4, 10]}
    assert "earliest infusion day" not in late.message
    (early,) = infuse(start=HSCT + timedelta(days=4, hours=12), earliest_day=5)
    assert "HSCT day +4.50 is outside the allowed day +5 .. +10 (the transplant type's earliest infusion day)" in (
        early.message)
    assert early.facts == {"hsct_day": 4.5, "window_days": [5, 10]}
