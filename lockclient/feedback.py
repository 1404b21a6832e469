"""LEDs and buzzer: short patterns that tell a member at the door what happened.

Outputs are GPIO lines with fixed names; any of them may be left out of the config:

- ``led_ready``: on while the lock works normally.
- ``led_reading``: a short flash when a card is read.
- ``led_denied``: denied taps, unknown cards and faults.
- ``led_open``: on while the strike is unlocked (follows the door controller).
- ``buzzer``: beeps.

A pattern maps outputs to a list of milliseconds, alternately on and off, starting with on:
``{"buzzer": [80, 80, 80]}`` is two short beeps. An empty list keeps that output off for the
pattern's duration. Event patterns (``granted``, ``denied``, ``unknown-card``, ``reading``)
play once. Condition patterns (``reader-fault``, ``bundle-expired``) repeat while the
condition lasts. An event pattern wins over a condition pattern, which wins over the steady
state. All timing comes from an injected clock and :meth:`Feedback.poll`: nothing sleeps.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from lockclient.gpio import Clock, Gpio

__all__ = [
    "OUTPUTS", "EVENT_PATTERNS", "CONDITION_PATTERNS", "DEFAULT_PATTERNS",
    "FeedbackConfigError", "Feedback", "parse_patterns", "pattern_for_decision",
]

log = logging.getLogger(__name__)

OUTPUTS = ("led_ready", "led_reading", "led_denied", "led_open", "buzzer")
EVENT_PATTERNS = ("granted", "denied", "unknown-card", "reading")
# Listed from the highest priority down: a reader fault hides an expired bundle.
CONDITION_PATTERNS = ("reader-fault", "bundle-expired")

DEFAULT_PATTERNS: dict[str, dict[str, list[int]]] = {
    "reading": {"led_reading": [300]},
    "granted": {"buzzer": [120]},
    "denied": {"buzzer": [80, 80, 80, 80, 80], "led_denied": [1500]},
    "unknown-card": {"buzzer": [600], "led_denied": [1500]},
    "reader-fault": {"led_ready": [], "led_denied": [200, 1800]},
    "bundle-expired": {"led_ready": [1000, 1000]},
}

# Maximum length of one pattern segment; longer values are almost certainly a unit mistake.
MAX_SEGMENT_MS = 60_000


class FeedbackConfigError(ValueError):
    """A configured feedback pattern is invalid."""


def parse_patterns(table: object, source: str = "config") -> dict[str, dict[str, list[int]]]:
    """Merge the ``[feedback.patterns]`` table over the defaults and validate it.

    A configured pattern replaces the default pattern of the same name as a whole.
    """
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise FeedbackConfigError(f"{source}: [feedback.patterns] must be a table of patterns")
    patterns = {name: {output: list(steps) for output, steps in pattern.items()}
                for name, pattern in DEFAULT_PATTERNS.items()}

    for name, pattern in table.items():
        where = f"{source}: feedback pattern {name!r}"
        if name not in DEFAULT_PATTERNS:
            raise FeedbackConfigError(
                f"{where} is not a known pattern; known: {', '.join(DEFAULT_PATTERNS)}"
            )
        if not isinstance(pattern, dict):
            raise FeedbackConfigError(f"{where} must be a table like {{ buzzer = [80, 80, 80] }}")
        parsed: dict[str, list[int]] = {}
        for output, steps in pattern.items():
            if output not in OUTPUTS:
                raise FeedbackConfigError(f"{where}: unknown output {output!r}; known: {', '.join(OUTPUTS)}")
            valid = isinstance(steps, list) and all(
                isinstance(step, int) and not isinstance(step, bool) and 0 < step <= MAX_SEGMENT_MS
                for step in steps
            )
            if not valid:
                raise FeedbackConfigError(
                    f"{where}: {output} must be a list of milliseconds (1 to {MAX_SEGMENT_MS}), "
                    f"alternately on and off, got {steps!r}"
                )
            parsed[output] = list(steps)
        patterns[name] = parsed
    return patterns


def pattern_for_decision(code: str) -> str:
    """Return the event pattern for a decision code from :func:`lockclient.bundle.decide`."""
    if code in ("granted", "break-glass"):
        return "granted"
    if code == "unknown-key":
        return "unknown-card"
    return "denied"


@dataclass
class _Playing:
    started: float
    steps: dict[str, list[int]]
    repeat: bool


def _level_at(steps: list[int], elapsed_ms: float, repeat: bool) -> tuple[bool, float] | None:
    """Return (level, milliseconds until the next change) or None once a one-shot has ended."""
    total = sum(steps)
    if not steps or total == 0:
        # An empty list keeps the output off; the pattern's other outputs decide its length.
        return (False, float("inf"))
    if repeat:
        elapsed_ms %= total
    elif elapsed_ms >= total:
        return None
    boundary = 0.0
    for position, step in enumerate(steps):
        boundary += step
        if elapsed_ms < boundary:
            return (position % 2 == 0, boundary - elapsed_ms)
    return None


class Feedback:
    """Drives the feedback outputs from events, conditions and the strike state."""

    def __init__(self, gpio: Gpio, clock: Clock, patterns: dict[str, dict[str, list[int]]] | None = None):
        self._gpio = gpio
        self._clock = clock
        self._patterns = patterns if patterns is not None else parse_patterns(None)
        self._outputs = [name for name in OUTPUTS if gpio.has(name)]
        self._events: dict[str, _Playing] = {}
        self._conditions: dict[str, _Playing] = {}
        self._unlocked = False
        self._levels: dict[str, bool] = {}
        self._stopped = False
        self._lock = threading.RLock()
        self.poll()

    def play(self, name: str) -> None:
        """Play event pattern ``name`` once, cutting short older event patterns on the same outputs."""
        if name not in EVENT_PATTERNS:
            raise ValueError(f"unknown event pattern {name!r}")
        with self._lock:
            self._events[name] = _Playing(self._clock.monotonic(), self._patterns[name], repeat=False)
            # A new event cuts short older ones on the outputs it uses.
            for other, playing in list(self._events.items()):
                if other != name and set(playing.steps) & set(self._patterns[name]):
                    del self._events[other]
            self.poll()

    def set_condition(self, name: str, active: bool) -> None:
        """Start or stop the repeating pattern of condition ``name``."""
        if name not in CONDITION_PATTERNS:
            raise ValueError(f"unknown condition pattern {name!r}")
        with self._lock:
            if active and name not in self._conditions:
                self._conditions[name] = _Playing(self._clock.monotonic(), self._patterns[name], repeat=True)
            elif not active:
                self._conditions.pop(name, None)
            self.poll()

    def set_unlocked(self, unlocked: bool) -> None:
        """Show the strike state on ``led_open``."""
        with self._lock:
            self._unlocked = unlocked
            self.poll()

    def _target_levels(self, now: float) -> tuple[dict[str, bool], float | None]:
        levels = {name: False for name in self._outputs}
        levels["led_ready"] = True
        levels["led_open"] = self._unlocked
        next_change: float | None = None

        def apply(playing: _Playing, claimed: set[str]) -> None:
            nonlocal next_change
            elapsed_ms = (now - playing.started) * 1000.0
            for output, steps in playing.steps.items():
                if output in claimed:
                    continue
                state = _level_at(steps, elapsed_ms, playing.repeat)
                if state is None:
                    continue
                claimed.add(output)
                levels[output] = state[0]
                if state[1] != float("inf"):
                    at = now + state[1] / 1000.0
                    next_change = at if next_change is None else min(next_change, at)

        claimed: set[str] = set()
        for name in EVENT_PATTERNS:
            if name in self._events:
                apply(self._events[name], claimed)
        for name in CONDITION_PATTERNS:
            if name in self._conditions:
                apply(self._conditions[name], claimed)
        return {name: levels[name] for name in self._outputs}, next_change

    def poll(self) -> float | None:
        """Set every output to its level now; return the monotonic time of the next change."""
        with self._lock:
            if self._stopped:
                return None
            now = self._clock.monotonic()
            self._drop_finished(now)
            levels, next_change = self._target_levels(now)
            for name, level in levels.items():
                if self._levels.get(name) != level:
                    self._gpio.set(name, level)
                    self._levels[name] = level
            return next_change

    def _drop_finished(self, now: float) -> None:
        for name, playing in list(self._events.items()):
            elapsed_ms = (now - playing.started) * 1000.0
            if all(_level_at(steps, elapsed_ms, False) in (None, (False, float("inf")))
                   for steps in playing.steps.values()):
                del self._events[name]

    def next_deadline(self) -> float | None:
        with self._lock:
            return self._target_levels(self._clock.monotonic())[1]

    def off(self) -> None:
        """Switch every feedback output off and stop patterns (at shutdown)."""
        with self._lock:
            self._stopped = True
            self._events.clear()
            self._conditions.clear()
            for name in self._outputs:
                try:
                    self._gpio.set(name, False)
                except Exception as error:  # shutdown must reach the remaining outputs
                    log.warning("switching feedback output %s off failed: %s", name, error)
                self._levels[name] = False
