"""A realistic batch record built from the model alone (no database): the renderer's tests and bench/record.py.

`sample_record()` is a 7-day HTLP run: 8 steps of the v2 recipe with their inputs and limits, a late step with its
deviation, a corrected count (changed after entry), a temperature alarm and its excursion, door openings, a
setpoint change, 6 charts of 2,000 five-minute points each (a gap of bad readings in the temperature), product,
QC, release and an audit extract. Sizes are parameters; the content is the same for the same arguments.
"""

from __future__ import annotations

import hashlib
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from app.records.record_model import (
    AlarmEventView,
    AuditEntryView,
    BatchRecord,
    CalibrationView,
    ChainHead,
    ChartView,
    CorrectionView,
    DeviationView,
    DoorOpeningView,
    EquipmentView,
    ExceptionView,
    ExcursionView,
    Identity,
    InputView,
    MaterialView,
    ProductView,
    QcView,
    RecipeRef,
    ReleaseView,
    Review,
    SetpointView,
    SignatureView,
    StepView,
    VersionInfo,
)

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
RUN_CODE = "HTLP-2026-0042"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _sig(meaning: str, name: str, role: str, at: datetime, what: str, comment: str | None = None) -> SignatureView:
    return SignatureView(meaning=meaning, printed_name=name, signer=name.split()[0].lower(), role=role,
                         signed_at=at, record_hash=_hash(what), comment=comment, valid=True)


# (key, title, day offset, inputs as (name, value, unit, limit, passed, source))
_STEPS: list[tuple[str, str, float, list[tuple[str, Any, str | None, str | None, bool | None, str | None]]]] = [
    ("coat_vessels", "Coat vessels with DL-4", -1.0,
     [("coating_hours", 3.0, "h", ">= 2 h", True, "typed"), ("coating_temperature", 37.1, "degC", "36.5 - 37.5 degC",
                                                              True, "typed")]),
    ("incubator_ready", "Check the incubator", -0.2,
     [("temperature", 37.02, "degC", "36.5 - 37.5 degC", True, "incubator reading"),
      ("co2", 5.04, "%", "4.5 - 5.5 %", True, "incubator reading"),
      ("humidity", 93.1, "%RH", ">= 85 %RH", True, "incubator reading"),
      ("calibration_valid", True, None, "true", True, "the calibration records")]),
    ("receive_cells", "Receive donor CD34+ cells (chain of identity)", -0.1,
     [("viable_cd34_cells", 3.2e6, "cells", None, None, "typed"), ("viability", 96.5, "%", ">= 80 %", True, "typed"),
      ("cd34_purity", 91.0, "%", ">= 80 %", True, "typed")]),
    ("seed", "Seed on DL-4 vessels with cytokines and TNF-alpha", 0.0,
     [("viable_cells_seeded", 3.0e6, "cells", None, None, "typed"), ("volume", 15.0, "mL", None, None, "typed")]),
    ("feed_day3", "Day-3 count and feed", 3.0,
     [("viable_cells", 1.45e7, "cells", None, None, "counter import"),
      ("viable_density", 9.6e5, "cells/mL", None, None, "counter import"),
      ("viability", 74.5, "%", ">= 70 %", True, "counter import"),
      ("cd7_percent", 21.0, "%", None, None, "typed")]),
    ("feed_day5", "Day-5 count and feed", 5.0,
     [("viable_cells", 4.1e7, "cells", None, None, "counter import"),
      ("viability", 81.0, "%", ">= 70 %", True, "counter import")]),
    ("mycoplasma_sample", "In-process mycoplasma sample (rapid NAT)", 6.0,
     [("volume", 1.5, "mL", None, None, "typed")]),
    ("harvest", "Harvest, pool, count and flow panel", 7.0,
     [("total_viable_cells", 1.12e8, "cells", None, None, "counter import"),
      ("viability", 86.0, "%", ">= 70 %", True, "counter import"),
      ("cd7_percent", 48.0, "%", ">= 50 %", False, "typed"), ("cd34_percent", 12.0, "%", None, None, "typed"),
      ("cd3_percent", 0.4, "%", "<= 1 %", True, "typed")]),
    ("formulate", "Formulate the dose; QC samples", 7.1,
     [("cd7_cells_formulated", 4.2e7, "cells", None, None, "typed"), ("product_volume", 10.0, "mL", None, None,
                                                                        "typed")]),
    ("release", "QA release", 7.2, []),
]

