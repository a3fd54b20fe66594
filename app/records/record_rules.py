"""What QA reviews in a batch record, and what QA signs of it, pure: the exceptions, the content hash, the reviews.

`exceptions(record)` lists, in this order, what a reviewer by exception looks at (docs/batch-record.md, "Exceptions"):

    deviation       deviation:<id>                      every deviation of the run, open or closed
    override        override:<step>                     a step recorded outside its window by an override
    correction      correction:<id>                     a recorded value changed after entry (a supervisor's correction)
    late_step       late_step:<step>                    a step done after its latest time, or not done and late
    missed_step     missed_step:<step>                  a step past its hard latest time (done then, or not done)
    high_alarm      high_alarm:<alarm id>@<activation>  one per activation of an alarm that reached high priority
    excursion       excursion:<channel>                 a channel that left its band (time or episodes outside)
    out_of_limit    out_of_limit:<step>.<input>         an input (its effective value) that fails its acceptance limit
    pending_result  pending_result:<test>               a QC result sampled and not reported yet
    failed_result   failed_result:<test>                a QC result that failed (before or after release)
    calibration     calibration:<device>.<point>        a point overdue at the run's start or by its last day

A key stays the same from one version of the record to the next, so a review refers to it; the `fingerprint` is the
SHA-256 of the canonical JSON of what the exception shows (its title, detail and facts: statuses, values, who and
when), so a review of an earlier state stops counting when the exception changes.

`content_hash(record)` is what QA signs: the SHA-256 of the canonical JSON (app.records.audit.canonical_json) of the
record without `generated_at`, `version`, `audit_chain` (all three say when and where the record was generated,
not what it holds; the chain head moves with every audit record anywhere, so with it no two drafts would ever hash
alike and an issued version could never be matched) and the reviews in the exceptions (a review is made of the
content; the review's own audit record is in the run's audit extract).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.records.audit import canonical_hash, utc_iso
from app.records.record_model import (
    AlarmEventView,
    BatchRecord,
    ExceptionKind,
    ExceptionView,
    Review,
    SignatureView,
)

# What the content hash leaves out of the record (module docstring).
NOT_CONTENT = frozenset({"generated_at", "version", "audit_chain"})


def fingerprint(kind: str, title: str, detail: str, facts: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of what an exception shows."""
    return canonical_hash({"kind": kind, "title": title, "detail": detail, "facts": dict(facts)})


def _exception(key: str, kind: ExceptionKind, title: str, detail: str, ref: str,
               facts: Mapping[str, Any]) -> ExceptionView:
    return ExceptionView(key=key, kind=kind, title=title, detail=detail, ref=ref,
                         fingerprint=fingerprint(kind, title, detail, facts))


def _t(at: datetime | None) -> str | None:
    return None if at is None else utc_iso(at)


def _short(at: datetime | None) -> str:
    return "-" if at is None else utc_iso(at)[:16] + "Z"


