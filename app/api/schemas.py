"""Response models of the API (named <Thing>Public, as the routers return them)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PointPublic(BaseModel):
    name: str
    unit: str = Field(description="the unit values are stored and shown in (the role's canonical unit)")
    kind: str
    role: str | None = Field(default=None, description="the role the point plays; none: stored and shown only")
    device_unit: str = Field(default="", description="the unit the device reports in (converted to `unit`)")
    writable: bool
    min: float | None = None
    max: float | None = None
    description: str = ""


class PointCheckPublic(BaseModel):
    """What the device said about one point when it last connected."""

    point: str
    found: bool
    where: str = Field(description="NodeId, browse path or register where it was looked for")
    data_type: str | None = None
    unit: str | None = None
    writable: bool | None = None
    value: float | None = None
    ok: bool
    problems: list[str]


class DevicePublic(BaseModel):
    name: str
    kind: str = Field(description="device class: incubator or culture-system")
    protocol: str
    endpoint: str
    description: str
    profile: str = Field(description="the device profile it runs with")
    profile_version: str
    state: str = Field(description="connecting, online, offline, stopped; on a replica that does not own the device "
                                   "its owner's state, as the owner wrote it in the device's lease at its last pass "
                                   "(unknown before that, unowned while nobody holds its lease)")
    state_since: datetime | None
    owner: str | None = Field(default=None, description="the replica that reads and writes the device now")
    owned_here: bool = Field(default=True, description="whether the replica that answered owns the device")
    last_reading_time: datetime | None = None
    last_error: str | None = None
    points: list[PointPublic]
    checked_at: datetime | None = Field(default=None, description="when the points were last checked (on connect)")
    check_ok: bool | None = Field(default=None, description="every point found as declared; null before a check")
    check: list[PointCheckPublic] = Field(default_factory=list)


class LatestValue(BaseModel):
    time: datetime
    value: float | None
    quality: str


class ChannelPublic(BaseModel):
    id: int
    key: str
    device: str
    name: str
    unit: str
    kind: str
    role: str | None = Field(default=None, description="the role the point plays, as recipes name it "
                                                        "(<device class>.<role>); none: stored and shown only")
    latest: LatestValue | None = None


class TelemetryPoint(BaseModel):
    """A raw sample (value, quality) or a bucket (avg, min, max, n)."""

    time: datetime
    value: float | None = None
    quality: str | None = None
    avg: float | None = None
    min: float | None = None
    max: float | None = None
    n: int | None = None


class TelemetryPublic(BaseModel):
    channel: ChannelPublic
    start: datetime
    end: datetime
    bucket: timedelta | None
    max_points: int
    points: list[TelemetryPoint]


class DatabaseReady(BaseModel):
    ok: bool
    error: str | None


class Ready(BaseModel):
    """Readiness: 200 with status "ready" when the database answers, else 503 "not ready"; the state as it is now."""

    status: str = Field(description="ready or not ready")
    database: DatabaseReady
    ingest: dict[str, Any] | None = Field(description="the telemetry writer's and spool's counters")
    buffer: dict[str, Any] | None = Field(description="the ingest buffer's counters")
    live: dict[str, Any] = Field(description="the live stream's counters")
    devices: dict[str, dict[str, Any]] = Field(description="each device's connection state and since when, the "
                                                           "replica that owns it and whether it is this one")
    cluster: dict[str, Any] | None = Field(default=None, description="this replica, the leader, the devices it owns, "
                                                                     "the live replicas and the lease counters")


class Health(BaseModel):
    status: str


# -- protocol: recipes, runs, steps, deviations ---------------------------------------------------------------------
# Extra keys are refused: a view that grows a field without its model fails the tests instead of vanishing.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeSummary(_Strict):
    id: int
    key: str
    version: int
    title: str
    content_hash: str
    released_at: datetime
    released_by: str
    steps: list[str] = Field(description="the step keys in order")


class RecipePublic(RecipeSummary):
    content: dict[str, Any] = Field(description="the validated recipe (the format in docs/protocol.md)")


class Window(_Strict):
    earliest: datetime
    target: datetime
    latest: datetime
    hard_latest: datetime | None


class ScheduleEntry(_Strict):
    key: str
    title: str
    status: str = Field(description="pending, open, due, late, missed, skipped or done")
    window: Window
    optional: bool
    predecessors: list[str]
    blocked_by: list[str]
    done_at: datetime | None
    overridden: bool
    step_record_id: int | None


class NextDue(_Strict):
    key: str
    status: str
    window: Window


class DoseView(_Strict):
    required_cd7_cells: float
    target_per_kg: float
    seed: dict[str, Any] | None = Field(description="the forecast band at seeding")
    day3: dict[str, Any] | None = Field(description="the forecast band at the day-3 count")
    feed_day5: dict[str, Any] | None = Field(default=None, description="the forecast band at the day-5 count")
    seeding: dict[str, Any] | None = Field(default=None, description="the seeding density computed from the vessels")
    harvest: dict[str, Any] | None = Field(description="whether the harvest holds the required cells + overage")
    achieved: dict[str, Any] | None = Field(description="the formulated dose (net of QC samples), CD3+ per kg")
    expiry: str | None = Field(default=None, description="the product's expiry")
    endotoxin: dict[str, Any] | None = Field(default=None, description="the EU/kg/h figure after infusion")


class ProductView(_Strict):
    product_id: str
    graft_din: str | None
    status: str | None = Field(description="not_formulated, in_specification, lower_dose_level, dose_out_of_range "
                                           "or out_of_specification")
    expiry: str | None
    decision: dict[str, Any] | None = Field(description="QA's signed dose decision")
    qc: list[dict[str, Any]] = Field(description="each QC test with its status: not_sampled, pending, reported")


class InfusionCheck(_Strict):
    at: datetime
    hsct_day: float
    window_days: list[float]
    warning: str | None


class RecipeRef(_Strict):
    id: int
    key: str
    version: int
    content_hash: str


class RunPublic(_Strict):
    id: int
    code: str
    status: str
    donor_id: str | None
    patient_id: str | None
    patient_weight_kg: float | None
    target_dose_per_kg: float | None
    cell_source: str | None
    hsct_at: datetime | None
    planned_t0: datetime | None
    t0: datetime | None
    incubator: str | None
    culture_system: str | None
    hold_reason: str | None
    abort_reason: str | None
    created_by: str | None
    created_at: datetime
    ended_at: datetime | None
    vessel_ids: list[str]
    vessels: list[dict[str, Any]] = Field(description="typed vessels: id, type, DL-4 area, incubator")
    transplant_type: str | None
    arm: str | None
    graft_din: str | None
    product_id: str
    disposition: str | None = Field(description="'held for QA disposition: <reason>' while held")
    now: datetime
    open_deviations: int
    recipe: RecipeRef | None
    schedule: list[ScheduleEntry]
    next_due: NextDue | None
    dose: DoseView | None
    infusion: InfusionCheck | None
    product: ProductView | None


class RunCreated(RunPublic):
    t0_proposal: dict[str, Any] = Field(description="T0 planned backwards from the HSCT, with the infusion day")


class RunSummary(_Strict):
    id: int
    code: str
    status: str
    recipe_key: str | None
    recipe_version: int | None
    donor_id: str | None
    patient_id: str | None
    cell_source: str | None
    planned_t0: datetime | None
    t0: datetime | None
    hsct_at: datetime | None
    incubator: str | None
    culture_system: str | None
    created_by: str | None
    created_at: datetime
    ended_at: datetime | None
    open_deviations: int
    graft_din: str | None = None
    record_version: int | None = Field(default=None, description="the newest issued batch record version, if any")


class CommentPublic(_Strict):
    id: int
    at: datetime
    author: str
    text: str


class DeviationPublic(_Strict):
    id: int
    run_id: int
    step_key: str | None
    rule: str
    severity: str
    description: str
    facts: Any
    opened_at: datetime
    opened_by: str
    status: str
    closed_at: datetime | None
    closed_by: str | None
    close_reason: str | None
    classification: str | None = None
    impact: str | None = None
    actions: str | None = None
    comments: list[CommentPublic] | None = None
    run_code: str | None = Field(default=None, description="the run's code (in lists)")
    work_cursor: str | None = Field(default=None, description="in a list in the work order: `after` for the next "
                                                              "page")


class StepRecordPublic(_Strict):
    id: int
    run_id: int
    step_key: str
    posted_at: datetime
    inputs: dict[str, Any]
    actor: str
    override: bool
    override_reason: str | None
    deviation_ids: list[int]
    lots: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None


class CorrectionPublic(_Strict):
    id: int
    corrected_at: datetime
    before: dict[str, Any]
    after: dict[str, Any]
    reason: str
    corrected_by: str
    deviation_ids: list[int]
    signatures: list[dict[str, Any]]


class StepRecordView(_Strict):
    id: int
    run_id: int
    step_key: str
    posted_at: datetime
    recorded_by: str
    inputs: dict[str, Any] = Field(description="as recorded")
    effective_inputs: dict[str, Any] = Field(description="with the corrections applied")
    lots: dict[str, Any] | None
    provenance: dict[str, Any] | None = Field(description="per input as recorded: typed, or counter (import, "
                                                          "SHA-256)")
    effective_provenance: dict[str, Any] | None = Field(description="per effective input: a corrected one comes "
                                                                    "from its correction")
    override: bool
    override_reason: str | None
    deviation_ids: list[int]
    derived: dict[str, Any] | None
    signatures: list[dict[str, Any]]
    corrections: list[CorrectionPublic]


class DoseDecisionPublic(_Strict):
    id: int
    decision: str
    dose_per_kg: float | None
    reason: str
    decided_at: datetime
    decided_by: str
    signatures: list[dict[str, Any]]


class QcResultPublic(_Strict):
    test: str
    title: str
    sampled_at_step: str
    before_release: bool
    status: str
    sampled_at: datetime | None
    result: dict[str, Any] | None
    passed: bool | None
    reported_at: datetime | None
    reported_by: str | None


class CountImportPublic(_Strict):
    id: int
    run_id: int
    step_key: str
    filename: str
    sha256: str
    format: str
    instrument_id: str
    sample_id: str
    measured_at: str | None
    values: dict[str, float]
    volume_ml: float | None
    imported_at: datetime
    imported_by: str


class RunStatusPublic(_Strict):
    id: int
    status: str


class StepPosted(_Strict):
    step_record: StepRecordPublic
    run: RunStatusPublic
    decision: dict[str, Any] = Field(description="the window and order decision (outcome, rule, window, now)")
    deviations: list[DeviationPublic]
    alerts: list[dict[str, Any]]
    dose: dict[str, Any] | None
    signature: dict[str, Any] | None
    signatures_required: list[str]


# -- alarms and setpoints --------------------------------------------------------------------------------------------


class AlarmPublic(_Strict):
    id: str
    channel: str
    device: str
    point: str | None
    name: str
    kind: str
    description: str
    priority: str
    status: str = Field(description="the ISA-18.2 state")
    severity: str | None
    value: float | None
    active_since: datetime | None
    changed_at: datetime | None
    mode_until: datetime | None
    run_id: int | None


class AlarmDetail(AlarmPublic):
    definition: dict[str, Any]


class AlarmEventPublic(_Strict):
    id: int
    alarm_id: str
    channel: str
    device: str
    name: str
    at: datetime
    from_state: str
    to_state: str
    severity: str | None
    priority: str
    value: float | None
    reason: str
    actor: str | None
    comment: str | None
    run_id: int | None


class ExcursionChannel(_Strict):
    channel: str
    unit: str
    band: list[float | None]
    minutes_outside: float
    integral: float
    integral_unit: str
    worst_beyond_band: float
    episodes: int
    hard_limit_episodes: int
    outside_now: bool
    first_outside_at: datetime | None
    updated_at: datetime


class ExcursionDeviation(_Strict):
    id: int
    rule: str
    description: str
    status: str
    opened_at: datetime


class DoorOpeningPublic(_Strict):
    device: str
    step_key: str = Field(description="the step whose window planned the opening")
    opened_at: datetime
    closed_at: datetime | None
    recovered_at: datetime | None = Field(description="temperature and CO2 back inside their alarm limits")
    recovery_min: float | None = Field(description="minutes from the door shutting to the recovery")
    min_temperature: float | None
    min_co2: float | None
    outcome: str = Field(description="planned (inside its stated recovery), or exceeded")
    reason: str | None = Field(description="why the plan was exceeded")
    planned: dict[str, Any] | None = Field(description="the recipe's stated opening and recovery")


class ExcursionReport(_Strict):
    run_id: int
    channels: list[ExcursionChannel]
    deviations: list[ExcursionDeviation]
    door_openings: list[DoorOpeningPublic] = Field(description="the run's planned door openings (oldest first)")


class SetpointCommandPublic(_Strict):
    id: int
    device: str
    point: str
    run_id: int | None
    requested: float
    previous: float | None
    read_back: float | None
    result: str | None
    detail: str | None
    actor: str
    reason: str | None
    requested_at: datetime
    completed_at: datetime | None
    source: str


# -- errors ------------------------------------------------------------------------------------------------------------


class ProblemDetails(BaseModel):
    """An error answer (RFC 9457, application/problem+json); extra members name the rule, the limit, the state..."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str


_ERRORS = {
    400: "the request cannot be answered as asked (e.g. more points than the limit, a time without offset)",
    401: "no valid credentials (missing, wrong, expired or revoked)",
    403: "the principal's role may not do this",
    404: "no such resource",
    409: "the state does not allow it (window, order, run state, alarm state, signatures)",
    422: "the request is not valid: the member names the field and the rule",
    500: "the database refused the request",
    502: "the device did not follow the command",
    503: "a dependency (the database, a device, a service part) is unavailable now",
    504: "the device did not answer in time",
}
API_ERRORS = (400, 401, 403, 404, 409, 422, 500, 503)
DEVICE_ERRORS = (502, 504)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error answers, as problem JSON (app.main moves them to application/problem+json)."""
    return {code: {"model": ProblemDetails, "description": _ERRORS[code]} for code in codes}
