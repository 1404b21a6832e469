"""The door controller: strike, request-to-exit button, door sensor and office mode.

The controller is a state machine driven from outside. It never sleeps and reads all time from
an injected clock, so tests drive it with a fake clock and :class:`lockclient.gpio.FakeGpio`:

- :meth:`DoorController.tap` takes a card decision made by :func:`lockclient.bundle.decide`.
  A granted tap unlocks the strike for the bundle's ``unlock_seconds``; a denied tap never
  touches the strike.
- Inputs (``exit_button``, ``door_sensor``, ``office_button``) arrive as raw edges through
  :meth:`DoorController.handle_edges`; they are debounced in software, then acted on.
- :meth:`DoorController.poll` runs the timers (relock, door held open, office mode end) and
  returns when it wants to run next.
- Door events (``exit-button``, ``door-held-open``, ``door-forced``, ``office-mode-on``,
  ``office-mode-off``) go to the ``on_event`` callback (the daemon spools them for the status
  push); without one they are kept in the receiver's status event format until
  :meth:`DoorController.drain_events` takes them.
- :meth:`DoorController.counts` returns what the status record's ``counters`` carry: taps
  granted and denied, exit-button presses, forced doors and doors held open, since the
  controller started.

Durations use the monotonic clock. Office-mode ends and event timestamps use the wall clock
the daemon passes in, which is the clock-floor-adjusted "now" used for decisions.

Office mode: a granted key that the bundle allows office mode on this lock toggles it with a
gesture (tapping twice within ``double_tap_seconds``, or pressing the office button and then
tapping). The strike then stays unlocked until the next toggle, the configured local end time,
or the end of that key's office-mode interval, whichever comes first. An expired bundle, a
bundle in lockdown, or a bundle that no longer allows the key ends it as well. Unlocks already granted (a few seconds
each) run out as usual.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, time as local_time, timedelta
from typing import Callable, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lockclient.bundle import Bundle, Decision, format_time, office_mode_until
from lockclient.feedback import Feedback, pattern_for_decision
from lockclient.gpio import Clock, Debouncer, Edge, Gpio, LineConfig

__all__ = [
    "STRIKE", "EXIT_BUTTON", "DOOR_SENSOR", "OFFICE_BUTTON", "OFFICE_TOGGLES", "STATUS_COUNTERS",
    "DoorSettings", "DoorConfigError", "DoorController", "Strike", "GpioStrike", "parse_local_time",
    "parse_door_settings",
]

log = logging.getLogger(__name__)

STRIKE = "strike"
EXIT_BUTTON = "exit_button"
# Active means the door is open (configure active_low to match the reed switch wiring).
DOOR_SENSOR = "door_sensor"
OFFICE_BUTTON = "office_button"

OFFICE_TOGGLES = ("double-tap", "button", "off")


def parse_local_time(value: str) -> local_time:
    """Parse ``HH:MM`` (24-hour) into a time of day; raise ValueError with the expected form."""
    try:
        hours, minutes = value.split(":")
        if len(hours) != 2 or len(minutes) != 2:
            raise ValueError
        return local_time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"{value!r} is not a local time like \"22:00\" (HH:MM, 24-hour)") from None


@dataclass(frozen=True)
class DoorSettings:
    """Door behaviour that the lock's operator configures (times in seconds)."""

    # Unlock time for the exit button; None uses the bundle's unlock_seconds.
    exit_unlock_seconds: float | None = None
    # Used when no bundle is loaded yet (exit button only: taps need a bundle).
    default_unlock_seconds: float = 5.0
    held_open_seconds: float = 60.0
    # The door opening this soon after the strike relocked is someone who pushed late, not force.
    forced_grace_seconds: float = 2.0
    office_toggle: str = "double-tap"
    double_tap_seconds: float = 4.0
    office_button_seconds: float = 10.0
    # Local time of day at which office mode ends at the latest, in the bundle's time zone.
    office_end_local: local_time | None = None
    max_events: int = 500


class DoorConfigError(ValueError):
    """An invalid setting in the ``[door]`` table."""


# setting -> (minimum, maximum) in seconds
_DOOR_RANGES = {
    "exit_unlock_seconds": (0.5, 300.0),
    "held_open_seconds": (5.0, 86_400.0),
    "forced_grace_seconds": (0.0, 30.0),
    "double_tap_seconds": (0.5, 30.0),
    "office_button_seconds": (1.0, 300.0),
}