# role, channel, unit, band, (start, end) of the mean over the run, noise, min/max half-width
_CHARTS: list[tuple[str, str, str, tuple[float | None, float | None] | None, tuple[float, float], float, float]] = [
    ("temperature", "incubator-1.temperature", "C", (36.0, 38.0), (37.0, 37.0), 0.03, 0.08),
    ("co2", "incubator-1.co2", "%", (4.0, 6.0), (5.0, 5.0), 0.02, 0.06),
    ("humidity", "incubator-1.humidity", "%RH", (85.0, None), (93.0, 91.5), 0.2, 0.5),
    ("viable_cell_density", "culture-1.viable_cell_density", "cells/mL", None, (2.0e5, 1.6e6), 0.0, 0.0),
    ("viability", "culture-1.viability", "%", (70.0, None), (95.0, 86.0), 0.3, 0.6),
    ("cd7_percent", "culture-1.cd7_percent", "%", None, (4.0, 55.0), 0.3, 0.5),
]


def chart(role: str = "temperature", points: int = 2000, *, start: datetime = T0, seed: int = 7,
          gap: tuple[int, int] | None = None) -> ChartView:
    """One chart of `points` 5-minute buckets from `start`; `gap` (first, last index) has no mean, min or max."""
    spec = next(c for c in _CHARTS if c[0] == role)
    _role, channel, unit, band, (first, last), noise, half = spec
    rng = random.Random(f"{seed}-{role}")
    out: list[tuple[datetime, float | None, float | None, float | None]] = []
    for i in range(points):
        frac = i / max(1, points - 1)
        if role == "viable_cell_density":
            mean = first * math.exp(math.log(last / first) * frac) * (1 + rng.gauss(0, 0.01))
            spread = mean * 0.03
        else:
            mean = first + (last - first) * frac + rng.gauss(0, noise)
            spread = half
        if role == "temperature" and 1500 <= i < 1504:  # the day-5 feed's door opening: a dip below L
            mean -= 1.4 - 0.3 * (i - 1500)
        if gap is not None and gap[0] <= i <= gap[1]:
            out.append((start + timedelta(minutes=5 * i), None, None, None))
            continue
        out.append((start + timedelta(minutes=5 * i), round(mean, 4), round(mean - spread * rng.random(), 4),
                    round(mean + spread * rng.random(), 4)))
    return ChartView(role=role, channel=channel, unit=unit, band=band, points=out)


