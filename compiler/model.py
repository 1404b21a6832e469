"""The resolved access model: what the YAML means once it has been loaded and validated.

Every entity remembers where it was written (:class:`Source`) so that later stages (compile,
diff, explain, reports) can point an admin at the right line. All dates are calendar dates in
the lock's time zone; all times of day are minutes since local midnight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
MINUTES_PER_DAY = 24 * 60

DEFAULT_VALID_DAYS = 7
DEFAULT_LAST_SEEN_PRECISION = 3600
DEFAULT_UNLOCK_SECONDS = 5


@dataclass(frozen=True)
class Source:
    """A place in the access repository: file relative to the repository root, 1-based line and column."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column or 1}"
        return self.file


@dataclass(frozen=True)
class DateRange:
    """Inclusive range of calendar days; ``first`` or ``last`` may be open (None)."""

    first: date | None
    last: date | None
    note: str = ""

    def contains(self, day: date) -> bool:
        return (self.first is None or day >= self.first) and (self.last is None or day <= self.last)


@dataclass(frozen=True)
class Window:
    """A weekly window: on each of ``days`` (0 = Monday) from ``start`` to ``end`` minutes.

    ``end`` <= ``start`` means the window crosses midnight and ends on the next day; a
    window from 00:00 to 24:00 (``start`` 0, ``end`` 1440) is a whole day.
    """

    days: frozenset[int]
    start: int
    end: int
    source: Source = Source("")

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start


@dataclass(frozen=True)
class Schedule:
    name: str
    description: str = ""
    always: bool = False
    windows: tuple[Window, ...] = ()
    # When non-empty, windows only start on days inside one of these ranges.
    date_ranges: tuple[DateRange, ...] = ()
    # Exception days (holidays, closures): no window starts on these days.
    closed: tuple[DateRange, ...] = ()
    source: Source = Source("")


@dataclass(frozen=True)
class Key:
    hwid: str  # canonical form, see lockclient.hwid
    description: str = ""
    enabled: bool = True
    valid_from: date | None = None
    valid_until: date | None = None  # inclusive
    source: Source = Source("")


@dataclass(frozen=True)
class Person:
    username: str
    name: str
    email: str | None = None
    enabled: bool = True
    valid_from: date | None = None
    valid_until: date | None = None  # inclusive
    groups: tuple[str, ...] = ()
    keys: tuple[Key, ...] = ()
    source: Source = Source("")


@dataclass(frozen=True)
class AccessRule:
    """Grants a group's members the ``locks`` under ``schedule``."""

    locks: tuple[str, ...]
    schedule: str
    # Members may switch these locks to office mode (held open) while the rule grants access.
    office_mode: bool = False
    source: Source = Source("")


@dataclass(frozen=True)
class Group:
    name: str
    description: str = ""
    enabled: bool = True
    access: tuple[AccessRule, ...] = ()
    source: Source = Source("")


@dataclass(frozen=True)
class BreakGlassKey:
    """A key that opens the lock even when its bundle has expired or the lock is in lockdown."""

    hwid: str
    description: str = ""
    source: Source = Source("")


@dataclass(frozen=True)
class Lock:
    name: str
    timezone: str
    description: str = ""
    enabled: bool = True
    certificate_sha256: str | None = None  # lowercase hex, no separators
    certificate_file: str | None = None  # optional path to the PEM, relative to the repository
    valid_days: int = DEFAULT_VALID_DAYS
    last_seen_precision: int = DEFAULT_LAST_SEEN_PRECISION
    unlock_seconds: int = DEFAULT_UNLOCK_SECONDS
    lockdown: bool = False
    break_glass: tuple[BreakGlassKey, ...] = ()
    source: Source = Source("")


@dataclass
class AccessRepository:
    """A whole validated access repository, keyed by id."""

    root: Path
    people: dict[str, Person] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    locks: dict[str, Lock] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