def parse_door_settings(table: object, source: str = "config") -> DoorSettings:
    """Build :class:`DoorSettings` from the ``[door]`` table; raise :class:`DoorConfigError` naming the fix."""
    if table is None:
        return DoorSettings()
    if not isinstance(table, dict):
        raise DoorConfigError(f"{source}: setting door: must be a table ([door])")
    known = set(_DOOR_RANGES) | {"office_toggle", "office_end_local"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise DoorConfigError(
            f"{source}: setting door.{unknown[0]}: unknown setting; valid settings here are {', '.join(sorted(known))}"
        )

    values: dict = {}
    for key, (minimum, maximum) in _DOOR_RANGES.items():
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= maximum:
            raise DoorConfigError(
                f"{source}: setting door.{key}: must be a number of seconds from {minimum:g} to {maximum:g}, got {value!r}"
            )
        values[key] = float(value)

    toggle = table.get("office_toggle", DoorSettings.office_toggle)
    if toggle not in OFFICE_TOGGLES:
        raise DoorConfigError(
            f"{source}: setting door.office_toggle: must be one of {', '.join(OFFICE_TOGGLES)}, got {toggle!r}"
        )
    values["office_toggle"] = toggle

    if "office_end_local" in table:
        value = table["office_end_local"]
        try:
            values["office_end_local"] = parse_local_time(value) if isinstance(value, str) else parse_local_time("")
        except ValueError:
            raise DoorConfigError(
                f"{source}: setting door.office_end_local: {value!r} is not a local time; write it like \"22:00\""
            ) from None
    return DoorSettings(**values)


class Strike(Protocol):
    """The electric strike or magnetic lock: energised means unlocked."""

    def set(self, unlocked: bool) -> None: ...


@dataclass
class GpioStrike:
    """A strike on a named GPIO output line."""

    gpio: Gpio
    name: str = STRIKE

    def set(self, unlocked: bool) -> None:
        self.gpio.set(self.name, unlocked)


@dataclass
class _OfficeMode:
    hwid: str
    until: float
    end_reason: str


@dataclass
class _Counters:
    exit_button: int = 0
    door_forced: int = 0
    door_held_open: int = 0
    # Card taps handed to the controller: allowed decisions (break-glass and office-mode
    # gestures included) and denied ones.
    granted: int = 0
    denied: int = 0
    unlocks: int = 0
    events_dropped: int = 0


# The counters the daemon sends in the status record (receiver-status.schema.json).
STATUS_COUNTERS = ("exit_button", "door_forced", "door_held_open", "granted", "denied")


def _short(hwid: str) -> str:
    # Enough of the hardware id to tell members apart in an event, not enough to clone a card.
    return "…" + hwid[-5:]


class DoorController:
    """Decides what the strike does from taps, buttons, the door sensor and the clock."""

    def __init__(
        self,
        strike: Strike,
        clock: Clock,
        settings: DoorSettings = DoorSettings(),
        gpio: Gpio | None = None,
        input_lines: list[LineConfig] = (),
        feedback: Feedback | None = None,
        on_event: Callable[[str, float, str | None], None] | None = None,
    ):
        self._strike = strike
        self._clock = clock
        self._settings = settings
        self._feedback = feedback
        self._on_event = on_event
        self._lock = threading.RLock()
        self._bundle: Bundle | None = None

        inputs = [line for line in input_lines if not line.output]
        initial = {line.name: bool(gpio.get(line.name)) for line in inputs} if gpio else {}
        self._debouncer = Debouncer(inputs, initial)
        self._has_sensor = any(line.name == DOOR_SENSOR for line in inputs)
        self._door_open = bool(initial.get(DOOR_SENSOR, False))

        self._energised = False
        self._unlock_until: float | None = None
        self._opened_during_unlock = False
        self._relocked_at: float | None = None
        self._open_since: float | None = self._clock.monotonic() if self._door_open else None
        self._held_reported = False
        self._office: _OfficeMode | None = None
        self._last_tap: tuple[str, float] | None = None
        self._office_armed_until: float | None = None
        self._stopped = False

        self._events: deque[dict] = deque()
        self.last_turn = self._clock.monotonic()
        self.counters = _Counters()
        self._apply_strike()

    # -- inputs from the daemon -------------------------------------------------------------

    def set_bundle(self, bundle: Bundle | None) -> None:
        """Use a newly loaded bundle; it may end office mode (lockdown, expiry, revocation)."""
        with self._lock:
            self._bundle = bundle
            if self._office is not None:
                self._review_office_mode()
            self.poll()

    def tap(self, hwid: str, decision: Decision) -> None:
        """Act on the decision for a card tap; only an allowed decision can energise the strike."""
        with self._lock:
            if self._stopped:
                return
            now = self._clock.monotonic()
            self._play("reading")
            self._play(pattern_for_decision(decision.code))

            if not decision.allowed:
                self.counters.denied += 1
                self._last_tap = None
                return

            self.counters.granted += 1
            if self._office_gesture(hwid, now):
                self._toggle_office_mode(hwid)
            else:
                self._unlock(self._unlock_seconds(), "card")
            self.poll()

    def handle_edges(self, edges: list[Edge]) -> None:
        """Take raw input edges from :meth:`Gpio.wait_edges`; they count once debounced."""
        with self._lock:
            self._debouncer.feed(edges)
            self.poll()

    def run_inputs(self, gpio: Gpio | None, stop: threading.Event, max_wait: float = 0.5) -> None:
        """Wait for input edges and run the timers until ``stop`` is set (the daemon's GPIO thread).

        Without ``gpio`` (no input or feedback lines configured) the loop only runs the timers.
        :attr:`last_turn` records the monotonic time of every turn for the service watchdog.
        """
        log.info("door input loop starting")
        while not stop.is_set():
            self.last_turn = self._clock.monotonic()
            deadline = self.poll()
            wait = max_wait
            if deadline is not None:
                wait = min(max(deadline - self._clock.monotonic(), 0.001), max_wait)
            if gpio is None:
                stop.wait(wait)
                continue
            try:
                edges = gpio.wait_edges(wait)
            except Exception as error:  # a broken line must not end the loop that relocks the door
                log.error("reading GPIO input events failed: %s", error)
                stop.wait(max_wait)
                continue
            self.handle_edges(edges)
        log.info("door input loop stopped")

    def set_reader_healthy(self, healthy: bool) -> None:
        if self._feedback is not None:
            self._feedback.set_condition("reader-fault", not healthy)

    # -- timers --------------------------------------------------------------------------------

    def poll(self) -> float | None:
        """Run everything that is due now; return the monotonic time it should run again."""
        with self._lock:
            if self._stopped:
                return None
            now = self._clock.monotonic()

            for name, active in self._debouncer.poll(now):
                self._on_input(name, active, now)

            if self._unlock_until is not None and now >= self._unlock_until:
                self._unlock_until = None
                self._apply_strike()

            if self._office is not None:
                self._review_office_mode()

            self._check_held_open(now)

            if self._feedback is not None:
                expired = self._bundle is not None and self._bundle.is_expired(self._clock.time())
                self._feedback.set_condition("bundle-expired", expired)

            return self._next_deadline(now)

    def _next_deadline(self, now: float) -> float | None:
        deadlines = [self._debouncer.next_deadline(), self._unlock_until]
        if self._door_open and not self._held_reported and self._open_since is not None:
            deadlines.append(self._open_since + self._settings.held_open_seconds)
        wall = self._clock.time()
        if self._office is not None:
            deadlines.append(now + max(self._office.until - wall, 0.0))
        if self._bundle is not None and not self._bundle.is_expired(wall):
            deadlines.append(now + self._bundle.expires_at - wall)
        if self._feedback is not None:
            deadlines.append(self._feedback.poll())
        known = [deadline for deadline in deadlines if deadline is not None]
        return min(known) if known else None

    # -- strike --------------------------------------------------------------------------------

    def _unlock_seconds(self) -> float:
        if self._bundle is not None:
            return self._bundle.unlock_seconds
        return self._settings.default_unlock_seconds

    def _unlock(self, seconds: float, reason: str) -> None:
        now = self._clock.monotonic()
        if not self._energised:
            self._opened_during_unlock = self._door_open
        until = now + seconds
        self._unlock_until = until if self._unlock_until is None else max(self._unlock_until, until)
        self.counters.unlocks += 1
        log.info("unlocking for %.1f s (%s)", seconds, reason)
        self._apply_strike()

    def _apply_strike(self) -> None:
        wanted = not self._stopped and (self._unlock_until is not None or self._office is not None)
        if wanted == self._energised:
            return
        try:
            self._strike.set(wanted)
        except Exception as error:
            # NOTE: a strike that cannot be driven stays as it is. The error is logged at every
            # attempt, and the next state change tries again.
            log.error("setting the strike %s failed: %s", "unlocked" if wanted else "locked", error)
            return
        self._energised = wanted
        if not wanted:
            self._relocked_at = self._clock.monotonic()
        if self._feedback is not None:
            self._feedback.set_unlocked(wanted)

    @property
    def unlocked(self) -> bool:
        """Whether the strike is energised now."""
        return self._energised

    # -- request-to-exit button and door sensor ----------------------------------------------

    def _on_input(self, name: str, active: bool, now: float) -> None:
        if name == EXIT_BUTTON and active:
            self._exit_pressed()
        elif name == OFFICE_BUTTON and active:
            self._office_armed_until = now + self._settings.office_button_seconds
            log.info("office button pressed: tap an office-mode key within %.0f s", self._settings.office_button_seconds)
        elif name == DOOR_SENSOR:
            if active:
                self._door_opened(now)
            else:
                self._door_closed()

    def _exit_pressed(self) -> None:
        self.counters.exit_button += 1
        seconds = self._settings.exit_unlock_seconds or self._unlock_seconds()
        self._record("exit-button", None)
        self._unlock(seconds, "exit button")

    def _door_opened(self, now: float) -> None:
        self._door_open = True
        self._open_since = now
        self._held_reported = False
        if self._energised:
            self._opened_during_unlock = True
            return
        if self._relocked_at is not None and now - self._relocked_at <= self._settings.forced_grace_seconds:
            return
        self.counters.door_forced += 1
        log.warning("door opened while locked: door forced")
        self._record("door-forced", "door opened while the strike was locked")

    def _door_closed(self) -> None:
        self._door_open = False
        self._open_since = None
        # Someone went through: relock now rather than leave the door unlocked and closed.
        if self._unlock_until is not None and self._opened_during_unlock:
            self._unlock_until = None
            self._opened_during_unlock = False
            self._apply_strike()

    def _check_held_open(self, now: float) -> None:
        if not self._door_open or self._held_reported or self._open_since is None:
            return
        if self._office is not None:
            # The door may stand open during office mode; count from when office mode ends.
            self._open_since = now
            return
        if now - self._open_since >= self._settings.held_open_seconds:
            self._held_reported = True
            self.counters.door_held_open += 1
            log.warning("door held open for more than %.0f s", self._settings.held_open_seconds)
            self._record("door-held-open", f"open for more than {self._settings.held_open_seconds:.0f} s")

    # -- office mode ---------------------------------------------------------------------------

    def _office_gesture(self, hwid: str, now: float) -> bool:
        toggle = self._settings.office_toggle
        if toggle == "button":
            armed = self._office_armed_until is not None and now <= self._office_armed_until
            self._office_armed_until = None
            return armed
        if toggle == "double-tap":
            previous = self._last_tap
            self._last_tap = (hwid, now)
            if previous is not None and previous[0] == hwid and now - previous[1] <= self._settings.double_tap_seconds:
                # A third tap starts a new gesture instead of toggling straight back.
                self._last_tap = None
                return True
        return False

    def _toggle_office_mode(self, hwid: str) -> None:
        if self._office is not None:
            if hwid == self._office.hwid or self._office_allowed_until(hwid) is not None:
                self._end_office_mode(f"switched off by key {_short(hwid)}")
            return

        until = self._office_allowed_until(hwid)
        if until is None:
            # Not an office-mode key, or lockdown or expiry forbids it: an ordinary grant.
            self._unlock(self._unlock_seconds(), "card")
            return
        end, reason = self._office_end(until)
        self._office = _OfficeMode(hwid, end, reason)
        log.info("office mode on by key %s until %s (%s)", _short(hwid), format_time(end), reason)
        self._record("office-mode-on", f"by key {_short(hwid)} until {format_time(end)} ({reason})")
        self._apply_strike()

    def _office_allowed_until(self, hwid: str) -> int | None:
        bundle = self._bundle
        now = self._clock.time()
        if bundle is None or bundle.lockdown or bundle.is_expired(now):
            return None
        return office_mode_until(bundle, hwid, now)

    def _office_end(self, interval_end: float) -> tuple[float, str]:
        end, reason = float(interval_end), "end of the key's office-mode interval"
        local_end = self._next_local_end()
        if local_end is not None and local_end < end:
            end, reason = local_end, f"local end time {self._settings.office_end_local:%H:%M}"
        return end, reason

    def _next_local_end(self) -> float | None:
        end_time = self._settings.office_end_local
        if end_time is None or self._bundle is None:
            return None
        zone_name = self._bundle.settings.get("timezone")
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            log.warning("bundle time zone %r is unknown on this device: office mode ignores its local end time", zone_name)
            return None
        now = datetime.fromtimestamp(self._clock.time(), zone)
        candidate = datetime.combine(now.date(), end_time, zone)
        if candidate.timestamp() <= now.timestamp():
            candidate = datetime.combine(now.date() + timedelta(days=1), end_time, zone)
        return candidate.timestamp()

    def _review_office_mode(self) -> None:
        office = self._office
        bundle = self._bundle
        now = self._clock.time()
        if bundle is None:
            return
        if bundle.lockdown:
            self._end_office_mode("lockdown")
        elif bundle.is_expired(now):
            self._end_office_mode("bundle expired")
        elif now >= office.until:
            self._end_office_mode(office.end_reason)
        else:
            allowed = office_mode_until(bundle, office.hwid, now)
            if allowed is None:
                self._end_office_mode("key no longer allowed office mode")
            elif allowed < office.until:
                office.until, office.end_reason = self._office_end(allowed)

    def _end_office_mode(self, reason: str) -> None:
        if self._office is None:
            return
        self._office = None
        log.info("office mode off: %s", reason)
        self._record("office-mode-off", reason)
        self._apply_strike()

    @property
    def office_mode(self) -> bool:
        return self._office is not None

    # -- events and shutdown -------------------------------------------------------------------

    def _play(self, pattern: str) -> None:
        if self._feedback is not None:
            self._feedback.play(pattern)

    def _record(self, kind: str, detail: str | None) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, self._clock.time(), detail)
            except Exception as error:  # a full disk must not stop the door
                log.error("recording event %s failed: %s", kind, error)
            return
        if len(self._events) >= self._settings.max_events:
            self._events.popleft()
            self.counters.events_dropped += 1
        self._events.append({"type": kind, "at": format_time(self._clock.time()), "detail": detail})

    def drain_events(self) -> list[dict]:
        """Take the recorded events (receiver status format) for the next status push."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            return events

    def requeue_events(self, events: list[dict]) -> None:
        """Put back events whose push failed, ahead of newer ones."""
        with self._lock:
            for event in reversed(events):
                if len(self._events) >= self._settings.max_events:
                    self.counters.events_dropped += 1
                    continue
                self._events.appendleft(event)

    def status(self) -> dict:
        """Describe the door for ``lockclient status`` and logs."""
        with self._lock:
            return {
                "unlocked": self._energised,
                "door_open": self._door_open if self._has_sensor else None,
                "office_mode": None if self._office is None else {
                    "until": format_time(self._office.until), "key": _short(self._office.hwid),
                },
                "counters": dict(vars(self.counters)),
            }

    def counts(self) -> dict[str, int]:
        """Return the counters of the status record (:data:`STATUS_COUNTERS`), since the controller started."""
        with self._lock:
            return {name: getattr(self.counters, name) for name in STATUS_COUNTERS}

    def shutdown(self) -> None:
        """Lock the strike and switch the feedback off; later taps and inputs do nothing."""
        with self._lock:
            if self._stopped:
                return
            self._end_office_mode("shutdown")
            self._unlock_until = None
            self._stopped = True
            try:
                self._strike.set(False)
                self._energised = False
            except Exception as error:
                log.error("locking the strike at shutdown failed: %s", error)
            if self._feedback is not None:
                self._feedback.off()
            log.info("door controller stopped with the strike locked")
