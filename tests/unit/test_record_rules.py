"""The batch record's exceptions, content hash and reviews, pure (app/records/record_rules.py): one row per kind of
exception with its stable key, fingerprints that follow what an exception shows, a content hash that ignores when
and where the record was generated, and reviews that count only for what they reviewed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.records.record_model import (
    AlarmEventView,
    BatchRecord,
    CalibrationView,
    ChainHead,
    CorrectionView,
    DeviationView,
    EquipmentView,
    ExcursionView,
    Identity,
    InputView,
    ProductView,
    QcView,
    ReleaseView,
    Review,
    SignatureView,
    StepView,
    VersionInfo,
)
from app.records.record_rules import ReviewRow, attach_reviews, content_hash, exceptions

T0 = datetime(2026, 9, 2, 4, 0, tzinfo=UTC)
WINDOW = {"earliest": "2026-09-04T22:00:00+00:00", "target": "2026-09-05T04:00:00+00:00",
          "latest": "2026-09-05T10:00:00+00:00", "hard_latest": "2026-09-05T16:00:00+00:00"}


def _record(**sections: Any) -> BatchRecord:
    base: dict[str, Any] = {
        "generated_at": T0 + timedelta(days=8), "version": VersionInfo(number=None, draft=True),
        "identity": Identity(run_id=7, run_code="RUN-7", status="running", recipe=None, product_id="RUN-7",
                             donor_id="D-1", graft_din=None, patient_id="P-1", patient_weight_kg=70.0,
                             transplant_type=None, arm=None, cell_source="mobilized", target_dose_per_kg=4e6,
                             hsct_at=None, t0=T0, created_at=T0 - timedelta(days=1), ended_at=None),
        "exceptions": [], "equipment": [], "materials": [], "steps": [], "deviations": [], "alarms": [],
        "excursions": [], "door_openings": [], "setpoints": [], "charts": [],
        "product": ProductView(status=None, expiry=None, dose=None, decision=None),
        "release": ReleaseView(released=False), "audit": [], "audit_chain": ChainHead(seq=10, hash="a" * 64)}
    base.update(sections)
    return BatchRecord(**base)


def _step(key: str = "feed_day3", **over: Any) -> StepView:
    fields: dict[str, Any] = {"key": key, "title": key.replace("_", " "), "status": "done", "window": WINDOW,
                              "done_at": T0 + timedelta(hours=72), "recorded_by": "op"}
    fields.update(over)
    return StepView(**fields)


def _sig(valid: bool = True) -> SignatureView:
    return SignatureView(meaning="approved", printed_name="Sue Pervisor", signer="sup", role="supervisor",
                         signed_at=T0, record_hash="b" * 64, valid=valid)


def _event(at_min: float, reason: str, to: str, priority: str = "high", severity: str | None = "hh",
           alarm: str = "incubator-1.temperature:limit", actor: str | None = None,
           comment: str | None = None, frm: str = "normal") -> AlarmEventView:
    return AlarmEventView(at=T0 + timedelta(minutes=at_min), alarm_id=alarm, channel="incubator-1.temperature",
                          from_state=frm, to_state=to, severity=severity, priority=priority, value=39.6,
                          reason=reason, actor=actor, comment=comment)


def _qc(status: str, after_release: bool = False) -> ProductView:
    return ProductView(status=None, expiry=None, dose=None, decision=None,
                       qc=[QcView(test="sterility", status=status, after_release=after_release)])


def _calibrated(start: str, now: str, end: str | None) -> list[EquipmentView]:
    return [EquipmentView(device="incubator-1", kind="incubator", role_in_run="incubator", profile=None,
                          profile_version=None, endpoint="opc.tcp://x", calibrations=[CalibrationView(
                              point="temperature", role="temperature", calibrated_on="2026-01-02",
                              due_on="2026-09-05", certificate="CAL-1", performed_by="Metrology Ltd",
                              status_at_start=start, status_now=now, status_at_end=end)])]


DEVIATION = DeviationView(id=12, step_key="seed", rule="acceptance_limit", classification="deviation",
                          description="seed.viability = 75 fails >= 80 %", opened_at=T0, opened_by="op",
                          status="open", closed_at=None, closed_by=None, close_reason=None)

# (what the record holds, the exception keys it has, in order)
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("nothing to review", {"steps": [_step()]}, []),
    ("a deviation, open or closed", {"deviations": [DEVIATION, DEVIATION.model_copy(update={
        "id": 13, "status": "closed", "closed_by": "qa", "closed_at": T0, "close_reason": "assessed"})]},
     ["deviation:12", "deviation:13"]),
    ("an override", {"steps": [_step(override=True, override_reason="counter down")]}, ["override:feed_day3"]),
    ("a correction", {"steps": [_step(corrections=[CorrectionView(
        id=17, at=T0, by="sup", reason="re-read", changes={"viability": 91.0}, original={"viability": 19.0})])]},
     ["correction:17"]),
    ("a late step", {"steps": [_step(late=True)]}, ["late_step:feed_day3"]),
    ("a missed step (not also late)", {"steps": [_step(status="missed", done_at=None, late=True, missed=True)]},
     ["missed_step:feed_day3"]),
    ("an input out of its limit", {"steps": [_step(inputs=[
        InputView(name="viability", value=65.0, unit="%", limit=">= 70 %", passed=False),
        InputView(name="viable_cells", value=8e6, unit="cells", passed=None),
        InputView(name="viable_density", value=5e5, unit="cells/mL", limit=">= 1 cells/mL", passed=True)])]},
     ["out_of_limit:feed_day3.viability"]),
    ("a high alarm activation", {"alarms": [_event(0, "activated", "active_unack"),
                                            _event(2, "acknowledged", "active_ack", actor="op", comment="door"),
                                            _event(9, "returned", "normal", severity=None)]},
     ["high_alarm:incubator-1.temperature:limit@2026-09-02T04:00:00.000000Z"]),
    ("a medium activation that escalates counts once, at its activation", {"alarms": [
        _event(0, "activated", "active_unack", priority="medium", severity="h"),
        _event(5, "escalated", "active_unack"), _event(6, "escalated", "active_unack")]},
     ["high_alarm:incubator-1.temperature:limit@2026-09-02T04:00:00.000000Z"]),
    ("two activations, two exceptions; a medium one none", {"alarms": [
        _event(0, "activated", "active_unack"), _event(3, "returned", "returned_unack", severity=None),
        _event(10, "activated", "active_unack"),
        _event(20, "activated", "active_unack", priority="medium", severity="h", alarm="incubator-1.co2:limit")]},
     ["high_alarm:incubator-1.temperature:limit@2026-09-02T04:00:00.000000Z",
      "high_alarm:incubator-1.temperature:limit@2026-09-02T04:10:00.000000Z"]),
    ("an excursion; a channel that stayed inside none", {"excursions": [
        ExcursionView(channel="incubator-1.temperature", unit="C", band=(36.0, 38.0), minutes_outside=12.5,
                      integral=3.2, worst=1.6, episodes=1),
        ExcursionView(channel="incubator-1.co2", unit="%", band=(4.0, 6.0), minutes_outside=0, integral=0,
                      worst=None, episodes=0)]},
     ["excursion:incubator-1.temperature"]),
    ("a pending result", {"product": _qc("pending")}, ["pending_result:sterility"]),
    ("a result failed after release", {"product": _qc("failed", after_release=True)}, ["failed_result:sterility"]),
    ("a passed result, none", {"product": _qc("passed", after_release=True)}, []),
    ("calibration overdue at the start", {"equipment": _calibrated("overdue", "overdue", "overdue")},
     ["calibration:incubator-1.temperature"]),
    ("calibration due during the run", {"equipment": _calibrated("due_soon", "due_soon", "overdue")},
     ["calibration:incubator-1.temperature"]),
    ("calibration due soon but valid to the end, none", {"equipment": _calibrated("due_soon", "due_soon",
                                                                                  "due_soon")}, []),
]


@pytest.mark.parametrize(("sections", "keys"), [(s, k) for _, s, k in CASES], ids=[c[0] for c in CASES])
def test_each_kind_of_exception_has_its_key(sections: dict[str, Any], keys: list[str]) -> None:
    found = exceptions(_record(**sections))
    assert [e.key for e in found] == keys
    assert all(e.review is None and len(e.fingerprint) == 64 and e.title and e.detail and e.ref for e in found)


def test_exceptions_come_in_the_documented_order() -> None:
    record = _record(deviations=[DEVIATION], steps=[_step(late=True, override=True, inputs=[
        InputView(name="viability", value=65.0, unit="%", limit=">= 70 %", passed=False)])],
        alarms=[_event(0, "activated", "active_unack")], product=_qc("pending"))
    assert [e.kind for e in exceptions(record)] == ["deviation", "override", "late_step", "high_alarm",
                                                    "out_of_limit", "pending_result"]


# (how the record changes) -> whether the one exception's fingerprint changes; its key never does
FINGERPRINTS: list[tuple[str, Callable[[BatchRecord], BatchRecord], bool]] = [
    ("the deviation closes", lambda r: r.model_copy(update={"deviations": [DEVIATION.model_copy(update={
        "status": "closed", "closed_by": "qa", "closed_at": T0, "close_reason": "assessed"})]}), True),
    ("QA's impact is added", lambda r: r.model_copy(update={"deviations": [DEVIATION.model_copy(update={
        "impact": "none on the product"})]}), True),
    ("a comment is added", lambda r: r.model_copy(update={"deviations": [DEVIATION.model_copy(update={
        "comments": [{"id": 1, "at": "2026-09-03T00:00:00Z", "author": "op", "text": "counted again"}]})]}), True),
    ("only generated_at", lambda r: r.model_copy(update={"generated_at": T0 + timedelta(days=30)}), False),
    ("an unrelated section", lambda r: r.model_copy(update={"steps": [_step()]}), False),
]


@pytest.mark.parametrize(("change", "changes"), [(c, x) for _, c, x in FINGERPRINTS],
                         ids=[f[0] for f in FINGERPRINTS])
def test_a_fingerprint_follows_what_the_exception_shows(change: Callable[[BatchRecord], BatchRecord],
                                                        changes: bool) -> None:
    record = _record(deviations=[DEVIATION])
    [before] = exceptions(record)
    [after] = exceptions(change(record))
    assert after.key == before.key == "deviation:12"
    assert (after.fingerprint != before.fingerprint) is changes


# (how the record changes) -> whether its content hash changes
HASHES: list[tuple[str, Callable[[BatchRecord], BatchRecord], bool]] = [
    ("generated_at", lambda r: r.model_copy(update={"generated_at": T0 + timedelta(days=400)}), False),
    ("the version", lambda r: r.model_copy(update={"version": VersionInfo(number=3, draft=False, previous=2,
                                                                          issued_at=T0, content_hash="c" * 64)}),
     False),
    ("the chain head", lambda r: r.model_copy(update={"audit_chain": ChainHead(seq=11, hash="d" * 64)}), False),
    ("a review", lambda r: r.model_copy(update={"exceptions": [e.model_copy(update={"review": Review(
        by="qa", at=T0, comment="ok")}) for e in r.exceptions]}), False),
    ("a deviation closes", lambda r: r.model_copy(update={"deviations": [DEVIATION.model_copy(update={
        "status": "closed"})]}), True),
    ("the run completes", lambda r: r.model_copy(update={"identity": r.identity.model_copy(update={
        "status": "completed"})}), True),
]


@pytest.mark.parametrize(("change", "changes"), [(c, x) for _, c, x in HASHES], ids=[h[0] for h in HASHES])
def test_the_content_hash_is_the_content(change: Callable[[BatchRecord], BatchRecord], changes: bool) -> None:
    record = _record(deviations=[DEVIATION])
    record = record.model_copy(update={"exceptions": exceptions(record)})
    digest = content_hash(record)
    assert len(digest) == 64 and digest == content_hash(_record(deviations=[DEVIATION]).model_copy(
        update={"exceptions": exceptions(record)}))
    assert (content_hash(change(record)) != digest) is changes


def test_reviews_attach_by_key_and_fingerprint_only() -> None:
    record = _record(deviations=[DEVIATION, DEVIATION.model_copy(update={"id": 13})],
                     steps=[_step(late=True)])
    dev12, dev13, late = exceptions(record)
    rows = [
        ReviewRow(dev12.key, dev12.fingerprint, "qa-1", T0, "first look", _sig()),
        ReviewRow(dev12.key, dev12.fingerprint, "qa-2", T0 + timedelta(hours=1), "assessed", _sig()),
        ReviewRow(dev13.key, "0" * 64, "qa-1", T0, "of an earlier state"),  # stale: the deviation changed since
        ReviewRow(late.key, late.fingerprint, "qa-1", T0, "signature broken", _sig(valid=False)),
    ]
    out = attach_reviews([dev12, dev13, late], rows)
    assert [e.key for e in out] == [dev12.key, dev13.key, late.key]
    assert out[0].review is not None and (out[0].review.by, out[0].review.comment) == ("qa-2", "assessed")
    assert out[0].review.signature == _sig()
    assert out[1].review is None and out[2].review is None
    assert [e.model_copy(update={"review": None}) for e in out] == [dev12, dev13, late]
