"""Alarms (ISA-18.2 / OPC UA Part 9): definitions with docs/process.md defaults and a pure state-machine core."""

from app.alarms.evaluate import (
    AlarmState,
    IllegalTransition,
    Transition,
    acknowledge,
    evaluate,
    initial_state,
    out_of_service,
    resume,
    return_to_service,
    shelve,
    suppress,
    tick,
    unshelve,
)
from app.alarms.model import (
    AlarmDefinition,
    AlarmStatus,
    BadQualityAlarm,
    CommLossAlarm,
    Limit,
    LimitAlarm,
    Priority,
    RateAlarm,
    Severity,
    StaleAlarm,
    default_definitions,
)

__all__ = [
    "AlarmDefinition", "AlarmState", "AlarmStatus", "BadQualityAlarm", "CommLossAlarm", "IllegalTransition", "Limit",
    "LimitAlarm", "Priority", "RateAlarm", "Severity", "StaleAlarm", "Transition", "acknowledge",
    "default_definitions", "evaluate", "initial_state", "out_of_service", "resume", "return_to_service", "shelve",
    "suppress", "tick", "unshelve",
]
