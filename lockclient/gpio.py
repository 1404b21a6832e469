"""Named GPIO lines: the one thin adapter over libgpiod v2, a fake for tests, and debouncing.

Everything above this module (door controller, feedback) talks to lines by name:

- :class:`GpiodGpio` requests the configured lines from ``/dev/gpiochip*`` through the python
  ``gpiod`` 2.x bindings. It is deliberately thin: set an output, read an input, wait for
  edge events. It cannot run without GPIO hardware, so it contains as little logic as possible.
- :class:`FakeGpio` implements the same interface for tests: inputs are driven with
  :meth:`FakeGpio.inject`, and every output change is recorded with its time.
- :class:`Debouncer` turns raw edges into stable level changes in software, the same way on
  every chip, driven by an injected clock.

Values are logical: ``True`` means active. A line configured ``active_low`` is active when
its electrical level is low. The kernel's GPIO character device applies the inversion, to edge
events as well.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

__all__ = [
    "GpioError", "LineConfig", "Edge", "Gpio", "GpiodGpio", "FakeGpio", "Debouncer",
    "Clock", "SystemClock", "FunctionClock", "FakeClock", "parse_line", "BIASES",
]

log = logging.getLogger(__name__)

BIASES = ("as-is", "disabled", "pull-up", "pull-down")
CONSUMER = "doorlock"


class GpioError(Exception):
    """A GPIO line could not be configured or requested."""


class Clock(Protocol):
    """Time source injected into everything that waits: monotonic and wall-clock seconds."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clocks: ``time.monotonic`` for durations, ``time.time`` for timestamps."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


@dataclass(frozen=True)
class FunctionClock:
    """A clock built from two functions, such as the daemon's clock-floor-adjusted ``now``."""

    monotonic: Callable[[], float]
    time: Callable[[], float]


class FakeClock:
    """A clock for tests that moves only in :meth:`advance`; both readings advance together."""

    def __init__(self, wall: float = 1_764_878_400.0, monotonic: float = 1000.0):
        self._wall = wall
        self._monotonic = monotonic

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a fake clock only moves forward")
        self._wall += seconds
        self._monotonic += seconds


@dataclass(frozen=True)
class LineConfig:
    """One named line: where it is (chip and offset) and how it behaves."""

    name: str
    chip: str
    offset: int
    output: bool
    active_low: bool = False
    bias: str = "as-is"
    # Inputs only: a level must stay stable this long before it counts (software debounce).
    debounce_seconds: float = 0.0