def _v(value: Any) -> str:
    """A value as a reviewer reads it: numbers short (1e+09, 37.5), the rest as recorded."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _sigs(sigs: Sequence[SignatureView]) -> list[dict[str, Any]]:
    return [{"meaning": s.meaning, "printed_name": s.printed_name, "signed_at": _t(s.signed_at), "valid": s.valid}
            for s in sigs]


def exceptions(record: BatchRecord) -> list[ExceptionView]:
    """Every exception of the record, in the order of the module docstring; none reviewed."""
    return [*_deviations(record), *_overrides(record), *_corrections(record), *_schedule(record),
            *_high_alarms(record.alarms), *_excursions(record), *_out_of_limit(record), *_results(record),
            *_calibrations(record)]


def _deviations(record: BatchRecord) -> list[ExceptionView]:
    out = []
    for d in record.deviations:
        facts = {"id": d.id, "step": d.step_key, "rule": d.rule, "classification": d.classification,
                 "description": d.description, "impact": d.impact, "actions": d.actions, "status": d.status,
                 "opened_at": _t(d.opened_at), "opened_by": d.opened_by, "closed_at": _t(d.closed_at),
                 "closed_by": d.closed_by, "close_reason": d.close_reason,
                 "comments": [{k: c.get(k) for k in ("at", "author", "text")} for c in d.comments],
                 "signatures": _sigs(d.signatures)}
        where = f" at {d.step_key}" if d.step_key else ""
        state = (f"closed by {d.closed_by} at {_short(d.closed_at)}: {d.close_reason}" if d.status == "closed"
                 else "open")
        out.append(_exception(f"deviation:{d.id}", "deviation", f"Deviation {d.id}{where}: {d.rule}",
                              f"{d.description} ({d.classification}; {state})", f"deviations/{d.id}", facts))
    return out


def _overrides(record: BatchRecord) -> list[ExceptionView]:
    out = []
    for s in record.steps:
        if not s.override:
            continue
        facts = {"step": s.key, "reason": s.override_reason, "done_at": _t(s.done_at), "window": s.window,
                 "recorded_by": s.recorded_by}
        out.append(_exception(
            f"override:{s.key}", "override", f"Override: {s.title}",
            f"{s.key} recorded at {_short(s.done_at)} by {s.recorded_by or '?'} outside its window "
            f"({s.window.get('earliest')} .. {s.window.get('latest')}): {s.override_reason or 'no reason given'}",
            f"steps/{s.key}", facts))
    return out


def _corrections(record: BatchRecord) -> list[ExceptionView]:
    out = []
    for s in record.steps:
        for c in s.corrections:
            key = f"correction:{c.id}" if c.id is not None else f"correction:{s.key}@{_t(c.at)}"
            changed = ", ".join(f"{s.key}.{k} {_v(c.original.get(k))} -> {_v(v)}" for k, v in c.changes.items())
            facts = {"step": s.key, "at": _t(c.at), "by": c.by, "reason": c.reason, "changes": c.changes,
                     "original": c.original, "signatures": _sigs(c.signatures)}
            out.append(_exception(key, "correction", f"Correction of {s.title}",
                                  f"{changed} by {c.by} at {_short(c.at)}: {c.reason}",
                                  f"steps/{s.key}/corrections/{c.id if c.id is not None else _t(c.at)}", facts))
    return out


def _schedule(record: BatchRecord) -> list[ExceptionView]:
    out = []
    for s in record.steps:
        if not (s.late or s.missed):
            continue
        kind: ExceptionKind = "missed_step" if s.missed else "late_step"
        facts = {"step": s.key, "status": s.status, "window": s.window, "done_at": _t(s.done_at), "late": s.late,
                 "missed": s.missed}
        limit = s.window.get("hard_latest") if s.missed and s.window.get("hard_latest") else s.window.get("latest")
        done = f"done at {_short(s.done_at)}" if s.done_at is not None else f"not done ({s.status})"
        word = "Missed" if s.missed else "Late"
        out.append(_exception(f"{kind}:{s.key}", kind, f"{word} step: {s.title}",
                              f"{s.key} {done}; {'hard latest' if s.missed else 'latest'} {limit}",
                              f"steps/{s.key}", facts))
    return out


def _episodes(alarms: Sequence[AlarmEventView]) -> list[list[AlarmEventView]]:
    """Each alarm's events grouped by activation: an episode runs from an activation to the next one (the events of
    an alarm before its first activation in the record form one too)."""
    by_alarm: dict[str, list[list[AlarmEventView]]] = {}
    for e in sorted(alarms, key=lambda e: e.at):
        eps = by_alarm.setdefault(e.alarm_id, [])
        if e.reason == "activated" or not eps:
            eps.append([e])
        else:
            eps[-1].append(e)
    return [ep for eps in by_alarm.values() for ep in eps]


def _high_alarms(alarms: Sequence[AlarmEventView]) -> list[ExceptionView]:
    out = []
    for ep in _episodes(alarms):
        high = [e for e in ep if e.priority == "high" and e.reason in ("activated", "escalated")]
        if not high:
            continue
        first, peak = ep[0], high[0]
        value = f" at {_v(peak.value)}" if peak.value is not None else ""
        parts = [f"{peak.severity.upper() if peak.severity else peak.priority}{value} from {_short(peak.at)}"]
        parts += [f"{e.reason} by {e.actor} at {_short(e.at)}" + (f": {e.comment}" if e.comment else "")
                  for e in ep if e.actor is not None]
        parts += [f"returned at {_short(e.at)}" for e in ep if e.reason == "returned"][:1]
        normal = next((e for e in ep if e.to_state == "normal"), None)
        parts.append(f"normal at {_short(normal.at)}" if normal is not None else f"last state {ep[-1].to_state}")
        facts = {"alarm": first.alarm_id, "channel": first.channel, "activated_at": _t(first.at),
                 "events": [{"at": _t(e.at), "from": e.from_state, "to": e.to_state, "severity": e.severity,
                             "priority": e.priority, "value": e.value, "reason": e.reason, "actor": e.actor,
                             "comment": e.comment} for e in ep]}
        at = _t(first.at)
        out.append(_exception(f"high_alarm:{first.alarm_id}@{at}", "high_alarm",
                              f"High-priority alarm {first.alarm_id}", "; ".join(parts),
                              f"alarms/{first.alarm_id}@{at}", facts))
    return out


def _excursions(record: BatchRecord) -> list[ExceptionView]:
    out = []
    for x in record.excursions:
        if x.minutes_outside <= 0 and x.episodes <= 0:
            continue
        lo, hi = x.band
        unit = x.unit or ""
        facts = x.model_dump(mode="json")
        out.append(_exception(
            f"excursion:{x.channel}", "excursion", f"Excursion: {x.channel}",
            f"{x.minutes_outside:g} min outside {lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'} "
            f"{unit} in {x.episodes} episodes, integral {x.integral:g} {unit} x min, worst {_v(x.worst)} {unit} "
            "beyond the band",
            f"excursions/{x.channel}", facts))
    return out


def _out_of_limit(record: BatchRecord) -> list[ExceptionView]:
    out = []
    for s in record.steps:
        for i in s.inputs:
            if i.passed is not False:
                continue
            unit = f" {i.unit}" if i.unit else ""
            facts = {"step": s.key, "input": i.name, "value": i.value, "unit": i.unit, "limit": i.limit,
                     "changed_after_entry": i.changed_after_entry, "original": i.original}
            out.append(_exception(f"out_of_limit:{s.key}.{i.name}", "out_of_limit",
                                  f"Out of limit: {s.key}.{i.name}", f"{_v(i.value)}{unit} fails {i.limit}",
                                  f"steps/{s.key}/inputs/{i.name}", facts))
    return out


def _results(record: BatchRecord) -> list[ExceptionView]:
    out = []
    for q in record.product.qc:
        facts = q.model_dump(mode="json")
        if q.status == "pending":
            out.append(_exception(f"pending_result:{q.test}", "pending_result", f"QC result pending: {q.test}",
                                  f"{q.test} is sampled; its result is not reported", f"product/qc/{q.test}", facts))
        elif q.status == "failed":
            when = "after release" if q.after_release else "before release"
            out.append(_exception(f"failed_result:{q.test}", "failed_result", f"QC result failed: {q.test}",
                                  f"{q.test} reported failing {when} by {q.reported_by} at {_short(q.reported_at)}: "
                                  f"{q.result}", f"product/qc/{q.test}", facts))
    return out


def _calibrations(record: BatchRecord) -> list[ExceptionView]:
    out = []
    for eq in record.equipment:
        for c in eq.calibrations:
            at_start = c.status_at_start == "overdue"
            during = "overdue" in (c.status_now, c.status_at_end)
            if not (at_start or during):
                continue
            facts = {"device": eq.device, **c.model_dump(mode="json")}
            why = "overdue at the run's start" if at_start else "due during the run"
            out.append(_exception(f"calibration:{eq.device}.{c.point}", "calibration",
                                  f"Calibration {why}: {eq.device}.{c.point}",
                                  f"{eq.device}.{c.point} calibrated on {c.calibrated_on}, due on {c.due_on} "
                                  f"(certificate {c.certificate})", f"equipment/{eq.device}/{c.point}", facts))
    return out


def content_hash(record: BatchRecord) -> str:
    """What QA signs of the record (module docstring)."""
    body = record.model_dump(mode="json", exclude=set(NOT_CONTENT))
    for e in body["exceptions"]:
        e.pop("review", None)
    return canonical_hash(body)


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A stored review of one exception: of the exception's key as it showed `fingerprint`."""

    key: str
    fingerprint: str
    by: str
    at: datetime
    comment: str
    signature: SignatureView | None = None


def attach_reviews(exceptions: Sequence[ExceptionView], reviews: Iterable[ReviewRow]) -> list[ExceptionView]:
    """The exceptions, each with the newest review of its key made of what it shows now (same fingerprint) whose
    signature, if any, is still valid; an exception without one has `review` None (a changed exception needs a new
    review)."""
    newest: dict[tuple[str, str], ReviewRow] = {}
    for r in reviews:
        if r.signature is not None and not r.signature.valid:
            continue
        have = newest.get((r.key, r.fingerprint))
        if have is None or r.at >= have.at:
            newest[(r.key, r.fingerprint)] = r
    out = []
    for e in exceptions:
        found = newest.get((e.key, e.fingerprint))
        review = None if found is None else Review(by=found.by, at=found.at, comment=found.comment,
                                                   signature=found.signature)
        out.append(e.model_copy(update={"review": review}))
    return out

