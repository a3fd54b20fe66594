"""The protocol's request bodies: runs, reasons, step posts and comments (the API takes them as they are)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from app.records.signatures import SignatureInput


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
    vessel_ids: list[str] = Field(default_factory=list, max_length=100)
    reason: str | None = Field(default=None, max_length=2000)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="why (recorded in the audit trail)")


class SignedReason(Reason):
    signature: SignatureInput = Field(description="the signer's password again, meaning 'approved'")


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