def parse_line(name: str, table: dict, output: bool, source: str = "config") -> LineConfig:
    """Build a :class:`LineConfig` from a config table like ``{chip = "gpiochip0", line = 17}``.

    Raises :class:`GpioError` naming ``source``, the setting and the fix for any invalid value.
    """
    where = f"{source}: line {name!r}"
    if not isinstance(table, dict):
        raise GpioError(f"{where} must be a table like {{ chip = \"gpiochip0\", line = 17 }}")
    known = {"chip", "line", "active_low", "bias", "debounce_ms"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise GpioError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    chip = table.get("chip", "gpiochip0")
    if not isinstance(chip, str) or not chip:
        raise GpioError(f"{where}: chip must be a name like \"gpiochip0\" or a path, got {chip!r}")
    if not chip.startswith("/"):
        chip = "/dev/" + chip

    offset = table.get("line")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise GpioError(f"{where}: line must be the line offset on the chip (an integer >= 0), got {offset!r}")

    active_low = table.get("active_low", False)
    if not isinstance(active_low, bool):
        raise GpioError(f"{where}: active_low must be true or false, got {active_low!r}")

    bias = table.get("bias", "as-is")
    if bias not in BIASES:
        raise GpioError(f"{where}: bias must be one of {', '.join(BIASES)}, got {bias!r}")

    debounce_ms = table.get("debounce_ms", 0 if output else 20)
    if output and "debounce_ms" in table:
        raise GpioError(f"{where}: debounce_ms applies to inputs only; remove it from this output")
    if not isinstance(debounce_ms, (int, float)) or isinstance(debounce_ms, bool) or not 0 <= debounce_ms <= 10_000:
        raise GpioError(f"{where}: debounce_ms must be a number of milliseconds from 0 to 10000, got {debounce_ms!r}")

    return LineConfig(
        name=name, chip=chip, offset=offset, output=output, active_low=active_low,
        bias=bias, debounce_seconds=debounce_ms / 1000.0,
    )


@dataclass(frozen=True)
class Edge:
    """A raw level change on an input: ``active`` is the new logical level."""

    name: str
    active: bool
    # Seconds on the monotonic clock (gpiod timestamps use CLOCK_MONOTONIC, as time.monotonic does).
    at: float


class Gpio(Protocol):
    """Interface to named GPIO lines, used by the door controller and the feedback."""

    def set(self, name: str, active: bool) -> None: ...

    def get(self, name: str) -> bool: ...

    def has(self, name: str) -> bool: ...

    def wait_edges(self, timeout: float) -> list[Edge]: ...

    def close(self) -> None: ...


def _check_unique(lines: list[LineConfig]) -> None:
    names: set[str] = set()
    places: dict[tuple[str, int], str] = {}
    for line in lines:
        if line.name in names:
            raise GpioError(f"line name {line.name!r} is configured twice")
        names.add(line.name)
        place = (line.chip, line.offset)
        if place in places:
            raise GpioError(
                f"lines {places[place]!r} and {line.name!r} both use {line.chip} line {line.offset}"
            )
        places[place] = line.name


class GpiodGpio:
    """Named lines on real GPIO chips through libgpiod v2 (python ``gpiod`` >= 2.1).

    One line request per chip contains all of that chip's configured lines. Outputs are requested
    inactive, so the strike starts locked. Inputs get edge detection on both edges.
    """

    def __init__(self, lines: list[LineConfig], consumer: str = CONSUMER):
        import gpiod  # imported here so tests and the compiler never need the C extension
        from gpiod.line import Bias, Direction, Edge as GpiodEdge, Value

        _check_unique(lines)
        self._gpiod = gpiod
        self._value = Value
        self._lines = {line.name: line for line in lines}
        self._requests: dict[str, object] = {}
        # libgpiod requests are not documented as thread-safe: the reader thread sets feedback
        # outputs while the door thread reads edge events from the same request.
        self._lock = threading.Lock()
        self._names_by_place: dict[tuple[str, int], str] = {}
        biases = {
            "as-is": Bias.AS_IS, "disabled": Bias.DISABLED,
            "pull-up": Bias.PULL_UP, "pull-down": Bias.PULL_DOWN,
        }

        by_chip: dict[str, list[LineConfig]] = {}
        for line in lines:
            by_chip.setdefault(line.chip, []).append(line)
            self._names_by_place[(line.chip, line.offset)] = line.name

        try:
            for chip, chip_lines in by_chip.items():
                config = {}
                for line in chip_lines:
                    if line.output:
                        settings = gpiod.LineSettings(
                            direction=Direction.OUTPUT, active_low=line.active_low,
                            bias=biases[line.bias], output_value=Value.INACTIVE,
                        )
                    else:
                        settings = gpiod.LineSettings(
                            direction=Direction.INPUT, active_low=line.active_low,
                            bias=biases[line.bias], edge_detection=GpiodEdge.BOTH,
                        )
                    config[line.offset] = settings
                try:
                    self._requests[chip] = gpiod.request_lines(chip, config=config, consumer=consumer)
                except (OSError, ValueError) as error:
                    names = ", ".join(line.name for line in chip_lines)
                    raise GpioError(
                        f"cannot request lines {names} on {chip}: {error}. Check that the chip exists "
                        "(gpiodetect), that no other program holds the lines (gpioinfo), and that "
                        "this user is in the gpio group"
                    ) from None
                log.info("requested GPIO lines %s on %s", ", ".join(
                    f"{line.name}={line.offset}" for line in chip_lines), chip)
        except BaseException:
            self.close()
            raise

    def has(self, name: str) -> bool:
        return name in self._lines

    def _line(self, name: str, output: bool) -> LineConfig:
        line = self._lines.get(name)
        if line is None:
            raise KeyError(f"no GPIO line named {name!r} is configured")
        if line.output != output:
            raise GpioError(f"line {name!r} is an {'output' if line.output else 'input'}")
        return line

    def set(self, name: str, active: bool) -> None:
        line = self._line(name, output=True)
        value = self._value.ACTIVE if active else self._value.INACTIVE
        with self._lock:
            self._requests[line.chip].set_value(line.offset, value)

    def get(self, name: str) -> bool:
        line = self._lines.get(name)
        if line is None:
            raise KeyError(f"no GPIO line named {name!r} is configured")
        with self._lock:
            return self._requests[line.chip].get_value(line.offset) == self._value.ACTIVE

    def wait_edges(self, timeout: float) -> list[Edge]:
        watched = [
            request for chip, request in self._requests.items()
            if any(not line.output and line.chip == chip for line in self._lines.values())
        ]
        if not watched:
            time.sleep(max(timeout, 0.0))
            return []
        ready, _, _ = select.select(watched, [], [], max(timeout, 0.0))
        edges = []
        rising = self._gpiod.EdgeEvent.Type.RISING_EDGE
        for chip, request in self._requests.items():
            if request not in ready:
                continue
            with self._lock:
                events = request.read_edge_events()
            for event in events:
                name = self._names_by_place.get((chip, event.line_offset))
                if name is None:
                    continue
                edges.append(Edge(name, event.event_type == rising, event.timestamp_ns / 1e9))
        edges.sort(key=lambda edge: edge.at)
        return edges

    def close(self) -> None:
        """Release every line request; the kernel then stops driving the outputs."""
        with self._lock:
            for chip, request in list(self._requests.items()):
                try:
                    request.release()
                except Exception as error:  # a released or broken request must not stop the others
                    log.warning("releasing GPIO lines on %s failed: %s", chip, error)
            self._requests.clear()


@dataclass
class OutputChange:
    """One recorded output change of :class:`FakeGpio`."""

    name: str
    active: bool
    at: float


@dataclass
class FakeGpio:
    """In-memory :class:`Gpio` for tests: inject input edges, inspect output changes."""

    lines: list[LineConfig]
    clock: Clock = field(default_factory=FakeClock)
    changes: list[OutputChange] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        _check_unique(self.lines)
        self._lines = {line.name: line for line in self.lines}
        self._levels = {line.name: False for line in self.lines}
        self._pending: list[Edge] = []
        self._lock = threading.Lock()

    def has(self, name: str) -> bool:
        return name in self._lines

    def set(self, name: str, active: bool) -> None:
        line = self._lines.get(name)
        if line is None:
            raise KeyError(f"no GPIO line named {name!r} is configured")
        if not line.output:
            raise GpioError(f"line {name!r} is an input")
        if self.closed:
            raise GpioError(f"line {name!r} was released")
        with self._lock:
            if self._levels[name] != active:
                self.changes.append(OutputChange(name, active, self.clock.monotonic()))
            self._levels[name] = active

    def get(self, name: str) -> bool:
        if name not in self._lines:
            raise KeyError(f"no GPIO line named {name!r} is configured")
        return self._levels[name]

    def inject(self, name: str, active: bool) -> None:
        """Drive input ``name`` to ``active`` now; an edge is queued if the level changes."""
        line = self._lines.get(name)
        if line is None or line.output:
            raise KeyError(f"no GPIO input named {name!r} is configured")
        with self._lock:
            if self._levels[name] != active:
                self._levels[name] = active
                self._pending.append(Edge(name, active, self.clock.monotonic()))

    def wait_edges(self, timeout: float) -> list[Edge]:
        # Returns at once: a test moves the clock itself instead of waiting.
        with self._lock:
            edges, self._pending = self._pending, []
        return edges

    def history(self, name: str) -> list[bool]:
        """Return the sequence of levels output ``name`` was set to."""
        return [change.active for change in self.changes if change.name == name]

    def close(self) -> None:
        self.closed = True


class Debouncer:
    """Software debounce for inputs: a new level counts once it has been stable long enough.

    Feed raw edges with :meth:`feed` and call :meth:`poll` with the monotonic time; it returns
    the stable level changes in the order they became stable. :meth:`next_deadline` returns when a
    loop should poll again.
    """

    def __init__(self, lines: list[LineConfig], initial: dict[str, bool]):
        self._periods = {line.name: line.debounce_seconds for line in lines if not line.output}
        self._stable = {name: bool(initial.get(name, False)) for name in self._periods}
        self._raw = dict(self._stable)
        self._changed_at: dict[str, float] = {}

    def level(self, name: str) -> bool:
        return self._stable[name]

    def feed(self, edges: list[Edge]) -> None:
        for edge in edges:
            if edge.name not in self._periods:
                continue
            if edge.active != self._raw[edge.name]:
                self._raw[edge.name] = edge.active
                self._changed_at[edge.name] = edge.at

    def poll(self, now: float) -> list[tuple[str, bool]]:
        changes = []
        due = sorted(
            (changed_at, name) for name, changed_at in self._changed_at.items()
            if now - changed_at >= self._periods[name]
        )
        for _, name in due:
            del self._changed_at[name]
            if self._raw[name] != self._stable[name]:
                self._stable[name] = self._raw[name]
                changes.append((name, self._stable[name]))
        return changes

    def next_deadline(self) -> float | None:
        deadlines = [at + self._periods[name] for name, at in self._changed_at.items()]
        return min(deadlines) if deadlines else None
