"""One log line when a loop starts failing and one when it recovers, whatever happens in between."""

from __future__ import annotations

import logging
import time


class OutageLog:
    """Logs an outage of one loop's dependency (the database, mostly): WARNING once, INFO once on recovery.

    Failures in between go to DEBUG, so a database down for an hour writes two lines, not one per pass.
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self._since: float | None = None
        self.failures = 0  # in the outage now

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        """A pass failed; the first failure of an outage is logged as a WARNING."""
        self.failures += 1
        reason = f"{type(exc).__name__}: {exc}"
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning("%s: %s; retrying quietly until it recovers", self._what, reason)
        else:
            self._log.debug("%s: still failing (%d): %s", self._what, self.failures, reason)

    def ok(self) -> None:
        """A pass succeeded; the end of an outage is logged as INFO."""
        if self._since is not None:
            self._log.info("%s: recovered after %.1f s (%d failed passes)", self._what,
                           time.monotonic() - self._since, self.failures)
            self._since = None
            self.failures = 0
