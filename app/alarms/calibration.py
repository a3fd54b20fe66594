"""The calibration alarm of a calibrated point, pure: a limit alarm on the days left until its due date.

One alarm per point with a calibration record in force (`<device>.<point>:calibration`, app/alarms/service.py feeds
it the days left, app/devices/calibration.py): L (advisory) while the point is due within the warning days, LL
(high) once it is overdue (below 0 days left). Days left are whole, so L sits half a day above `warn_days`: a point
with exactly `warn_days` days left is due within them, as `app.devices.calibration.status` says.
"""

from __future__ import annotations

from functools import cache

from app.alarms.model import Limit, LimitAlarm, Priority

NAME = "calibration"


@cache
def calibration_alarm(warn_days: int) -> LimitAlarm:
    """The definition for a warning of `warn_days` days (CULTURECTL_CALIBRATION_WARN_DAYS)."""
    return LimitAlarm(
        name=NAME, description=f"calibration due within {warn_days} days (advisory) / overdue (high)",
        l=Limit(value=warn_days + 0.5, priority=Priority.ADVISORY),
        ll=Limit(value=0.0, priority=Priority.HIGH),
    )
