"""Calibration records, pure: the status and days left of a due date, the rules of a new record, the calibration
alarm's definition (it agrees with the status), and what the incubator check reads from the records."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.alarms import Priority, Severity, evaluate, initial_state
from app.alarms.calibration import calibration_alarm
from app.devices.calibration import (
    NOT_RECORDED,
    StepPoint,
    check_record,
    days_left,
    site_today,
    status,
    step_calibration,
)
from drivers.base import Quality

TODAY = date(2026, 11, 22)
AT = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(("due_on", "warn_days", "left", "expected"), [
    (TODAY + timedelta(days=365), 30, 365, "valid"),
    (TODAY + timedelta(days=31), 30, 31, "valid"),
    (TODAY + timedelta(days=30), 30, 30, "due_soon"),  # due within the 30 days
    (TODAY + timedelta(days=1), 30, 1, "due_soon"),
    (TODAY, 30, 0, "due_soon"),  # the due date is the last valid day
    (TODAY - timedelta(days=1), 30, -1, "overdue"),
    (TODAY - timedelta(days=400), 30, -400, "overdue"),
    (TODAY + timedelta(days=2), 1, 2, "valid"),
    (TODAY + timedelta(days=1), 1, 1, "due_soon"),
])
def test_status_and_days_left(due_on: date, warn_days: int, left: int, expected: str) -> None:
    assert days_left(due_on, TODAY) == left
    assert status(due_on, TODAY, warn_days) == expected


@pytest.mark.parametrize(("now", "zone", "today"), [
    (datetime(2026, 11, 22, 12, 0, tzinfo=UTC), "UTC", date(2026, 11, 22)),
    (datetime(2026, 11, 22, 12, 0, tzinfo=UTC), "Pacific/Auckland", date(2026, 11, 23)),  # UTC+13
    (datetime(2026, 11, 22, 3, 0, tzinfo=UTC), "America/New_York", date(2026, 11, 21)),  # UTC-5
])
def test_today_is_the_service_clocks_date_at_the_site(now: datetime, zone: str, today: date) -> None:
    assert site_today(now, ZoneInfo(zone)) == today


@pytest.mark.parametrize(("calibrated_on", "due_on", "certificate", "performed_by", "rule", "field"), [
    (TODAY, TODAY + timedelta(days=365), "CERT-1", "Metrology Ltd", None, None),
    (TODAY + timedelta(days=1), TODAY + timedelta(days=365), "CERT-1", "Metrology Ltd", "calibrated_in_future",
     "calibrated_on"),
    (TODAY, TODAY, "CERT-1", "Metrology Ltd", "due_not_after_calibration", "due_on"),
    (TODAY, TODAY - timedelta(days=1), "CERT-1", "Metrology Ltd", "due_not_after_calibration", "due_on"),
    (TODAY, TODAY + timedelta(days=1), "  ", "Metrology Ltd", "certificate_required", "certificate"),
    (TODAY, TODAY + timedelta(days=1), "C" * 201, "Metrology Ltd", "certificate_too_long", "certificate"),
    (TODAY, TODAY + timedelta(days=1), "C" * 200, "Metrology Ltd", None, None),
    (TODAY, TODAY + timedelta(days=1), "CERT-1", "", "performed_by_required", "performed_by"),
])
def test_the_rules_of_a_new_record(calibrated_on: date, due_on: date, certificate: str, performed_by: str,
                                   rule: str | None, field: str | None) -> None:
    refusal = check_record(calibrated_on, due_on, certificate, performed_by, TODAY)
    assert ((refusal.rule, refusal.field) if refusal else (None, None)) == (rule, field)


def _alarm_on(left: int, warn_days: int) -> tuple[Severity | None, str]:
    defn = calibration_alarm(warn_days)
    st, _ = evaluate(defn, initial_state("inc.temperature:calibration", AT), float(left), Quality.GOOD, AT)
    return st.active, (defn.priority_of(st.active).value if st.active is not None else "")


@pytest.mark.parametrize(("left", "severity", "priority"), [
    (365, None, ""), (31, None, ""), (30, Severity.L, "advisory"), (1, Severity.L, "advisory"),
    (0, Severity.L, "advisory"), (-1, Severity.LL, "high"), (-30, Severity.LL, "high"),
])
def test_the_alarm_is_advisory_when_due_soon_and_high_when_overdue(left: int, severity: Severity | None,
                                                                  priority: str) -> None:
    assert _alarm_on(left, 30) == (severity, priority)


@pytest.mark.parametrize("warn_days", [1, 7, 30, 365])
def test_the_alarm_agrees_with_the_status_on_every_day(warn_days: int) -> None:
    expected = {"valid": None, "due_soon": Severity.L, "overdue": Severity.LL}
    for left in range(-3, warn_days + 4):
        assert _alarm_on(left, warn_days)[0] is expected[status(TODAY + timedelta(days=left), TODAY, warn_days)], left


def test_the_alarm_definition_names_the_warning() -> None:
    defn = calibration_alarm(14)
    assert defn.name == "calibration" and defn.kind == "limit"
    assert "14 days" in defn.description and "overdue" in defn.description
    assert defn.l is not None and defn.l.priority is Priority.ADVISORY
    assert defn.ll is not None and defn.ll.priority is Priority.HIGH and defn.ll.value == 0
    assert defn.h is None and defn.hh is None


def _rec(point: str, due_on: date, rec_id: int = 1) -> StepPoint:
    return StepPoint(f"incubator.{point}", "inc", point, {
        "id": rec_id, "device": "inc", "point": point, "calibrated_on": due_on - timedelta(days=365),
        "due_on": due_on, "certificate": f"CERT-{point}"})


def test_the_step_reads_the_earliest_due_date_and_is_valid_when_nothing_is_overdue() -> None:
    found = step_calibration([_rec("temperature", TODAY + timedelta(days=90)), _rec("co2", TODAY),
                              _rec("humidity", TODAY + timedelta(days=200))], TODAY)
    assert found.valid is True and found.due == TODAY and found.due_text == TODAY.isoformat()
    assert [(p["point"], p["due_on"], p["certificate"], p["result"]) for p in found.points] == [
        ("temperature", (TODAY + timedelta(days=90)).isoformat(), "CERT-temperature", "in_force"),
        ("co2", TODAY.isoformat(), "CERT-co2", "in_force"),
        ("humidity", (TODAY + timedelta(days=200)).isoformat(), "CERT-humidity", "in_force")]


def test_one_overdue_or_missing_point_makes_the_step_invalid() -> None:
    overdue = step_calibration([_rec("temperature", TODAY + timedelta(days=90)),
                                _rec("co2", TODAY - timedelta(days=1))], TODAY)
    assert overdue.valid is False and overdue.due == TODAY - timedelta(days=1)
    assert [p["result"] for p in overdue.points] == ["in_force", "overdue"]
    missing = step_calibration([_rec("temperature", TODAY + timedelta(days=90)),
                                StepPoint("incubator.co2", "inc", "co2", None)], TODAY)
    assert missing.valid is False and missing.due == TODAY + timedelta(days=90)
    assert missing.points[1]["result"] == "not_recorded" and missing.points[1]["due_on"] is None
    nothing = step_calibration([StepPoint("incubator.co2", None, None, None)], TODAY)
    assert nothing.valid is False and nothing.due is None and nothing.due_text == NOT_RECORDED
    assert step_calibration([], TODAY).valid is False  # a step that names no point has nothing to read
