"""The batch record's model: one document per run, in the order QA and an inspector read it.

The same model is the JSON (`GET /api/v1/runs/{id}/record`, its JSON Schema published with `schema()`), the HTML
page and the PDF (app/records/record_render.py). It is assembled from the database by
app/records/record_collect.py; its exceptions and content hash are pure (app/records/record_rules.py).
Times are UTC. Every model forbids unknown fields, so a record that does not match the schema is a bug here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignatureView(_M):
    """An e-signature's manifestation: printed name, role, meaning and UTC time, and the hash it signs."""

    meaning: str
    printed_name: str
    signer: str
    role: str
    signed_at: datetime
    record_hash: str
    comment: str | None = None
    valid: bool = Field(True, description="the signed record still has the hash the signature signed")


class RecipeRef(_M):
    key: str
    version: int
    content_hash: str


class Identity(_M):
    run_id: int
    run_code: str
    status: str
    recipe: RecipeRef | None
    product_id: str
    donor_id: str | None
    graft_din: str | None
    patient_id: str | None
    patient_weight_kg: float | None
    transplant_type: str | None
    arm: str | None
    cell_source: str | None
    target_dose_per_kg: float | None
    dose_level: str | None = Field(None, description="QA's dose decision when the target could not be reached")
    hsct_at: datetime | None
    t0: datetime | None
    infusion_at: datetime | None = None
    infusion_window_days: tuple[float, float] | None = None
    created_at: datetime
    ended_at: datetime | None


class CalibrationView(_M):
    point: str
    role: str | None
    calibrated_on: str | None
    due_on: str | None
    certificate: str | None
    performed_by: str | None
    status_at_start: str | None
    status_now: str | None = Field(description="at the site today; once the run has ended, on its last day")
    status_at_end: str | None = Field(None, description="on the run's last day (its planned infusion while it runs)")


class EquipmentView(_M):
    device: str
    kind: str
    role_in_run: Literal["incubator", "culture_system"]
    profile: str | None
    profile_version: str | None
    endpoint: str
    calibrations: list[CalibrationView] = []


class MaterialView(_M):
    step_key: str
    reagent: str
    lot: str
    expiry: str | None
    expired_at_use: bool | None = None


class InputView(_M):
    name: str
    value: Any
    unit: str | None = None
    limit: str | None = Field(None, description="the acceptance limit as the recipe states it")
    passed: bool | None = Field(None, description="None: no acceptance limit")
    source: str | None = Field(None, description="typed, a counter import, the calibration records ...")
    changed_after_entry: bool = False
    original: Any = Field(None, description="the first recorded value, when changed after entry")


class CorrectionView(_M):
    id: int | None = Field(None, description="the correction's id (its exception's key: correction:<id>)")
    at: datetime
    by: str
    reason: str
    changes: dict[str, Any]
    original: dict[str, Any]
    signatures: list[SignatureView] = []


class StepView(_M):
    key: str
    title: str
    status: str
    window: dict[str, Any]
    done_at: datetime | None
    late: bool = False
    missed: bool = False
    recorded_by: str | None = None
    inputs: list[InputView] = []
    override: bool = False
    override_reason: str | None = None
    corrections: list[CorrectionView] = []
    signatures: list[SignatureView] = []
    deviation_ids: list[int] = []


class DeviationView(_M):
    id: int
    step_key: str | None
    rule: str
    classification: str = Field(description="the deviation's severity (deviation, alert ...) or QA's class")
    description: str
    impact: str | None = None
    actions: str | None = None
    opened_at: datetime
    opened_by: str
    status: str
    closed_at: datetime | None
    closed_by: str | None
    close_reason: str | None
    comments: list[dict[str, Any]] = []
    signatures: list[SignatureView] = []


class AlarmEventView(_M):
    at: datetime
    alarm_id: str
    channel: str
    from_state: str
    to_state: str
    severity: str | None
    priority: str
    value: float | None
    reason: str
    actor: str | None
    comment: str | None


class ExcursionView(_M):
    channel: str
    unit: str | None
    band: tuple[float | None, float | None]
    minutes_outside: float
    integral: float
    worst: float | None
    episodes: int


class DoorOpeningView(_M):
    device: str
    step_key: str
    opened_at: datetime
    closed_at: datetime | None
    recovery_min: float | None
    outcome: str
    reason: str | None


class SetpointView(_M):
    requested_at: datetime
    device: str
    point: str
    requested: float
    previous: float | None
    read_back: float | None
    result: str | None
    actor: str
    reason: str
    source: str


class ChartView(_M):
    """One measured role over the run: 5-minute buckets (time, mean, min, max) and the limit band."""

    role: str
    channel: str
    unit: str
    band: tuple[float | None, float | None] | None = None
    points: list[tuple[datetime, float | None, float | None, float | None]] = []


class QcView(_M):
    test: str
    status: str
    result: Any = None
    reported_at: datetime | None = None
    reported_by: str | None = None
    after_release: bool = False


class ProductView(_M):
    status: str | None
    expiry: datetime | None
    dose: dict[str, Any] | None
    forecasts: list[dict[str, Any]] = Field([], description="each count's forecast band, in order")
    decision: dict[str, Any] | None
    qc: list[QcView] = []


class ReleaseView(_M):
    released: bool
    released_at: datetime | None = None
    signatures: list[SignatureView] = []
    refusals: list[str] = Field([], description="what still stands in the way of release")


class AuditEntryView(_M):
    seq: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    reason: str | None
    changed_after_entry: bool = False


class ChainHead(_M):
    seq: int
    hash: str


class Review(_M):
    by: str
    at: datetime
    comment: str
    signature: SignatureView | None = None


ExceptionKind = Literal["deviation", "override", "correction", "late_step", "missed_step", "high_alarm", "excursion",
                        "out_of_limit", "pending_result", "failed_result", "calibration"]


class ExceptionView(_M):
    """Something QA reviews before release; `key` is stable across versions of the record (a review refers to it),
    `fingerprint` changes when what it shows changes (a review of an older state no longer counts)."""

    key: str
    kind: ExceptionKind
    title: str
    detail: str
    ref: str = Field(description="where in the record: the section and item")
    fingerprint: str
    review: Review | None = None


class VersionInfo(_M):
    number: int | None = Field(description="the issued version's number; None: the current draft")
    draft: bool
    previous: int | None = None
    issued_at: datetime | None = None
    content_hash: str | None = None


class BatchRecord(_M):
    """The batch record of one run."""

    schema_version: str = SCHEMA_VERSION
    generated_at: datetime
    version: VersionInfo
    identity: Identity
    exceptions: list[ExceptionView]
    equipment: list[EquipmentView]
    materials: list[MaterialView]
    steps: list[StepView]
    deviations: list[DeviationView]
    alarms: list[AlarmEventView]
    excursions: list[ExcursionView]
    door_openings: list[DoorOpeningView]
    setpoints: list[SetpointView]
    charts: list[ChartView]
    product: ProductView
    release: ReleaseView
    audit: list[AuditEntryView]
    audit_chain: ChainHead = Field(description="the audit trail's head (seq, hash) when the record was generated")


def schema() -> dict[str, Any]:
    """The published JSON Schema of the record."""
    out = BatchRecord.model_json_schema(mode="serialization")
    out["$id"] = f"https://culturectl.example/schemas/batch-record/{SCHEMA_VERSION}.json"
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return out
