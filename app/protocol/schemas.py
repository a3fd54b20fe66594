"""The protocol's request bodies: runs, reasons, step posts and comments (the API takes them as they are)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.records.signatures import SignatureInput


class VesselIn(BaseModel):
    """A culture vessel of the run: its id, its type (the recipe's vessel_types give the DL-4 area), its incubator."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    type: str = Field(min_length=1, max_length=64, description="one of the recipe's vessel_types")
    incubator: str | None = Field(default=None, max_length=100, description="unset: the run's incubator")


class RunCreate(BaseModel):
    """A culture run to plan from a released recipe."""

    model_config = ConfigDict(extra="forbid")

    recipe_key: str = Field(min_length=1, max_length=64, description="a released recipe's key")
    recipe_version: int | None = Field(default=None, ge=1, le=2_147_483_647,
                                       description="unset: the newest released version")
    code: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                             description="the run's code; unset: generated")
    donor_id: str = Field(min_length=1, max_length=100)
    patient_id: str = Field(min_length=1, max_length=100)
    patient_weight_kg: float = Field(gt=0, allow_inf_nan=False, description="kg; the recipe gives the range")
    target_dose_per_kg: float = Field(gt=0, allow_inf_nan=False,
                                      description="CD7+ cells/kg, one of the recipe's allowed doses")
    cell_source: Literal["mobilized", "cord"]
    hsct_at: AwareDatetime = Field(description="planned transplant (HSCT) time, with a UTC offset")
    planned_t0: AwareDatetime | None = Field(default=None, description="unset: proposed from the HSCT")
    incubator: str | None = Field(default=None, max_length=100, description="incubator device name")
    culture_system: str | None = Field(default=None, max_length=100, description="culture-system device name")
    vessel_ids: list[str] = Field(default_factory=list, max_length=100,
                                  description="recipe v1: free-text vessel ids; v2 types them in `vessels`")
    vessels: list[VesselIn] = Field(default_factory=list, max_length=100)
    transplant_type: Literal["t_cell_depleted", "ptcy_hla_mismatched", "haploidentical"] | None = Field(
        default=None, description="required when the recipe lists transplant types")
    arm: Literal["adult", "paediatric"] | None = Field(default=None,
                                                       description="required when the recipe lists arms")
    graft_din: str | None = Field(default=None, max_length=40,
                                  description="ISBT 128 donation identification number of the graft, with its "
                                              "check character; required when the receive step checks it")
    reason: str | None = Field(default=None, max_length=2000)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="why (recorded in the audit trail)")


class SignedReason(Reason):
    signature: SignatureInput = Field(description="the signer's password again, meaning 'approved'")


class DeviationClose(SignedReason):
    """Closing a deviation: the reason, QA's assessment (classification, impact, actions; shown in the batch
    record) and the signature."""

    classification: Literal["minor", "major", "critical"] | None = Field(
        default=None, description="minor, major or critical (EU GMP deviation classes)")
    impact: str | None = Field(default=None, min_length=1, max_length=4000, validate_default=True,
                               description="the impact on the product and the patient; required when major or "
                                           "critical")
    actions: str | None = Field(default=None, min_length=1, max_length=4000, validate_default=True,
                                description="corrective and preventive actions; required when major or critical")

    @field_validator("impact", "actions")
    @classmethod
    def _assessed(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A major or critical deviation is closed with its impact assessed and its CAPA stated (EU GMP Part I
        # 1.4 (xiv)); the error's location is the missing field, so the dashboard's close form shows it there.
        grade = info.data.get("classification")
        if grade in ("major", "critical") and not (value or "").strip():
            raise PydanticCustomError("assessment_required",
                                      "a {grade} deviation is closed with its {what} stated",
                                      {"grade": grade, "what": "impact" if info.field_name == "impact" else
                                       "corrective and preventive actions"})
        return value


class LotIn(BaseModel):
    """The lot of a reagent a step used, and its expiry date."""

    model_config = ConfigDict(extra="forbid")

    lot: str = Field(min_length=1, max_length=64)
    expiry: dt.date = Field(description="YYYY-MM-DD; an expired lot is refused")


class StepPost(BaseModel):
    """A step's recorded values, an optional supervisor override, and the performer's signature."""

    # The override rule, stated in the schema too: override true needs a reason, a reason needs override true.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"override": {"const": True}}, "required": ["override"]},
        "then": {"required": ["override_reason"],
                 "properties": {"override_reason": {"type": "string", "pattern": "\\S"}}},
        "else": {"properties": {"override_reason": {"type": "null"}}},
    })

    inputs: dict[str, Any] = Field(default_factory=dict,
                                   description="the step's inputs: a value, or {value, unit} with the recipe's unit")
    override: bool = Field(default=False, description="supervisor only: accept an out-of-window step (deviation)")
    override_reason: str | None = Field(default=None, min_length=1, max_length=2000)
    signature: SignatureInput | None = Field(default=None,
                                             description="the performer signs with one of the step's meanings")
    lots: dict[str, LotIn] = Field(default_factory=dict,
                                   description="reagent key -> lot and expiry, for each material the step uses")
    count_import: int | None = Field(default=None, ge=1, le=2**62,
                                     description="a count import of this step: its values fill the count inputs")

    @model_validator(mode="after")
    def _reason(self) -> StepPost:
        if self.override and not (self.override_reason or "").strip():
            raise ValueError("override needs override_reason")
        if self.override_reason is not None and not self.override:
            raise ValueError("override_reason is only given with override: true")
        return self


class CommentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=5000)


class Correction(BaseModel):
    """A supervisor's correction of a recorded step's inputs, with a reason and the signature."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(min_length=1, description="the corrected inputs only: a value or {value, unit}")
    reason: str = Field(min_length=1, max_length=2000)
    signature: SignatureInput = Field(description="the supervisor's password again, meaning 'approved'")


class DoseDecisionIn(BaseModel):
    """QA's decision when the harvest cannot reach the target dose."""

    # The rule, stated in the schema too: lower_dose has a dose_per_kg, out_of_specification none.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"decision": {"const": "lower_dose"}}, "required": ["decision"]},
        "then": {"required": ["dose_per_kg"], "properties": {"dose_per_kg": {"type": "number"}}},
        "else": {"properties": {"dose_per_kg": {"type": "null"}}},
    })

    decision: Literal["lower_dose", "out_of_specification"]
    dose_per_kg: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                      description="lower_dose: a studied dose level below the target")
    reason: str = Field(min_length=1, max_length=2000)
    signature: SignatureInput = Field(description="QA's password again, meaning 'approved'")

    @model_validator(mode="after")
    def _level(self) -> DoseDecisionIn:
        if (self.decision == "lower_dose") != (self.dose_per_kg is not None):
            raise ValueError("dose_per_kg is given with lower_dose, and only with it")
        return self


class QcResultIn(BaseModel):
    """A QC result: negative/positive, or endotoxin in EU/mL."""

    # The rule, stated in the schema too: exactly one of result and eu_per_ml.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["result"], "properties": {"result": {"type": "string"}, "eu_per_ml": {"type": "null"}}},
        {"required": ["eu_per_ml"], "properties": {"eu_per_ml": {"type": "number"}, "result": {"type": "null"}}},
    ]})

    result: Literal["negative", "positive"] | None = None
    eu_per_ml: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False, description="endotoxin")
    comment: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _one(self) -> QcResultIn:
        if (self.result is None) == (self.eu_per_ml is None):
            raise ValueError("give result (negative or positive) or eu_per_ml (endotoxin), one of them")
        return self


class CountImportIn(BaseModel):
    """A cell counter's result export for a step: the file's bytes, base64."""

    model_config = ConfigDict(extra="forbid")

    step_key: str = Field(min_length=1, max_length=64)
    filename: str = Field(min_length=1, max_length=255)
    content_base64: str = Field(min_length=4, max_length=1_500_000, pattern=r"^[A-Za-z0-9+/]+={0,2}$",
                                description="the file's bytes, base64")
    instrument_id: str | None = Field(default=None, min_length=1, max_length=100,
                                      description="required when the file does not name its instrument")
    sample_id: str | None = Field(default=None, min_length=1, max_length=100,
                                  description="required when the file holds several samples")
    volume_ml: float | None = Field(default=None, gt=0, le=100_000, allow_inf_nan=False,
                                    description="the culture volume now (viable cells = density x volume); unset: "
                                                "the volume recorded at seeding")
