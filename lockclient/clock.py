"""Trusted time for decisions: the system clock, but never earlier than what the lock has seen.

A Raspberry Pi has no real-time clock and may boot with a time years in the past, which would
make a revoked or expired bundle look current. Decisions therefore use::

    now = max(system clock, persisted floor, issued_at of the newest verified bundle)

The floor is persisted in the state file. It advances with the system clock only up to the
current bundle's ``expires_at``: a system clock that once ran far into the future can push the
floor no further than the point where the bundle expires anyway, so the lock recovers as soon as
a newer bundle arrives instead of staying "expired" forever.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

# A system clock less than this far behind the floor is normal jitter, not worth a warning.
BEHIND_TOLERANCE_SECONDS = 120


class Clock:
    """Trusted time source; thread-safe."""

    def __init__(self, floor: float = 0, system_time: Callable[[], float] = time.time):
        self.system_time = system_time
        self._floor = float(floor)
        self._newest_issued_at = 0.0
        self._behind_reported = False
        self._lock = threading.Lock()

    @property
    def floor(self) -> float:
        with self._lock:
            return max(self._floor, self._newest_issued_at)

    def now(self) -> float:
        """Return the trusted current time in Unix seconds."""
        system = self.system_time()
        with self._lock:
            return max(system, self._floor, self._newest_issued_at)

    def observe_verified(self, issued_at: int) -> None:
        """Raise the floor to the issue time of a newly verified bundle or signers document."""
        with self._lock:
            self._newest_issued_at = max(self._newest_issued_at, float(issued_at))

    def advance_floor(self, ceiling: float | None) -> float:
        """Move the persisted floor up to the system clock, capped at ``ceiling``; return it.

        ``ceiling`` is the current bundle's expiry; with no bundle the floor follows only
        verified issue times.
        """
        system = self.system_time()
        with self._lock:
            if ceiling is not None:
                self._floor = max(self._floor, min(system, float(ceiling)))
            self._floor = max(self._floor, self._newest_issued_at)
            return self._floor

    def behind_floor(self) -> bool:
        """Return True when the system clock is behind the floor by more than the tolerance.

        Logs a warning the first time it happens and an info line when the clock catches up.
        """
        system = self.system_time()
        floor = self.floor
        behind = system < floor - BEHIND_TOLERANCE_SECONDS
        if behind and not self._behind_reported:
            log.warning(
                "system clock is %d s behind the trusted floor; deciding with the floor instead "
                "(check NTP or the real-time clock)", int(floor - system),
            )
        elif not behind and self._behind_reported:
            log.info("system clock has caught up with the trusted floor")
        self._behind_reported = behind
        return behind