def sample_record(*, draft: bool = True, points: int = 2000, steps: int = 8, alarms: int = 4,
                  audit: int = 40) -> BatchRecord:
    """The record of run HTLP-2026-0042: a draft, or (draft=False) issued version 2, released and signed."""
    t0 = T0
    sup, qa, op = ("Sam Supervisor", "supervisor"), ("Quinn Assurance", "qa"), ("Olga Operator", "operator")
    step_views: list[StepView] = []
    for n, (key, title, day, inputs) in enumerate(_STEPS[:steps]):
        done = t0 + timedelta(days=day, hours=1)
        views = [InputView(name=name, value=value, unit=unit, limit=limit, passed=passed, source=source,
                           original=None) for name, value, unit, limit, passed, source in inputs]
        corrections: list[CorrectionView] = []
        late = key == "feed_day5"
        if key == "feed_day3":  # a count corrected after entry, signed by the supervisor
            views = [v.model_copy(update={"changed_after_entry": True, "original": 71.0}) if v.name == "viability"
                     else v for v in views]
            corrections.append(CorrectionView.model_validate({  # by name: the model's optional fields may grow
                "at": done + timedelta(hours=2), "by": "sam",
                "reason": "transcription error: the counter printout reads 74.5",
                "changes": {"viability": 74.5}, "original": {"viability": 71.0},
                "signatures": [_sig("approved", *sup, done + timedelta(hours=2), f"{key}-correction")]}))
        step_views.append(StepView(
            key=key, title=title, status="done", done_at=done + (timedelta(hours=5) if late else timedelta()),
            window={"earliest": (t0 + timedelta(days=day) - timedelta(hours=2)).isoformat(),
                    "target": (t0 + timedelta(days=day)).isoformat(),
                    "latest": (t0 + timedelta(days=day, hours=4)).isoformat()},
            late=late, recorded_by="olga" if n % 2 else "sam", inputs=views, corrections=corrections,
            signatures=[_sig("performed", *op, done, key),
                        *([_sig("verified", *sup, done, key)] if n % 3 == 0 else [])],
            deviation_ids=[1] if late else []))
    deviation = DeviationView(
        id=1, step_key="feed_day5", rule="window.late", classification="minor",
        description="Day-5 count and feed recorded 5 h after its window closed (staff on the day-3 run of HTLP-0041)",
        impact="none expected: the feed interval was 53 h instead of 48 h; viability 81 %",
        actions="shift plan changed so that two runs never feed in the same hour",
        opened_at=t0 + timedelta(days=5, hours=4),
        opened_by="service", status="closed", closed_at=t0 + timedelta(days=5, hours=9), closed_by="quinn",
        close_reason="impact assessed, no product impact",
        comments=[{"at": (t0 + timedelta(days=5, hours=6)).isoformat(), "by": "sam",
                   "text": "operator was on the other run's day-3 count"}],
        signatures=[_sig("approved", *qa, t0 + timedelta(days=5, hours=9), "deviation-1")])
    alarm_states = [("normal", "active_unack", "value 35.6 C below L 36.0 C", None, None),
                    ("active_unack", "active_ack", "acknowledged", "olga", "door opened for the day-5 feed"),
                    ("active_ack", "normal", "value back inside the limits", None, None),
                    ("normal", "normal", "shelve ended", "sam", "end of planned work")]
    alarm_views = []
    for i in range(alarms):
        frm, to, reason, actor, comment = alarm_states[i % len(alarm_states)]
        alarm_views.append(AlarmEventView(
            at=t0 + timedelta(days=5, minutes=10 + 7 * i), alarm_id="incubator-1.temperature:limit",
            channel="incubator-1.temperature", from_state=frm, to_state=to, severity="L", priority="medium",
            value=35.6 if to == "active_unack" else None, reason=reason, actor=actor, comment=comment))
    audit_views = []
    actions = ["step.record", "telemetry.gap", "alarm.acknowledge", "step.correct", "deviation.open", "qc.result"]
    for i in range(audit):
        action = actions[i % len(actions)]
        audit_views.append(AuditEntryView(
            seq=1000 + i, at=t0 + timedelta(minutes=47 * i), actor=["olga", "sam", "service", "quinn"][i % 4],
            action=action, entity_type=action.split(".")[0], entity_id=f"{RUN_CODE}/{i}",
            reason="transcription error" if action == "step.correct" else None,
            changed_after_entry=action == "step.correct"))
    charts = [chart(role, points, start=t0 - timedelta(hours=12), gap=(600, 611) if role == "temperature" else None)
              for role, *_ in _CHARTS]
    issued_at = t0 + timedelta(days=7, hours=6)
    version = VersionInfo(number=None, draft=True) if draft else VersionInfo(
        number=2, draft=False, previous=1, issued_at=issued_at, content_hash=_hash(f"{RUN_CODE}-v2"))
    reviewed = Review(by="quinn", at=t0 + timedelta(days=7, hours=5), comment="counter printout checked",
                      signature=_sig("reviewed", *qa, t0 + timedelta(days=7, hours=5), "exc-correction"))
    exceptions = [
        ExceptionView(key="deviation:1", kind="deviation", title="Deviation #1: window.late (minor)",
                      detail=deviation.description, ref="deviations #1", fingerprint=_hash("d1")),
        ExceptionView(key="correction:feed_day3", kind="correction", title="Day-3 count corrected",
                      detail="viability 71.0 % -> 74.5 %: transcription error", ref="steps feed_day3",
                      fingerprint=_hash("c1"), review=reviewed),
        ExceptionView(key="late_step:feed_day5", kind="late_step", title="Day-5 count and feed late by 5 h",
                      detail="window closed 2026-11-26 12:00 UTC, recorded 17:00 UTC", ref="steps feed_day5",
                      fingerprint=_hash("l1")),
        ExceptionView(key="excursion:incubator-1.temperature", kind="excursion",
                      title="Incubator temperature outside 36.0 - 38.0 C", detail="12.5 min outside, worst 35.6 C",
                      ref="excursions incubator-1.temperature", fingerprint=_hash("x1")),
        ExceptionView(key="failed_result:harvest.cd7_percent", kind="out_of_limit", title="Harvest %CD7+ below limit",
                      detail="48 % (limit >= 50 %): formulated at dose level 2", ref="steps harvest",
                      fingerprint=_hash("o1")),
        ExceptionView(key="pending_result:sterility", kind="pending_result", title="Sterility (14 days) pending",
                      detail="released before the result by design; the result follows", ref="product qc sterility",
                      fingerprint=_hash("p1")),
    ]
    if not draft:
        exceptions = [e if e.review else e.model_copy(update={"review": reviewed.model_copy(
            update={"comment": f"assessed: {e.title}"})}) for e in exceptions]
    calibrations = [CalibrationView.model_validate(c) for c in (  # by name: the model's optional fields may grow
        {"point": "temperature", "role": "temperature", "calibrated_on": "2026-06-02", "due_on": "2027-06-02",
         "certificate": "CAL-T-2231", "performed_by": "Metrology Ltd", "status_at_start": "valid",
         "status_at_end": "valid", "status_now": "valid"},
        {"point": "co2", "role": "co2", "calibrated_on": "2026-05-20", "due_on": "2026-11-30",
         "certificate": "CAL-C-1180", "performed_by": "Metrology Ltd", "status_at_start": "due_soon",
         "status_at_end": "overdue", "status_now": "overdue"})]
    return BatchRecord(
        generated_at=t0 + timedelta(days=7, hours=6), version=version,
        identity=Identity(
            run_id=42, run_code=RUN_CODE, status="completed",
            recipe=RecipeRef(key="htlp-dl4-tnfa", version=2, content_hash=_hash("recipe-v2")),
            product_id="HTLP-P-0042", donor_id="D-88-1204", graft_din="W0000 26 123456 00 X", patient_id="PT-0193",
            patient_weight_kg=68.4, transplant_type="haploidentical", arm="B", cell_source="mobilized_pb",
            target_dose_per_kg=1.0e6, dose_level="level 2 (0.6e6 /kg)", hsct_at=t0 - timedelta(days=1),
            t0=t0, infusion_at=t0 + timedelta(days=7, hours=10), infusion_window_days=(6.0, 9.0),
            created_at=t0 - timedelta(days=3), ended_at=t0 + timedelta(days=7, hours=2)),
        exceptions=exceptions,
        equipment=[
            EquipmentView(device="incubator-1", kind="opcua", role_in_run="incubator", profile="incubator-generic",
                          profile_version="1.2", endpoint="opc.tcp://10.0.4.21:4840", calibrations=calibrations),
            EquipmentView(device="culture-1", kind="modbus", role_in_run="culture_system", profile="closed-system",
                          profile_version="3.0", endpoint="modbus://10.0.4.31:502"),
        ],
        materials=[
            MaterialView(step_key="coat_vessels", reagent="DL-4-Fc (coating)", lot="DL4-2611-07", expiry="2027-02-28",
                         expired_at_use=False),
            MaterialView(step_key="seed", reagent="serum-free X-VIVO-type medium", lot="XV-55821", expiry="2027-01-15",
                         expired_at_use=False),
            MaterialView(step_key="seed", reagent="SCF", lot="SCF-0912", expiry="2026-12-31", expired_at_use=False),
            MaterialView(step_key="seed", reagent="TNF-alpha", lot="TNF-3301", expiry="2026-12-01",
                         expired_at_use=False),
            MaterialView(step_key="feed_day3", reagent="IL-7", lot="IL7-1142", expiry=None, expired_at_use=None),
        ],
        steps=step_views,
        deviations=[deviation],
        alarms=alarm_views,
        excursions=[ExcursionView(channel="incubator-1.temperature", unit="C", band=(36.0, 38.0), minutes_outside=12.5,
                                  integral=3.2, worst=35.6, episodes=1)],
        door_openings=[
            DoorOpeningView(device="incubator-1", step_key=key, opened_at=t0 + timedelta(days=d, hours=1),
                            closed_at=t0 + timedelta(days=d, hours=1, seconds=55), recovery_min=r, outcome=o,
                            reason=None if o == "recovered" else "closed late: 5 vessels to feed")
            for key, d, r, o in (("seed", 0, 11.0, "recovered"), ("feed_day3", 3, 13.5, "recovered"),
                                 ("feed_day5", 5, 24.0, "slow_recovery"))],
        setpoints=[SetpointView(requested_at=t0 + timedelta(days=2), device="incubator-1", point="co2_setpoint",
                                requested=5.2, previous=5.0, read_back=5.2, result="confirmed", actor="sam",
                                reason="CO2 drifting low since day 1", source="dashboard")],
        charts=charts,
        product=ProductView(
            status="released" if not draft else "formulated", expiry=t0 + timedelta(days=7, hours=14),
            dose={"required_cd7_cells": 6.84e7, "target_per_kg": 1.0e6, "achieved": {"cd7_cells": 4.2e7,
                                                                                   "percent_of_target": 61.4}},
            forecasts=[{"count": "seed", "low": 2.1e7, "high": 9.8e7, "below_target": False},
                       {"count": "day3", "low": 3.9e7, "high": 7.7e7, "below_target": True}],
            decision={"level": "level 2", "by": "quinn", "reason": "CD7+ below target; level 2 per protocol"},
            qc=[QcView(test="gram_stain", status="passed", result="negative",
                       reported_at=t0 + timedelta(days=7, hours=3), reported_by="lab"),
                QcView(test="endotoxin", status="passed", result=0.12, reported_at=t0 + timedelta(days=7, hours=4),
                       reported_by="lab"),
                QcView(test="sterility", status="pending")]),
        release=ReleaseView(released=True, released_at=issued_at, refusals=[], signatures=[
            _sig("approved", *qa, issued_at, f"{RUN_CODE}-release", comment="released at dose level 2")])
        if not draft else ReleaseView(released=False, refusals=["4 exceptions not reviewed"]),
        audit=audit_views,
        audit_chain=ChainHead(seq=1000 + audit - 1, hash=_hash(f"chain-{audit}")),
    )
