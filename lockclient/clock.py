"""Trusted time for decisions: the system clock, but never earlier than what the lock has seen.

A Raspberry Pi has no real-time clock and may boot with a time years in the past, which would
make a revoked or expired bundle look current. Decisions therefore use::

    now = max(system clock, floor)
    floor = max(system part, issued_at of the newest signers document,
                issued_at of the newest bundle per signing key that is still listed
                + time elapsed since that bundle was accepted)

Each part of the floor has its own source, so that a bad source can be taken out again:

- The system part is sampled from the system clock and saved in the state file. It follows the
  system clock at the speed of the monotonic clock only. A forward step of the system clock
  (a wrong real-time clock, a bad NTP response) moves it only after the clock has kept the step
  for :data:`CONFIRM_SECONDS`, so a step that NTP puts right within that time leaves no trace.
  While the system clock is behind it, it moves on at the speed of the monotonic clock, because
  real time passes all the same. It never goes beyond the current bundle's ``expires_at``.
- The signers part comes from documents signed by a root key, which stays offline.
- Each bundle part remembers the signing key that vouched for it. A bundle forged with a stolen
  key and an ``issued_at`` in the future raises the floor only until a signers document without
  that key is accepted. Signers documents are judged without bundle parts
  (:meth:`Clock.now_for_signers`), so a forged bundle cannot make that document look expired.
  A bundle part does not stand still at its issue time: it moves on by the time elapsed since
  the bundle was accepted, measured with the system part. Each bundle therefore expires at the
  latest once its span (``expires_at - issued_at``) has elapsed on the lock, however far in the
  future its ``issued_at`` lies and however long updates are withheld.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Callable

from lockclient.bundle import format_time

if TYPE_CHECKING:
    from lockclient.bundle import Bundle, Signers

log = logging.getLogger(__name__)

# A system clock less than this far behind the floor is normal jitter, not worth a warning.
BEHIND_TOLERANCE_SECONDS = 120

# How long (monotonic seconds) the system clock must keep a forward step before the floor follows it.
CONFIRM_SECONDS = 6 * 3600

# A change of (system clock minus monotonic clock) up to this size is reading jitter, not a step.
STEP_TOLERANCE_SECONDS = 2.0


class Clock:
    """Trusted time source; thread-safe.

    ``floor`` is the system part saved by the previous run. Nothing on the lock measured how
    long it was off, so after a start the system part continues from that value at the speed of
    the monotonic clock until the system clock has kept its reading for :data:`CONFIRM_SECONDS`.
    Without a saved floor (0) the first reading of the system clock is taken as it is.
    """

    def __init__(self, floor: float = 0, system_time: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.system_time = system_time
        self.monotonic = monotonic
        self._floor = float(floor)
        # The floor may follow the system clock as far as monotonic clock + this offset. With no
        # saved floor (a new lock, a lost state file) there is nothing to compare the first
        # reading with, so it is taken as it is.
        self._last_sample = monotonic()
        self._accepted_offset = self._floor - self._last_sample if self._floor > 0 else math.inf
        # (smallest larger offset seen, monotonic time it was first seen) while a step is unconfirmed
        self._pending_step: tuple[float, float] | None = None
        # The ceiling last passed to advance_floor. None (no bundle) keeps the system part still.
        self._ceiling: float | None = math.inf
        self._signers_issued_at = 0.0
        self._listed_keys: frozenset[str] | None = None
        # signing key -> (issue time of its newest bundle, system part when that bundle was accepted)
        self._bundle_parts: dict[str, tuple[float, float]] = {}
        self._behind_reported = False
        self._lock = threading.Lock()

    @property
    def floor(self) -> float:
        system = self.system_time()
        monotonic = self.monotonic()
        with self._lock:
            system_part = self._current_system_part(system, monotonic)
            return max(system_part, self._signers_issued_at, *self._bundle_parts_at(system_part))

    def _bundle_parts_at(self, system_part: float) -> list[float]:
        """Compute each bundle part: its issue time plus the time elapsed since its bundle was accepted."""
        return [issued_at + max(0.0, system_part - accepted) for issued_at, accepted in self._bundle_parts.values()]

    def system_part(self) -> float:
        """Return the current system part, without saving it or judging clock steps.

        It follows the system clock, at the speed of the monotonic clock at most, and moves at
        monotonic speed while the system clock is behind it. It is how elapsed time is measured
        for the bundle parts, and :meth:`advance_floor` moves the saved value the same way.
        """
        system = self.system_time()
        monotonic = self.monotonic()
        with self._lock:
            return self._current_system_part(system, monotonic)

    def _current_system_part(self, system: float, monotonic: float) -> float:
        if self._ceiling is None:
            return self._floor
        elapsed = max(0.0, monotonic - self._last_sample)
        offset = max(self._accepted_offset, self._floor - self._last_sample)
        return max(self._floor, min(max(system, self._floor + elapsed), monotonic + offset, self._ceiling))

    def now(self) -> float:
        """Return the trusted current time in Unix seconds."""
        return max(self.system_time(), self.floor)

    def now_for_signers(self) -> float:
        """Return the trusted time without the bundle parts, for judging a signers document.

        A bundle signed with a stolen key must not make the root's next signers document, the
        one that revokes the key, look expired.
        """
        system = self.system_time()
        monotonic = self.monotonic()
        with self._lock:
            return max(system, self._current_system_part(system, monotonic), self._signers_issued_at)

    def effective_expiry(self, expires_at: float) -> float:
        """Return when a bundle expiring at ``expires_at`` stops counting, in system-clock terms.

        That is ``expires_at`` less the lead that bundle parts give the trusted time over the
        other sources. For a genuine bundle there is no lead. A bundle with a forged future
        ``issued_at`` expires once its span has elapsed, and this method returns that instant.
        """
        system = self.system_time()
        monotonic = self.monotonic()
        with self._lock:
            system_part = self._current_system_part(system, monotonic)
            without_bundles = max(system, system_part, self._signers_issued_at)
            # Each part's lead, grouped so that large instants cancel before they are added.
            leads = [(issued_at - accepted) - (without_bundles - system_part) if system_part >= accepted
                     else issued_at - without_bundles
                     for issued_at, accepted in self._bundle_parts.values()]
        return expires_at - max([0.0, *leads])

    # -- verified issue times --------------------------------------------------------------

    def observe_signers(self, signers: Signers) -> None:
        """Raise the floor to a verified signers document's issue time and drop unlisted key parts."""
        with self._lock:
            self._signers_issued_at = max(self._signers_issued_at, float(signers.issued_at))
            self._listed_keys = frozenset(signers.keys)
            for keyid in [keyid for keyid in self._bundle_parts if keyid not in self._listed_keys]:
                issued_at, _ = self._bundle_parts.pop(keyid)
                log.warning(
                    "signing key %s is no longer listed: the clock floor drops the issue time %s "
                    "of the bundle it signed", keyid[:16], format_time(issued_at),
                )

    def observe_bundle(self, bundle: Bundle, accepted_at: float | None = None) -> None:
        """Raise the floor to a verified bundle's issue time, on behalf of the key that signed it.

        ``accepted_at`` is the system part when the bundle was accepted (saved with it); from
        then on the bundle part moves on by the elapsed time. None means now.
        A bundle whose key the last observed signers document does not list (a stored bundle
        verified with the previous signers document) does not count.
        """
        if accepted_at is None:
            accepted_at = self.system_part()
        with self._lock:
            if self._listed_keys is not None and bundle.signed_by not in self._listed_keys:
                log.warning(
                    "bundle version %d was signed by key %s, which is no longer listed: its issue "
                    "time %s does not count for the clock floor",
                    bundle.version, bundle.signed_by[:16], format_time(bundle.issued_at),
                )
                return
            previous = self._bundle_parts.get(bundle.signed_by)
            if previous is None or float(bundle.issued_at) > previous[0]:
                self._bundle_parts[bundle.signed_by] = (float(bundle.issued_at), float(accepted_at))

    def observe_stored(self, signers: Signers | None, bundle: Bundle | None,
                       accepted_at: float | None = None) -> None:
        """Observe the documents loaded from the state directory at start, signers first.

        ``accepted_at`` is the system part saved when the bundle was accepted. Without it (a
        state file from an older lockclient) acceptance counts from the saved system part, or
        from now when no system part was saved either.
        """
        if signers is not None:
            self.observe_signers(signers)
        if bundle is not None:
            if accepted_at is None and self._floor > 0:
                accepted_at = self._floor
            self.observe_bundle(bundle, accepted_at)

    # -- the system part ---------------------------------------------------------------------

    def advance_floor(self, ceiling: float | None) -> float:
        """Sample the system clock, move the system part up and return it (the value to save).

        ``ceiling`` is the current bundle's expiry. With no bundle the system part does not move.
        """
        system = self.system_time()
        monotonic = self.monotonic()
        with self._lock:
            self._track_steps(system, monotonic)
            # Real time has advanced at least as far as the monotonic clock since the last sample,
            # also while the system clock was behind the floor.
            self._accepted_offset = max(self._accepted_offset, self._floor - self._last_sample)
            elapsed = max(0.0, monotonic - self._last_sample)
            self._last_sample = monotonic
            self._ceiling = None if ceiling is None else float(ceiling)
            if ceiling is not None:
                # While the system clock is behind the system part, real time still passes at
                # the speed of the monotonic clock.
                candidate = min(max(system, self._floor + elapsed), monotonic + self._accepted_offset, float(ceiling))
                self._floor = max(self._floor, candidate)
            return self._floor

    def _track_steps(self, system: float, monotonic: float) -> None:
        """Accept a backward step of the system clock at once and a forward step once confirmed."""
        offset = system - monotonic
        if offset <= self._accepted_offset + STEP_TOLERANCE_SECONDS:
            self._accepted_offset = min(self._accepted_offset, offset)
            self._pending_step = None
            return
        if self._pending_step is None:
            self._pending_step = (offset, monotonic)
            log.info(
                "system clock jumped %d s ahead; the clock floor follows it only if it stays "
                "so for %d s", int(offset - self._accepted_offset), CONFIRM_SECONDS,
            )
            return
        smallest, since = self._pending_step
        smallest = min(smallest, offset)
        if monotonic - since >= CONFIRM_SECONDS:
            self._accepted_offset = smallest
            self._pending_step = None
        else:
            self._pending_step = (smallest, since)

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
