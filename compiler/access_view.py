"""Effective access in plain words: who can open which lock, via which group, and when.

The diff, the reports and ``doorlock explain`` all describe access the same way, so the words
live here. Schedules are described in the lock's local time ("Mon–Fri 09:00–18:00"), exactly
as written in the YAML; nothing is converted to UTC.

A grant is effective when the person, the group and the lock are all enabled and the group
exists. Membership and key validity are time limits on top of a grant; they are described
separately because they do not depend on the lock.
"""

from __future__ import annotations

from datetime import date
from typing import NamedTuple

from compiler.model import (
    MINUTES_PER_DAY,
    AccessRepository,
    DateRange,
    Key,
    Person,
    Schedule,
    Window,
)

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
ALWAYS_TEXT = "always"
NEVER_TEXT = "never (no windows)"


def format_minutes(minutes: int) -> str:
    """Format minutes since local midnight as ``HH:MM``; 1440 is ``24:00``."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def describe_days(days: frozenset[int] | set[int]) -> str:
    """Describe weekdays (0 = Monday) compactly: runs of three or more become ``Mon–Fri``."""
    ordered = sorted(days)
    if not ordered:
        return "no days"
    runs: list[list[int]] = []
    for day in ordered:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])

    parts = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"{DAY_NAMES[run[0]]}–{DAY_NAMES[run[-1]]}")
        else:
            parts.extend(DAY_NAMES[day] for day in run)
    return ", ".join(parts)


def describe_window_time(window: Window) -> str:
    text = f"{format_minutes(window.start)}–{format_minutes(window.end)}"
    if window.crosses_midnight and not (window.start == 0 and window.end == 0):
        text += " (next day)"
    return text


def describe_windows(windows: tuple[Window, ...]) -> str:
    """Describe weekly windows, joining windows with the same hours into one day list."""
    by_hours: dict[tuple[int, int], set[int]] = {}
    for window in windows:
        by_hours.setdefault((window.start, window.end), set()).update(window.days)

    parts = []
    ordered = sorted(by_hours.items(), key=lambda item: (min(item[1]), item[0]))
    for (start, end), days in ordered:
        hours = describe_window_time(Window(frozenset(days), start, end))
        parts.append(f"{describe_days(days)} {hours}")
    return ", ".join(parts)


def describe_date_range(date_range: DateRange) -> str:
    if date_range.first == date_range.last and date_range.first is not None:
        text = date_range.first.isoformat()
    elif date_range.first is None:
        text = f"until {date_range.last.isoformat()}" if date_range.last else "all days"
    elif date_range.last is None:
        text = f"from {date_range.first.isoformat()}"
    else:
        text = f"{date_range.first.isoformat()} – {date_range.last.isoformat()}"
    if date_range.note:
        text += f" ({date_range.note})"
    return text


def describe_schedule(schedule: Schedule, include_closed: bool = True) -> str:
    """Describe when a schedule is open, in the lock's local time.

    ``include_closed`` adds the exception days. The diff turns it off and reports changed
    closed days on their own line, so that one added holiday does not repeat the whole week.
    """
    text = ALWAYS_TEXT if schedule.always else describe_windows(schedule.windows) or NEVER_TEXT
    if schedule.date_ranges:
        text += "; only " + ", ".join(describe_date_range(r) for r in schedule.date_ranges)
    if include_closed and schedule.closed:
        text += "; closed " + ", ".join(describe_date_range(r) for r in schedule.closed)
    return text


def describe_closed(schedule: Schedule) -> str:
    return ", ".join(describe_date_range(r) for r in schedule.closed)


def is_always_open(schedule: Schedule) -> bool:
    """True when the schedule opens at every hour of every weekday (closed days aside).

    Windows that together cover the whole week count as always-open too, so writing
    ``always`` as seven 00:00–24:00 windows is still flagged by the diff.
    """
    if schedule.date_ranges:
        return False
    if schedule.always:
        return True

    # Mark every minute of the week that some window covers; a window crossing midnight
    # (or Sunday night) wraps into the next day.
    week = MINUTES_PER_DAY * 7
    covered = bytearray(week)
    for window in schedule.windows:
        length = window.end - window.start
        if length <= 0:
            length += MINUTES_PER_DAY
        for day in window.days:
            begin = day * MINUTES_PER_DAY + window.start
            for minute in range(begin, begin + length):
                covered[minute % week] = 1
    return all(covered)


def describe_validity(valid_from: date | None, valid_until: date | None) -> str:
    """Describe an inclusive validity of calendar days; an empty string means unlimited."""
    if valid_from and valid_until:
        return f"valid {valid_from.isoformat()} – {valid_until.isoformat()}"
    if valid_from:
        return f"valid from {valid_from.isoformat()}"
    if valid_until:
        return f"valid until {valid_until.isoformat()}"
    return ""


def describe_key(key: Key) -> str:
    parts = [key.hwid]
    if key.description:
        parts.append(f"({key.description})")
    if not key.enabled:
        parts.append("disabled")
    validity = describe_validity(key.valid_from, key.valid_until)
    if validity:
        parts.append(validity)
    return " ".join(parts)


class Grant(NamedTuple):
    """One access rule that reaches one person at one lock.

    A named tuple rather than a dataclass, because a large organisation creates hundreds of
    thousands of them.
    """

    username: str
    lock: str
    group: str
    schedule: str  # the schedule's name
    schedule_text: str  # weekly windows and date ranges in plain words (local time)
    closed_text: str  # the schedule's closed days in plain words; empty when there are none
    always_open: bool
    office_mode: bool


class GrantIndex:
    """Compute each group's grants once, so that members of the same group share the work.

    Describing a schedule and deciding whether it is always-open costs far more than a
    lookup, and a large organisation has hundreds of thousands of (person, lock) pairs.
    """

    def __init__(self, repository: AccessRepository):
        self.repository = repository
        self._schedules: dict[str, tuple[str, str, bool]] = {}
        self._groups: dict[str, list[tuple[str, str, bool]]] = {}

    def _schedule(self, name: str) -> tuple[str, str, bool]:
        summary = self._schedules.get(name)
        if summary is None:
            schedule = self.repository.schedules[name]
            summary = (describe_schedule(schedule, include_closed=False), describe_closed(schedule),
                       is_always_open(schedule))
            self._schedules[name] = summary
        return summary

    def _group_rules(self, name: str) -> list[tuple[str, str, bool]]:
        """Return (lock, schedule, office_mode) for every effective rule of an enabled group."""
        rules = self._groups.get(name)
        if rules is not None:
            return rules
        rules = []
        group = self.repository.groups.get(name)
        if group is not None and group.enabled:
            for rule in group.access:
                if rule.schedule not in self.repository.schedules:
                    continue
                for lock_name in rule.locks:
                    lock = self.repository.locks.get(lock_name)
                    if lock is not None and lock.enabled:
                        rules.append((lock_name, rule.schedule, rule.office_mode))
        self._groups[name] = rules
        return rules

    def person_grants(self, person: Person) -> list[Grant]:
        """Return every effective grant of ``person``: enabled group, enabled lock, known schedule.

        A disabled person has no grants. Membership and key validity are not applied here.
        """
        if not person.enabled:
            return []
        grants = []
        for group_name in person.groups:
            for lock_name, schedule_name, office_mode in self._group_rules(group_name):
                text, closed, always = self._schedule(schedule_name)
                grants.append(Grant(
                    username=person.username, lock=lock_name, group=group_name, schedule=schedule_name,
                    schedule_text=text, closed_text=closed, always_open=always, office_mode=office_mode,
                ))
        return grants


def person_grants(repository: AccessRepository, person: Person) -> list[Grant]:
    return GrantIndex(repository).person_grants(person)


def all_grants(repository: AccessRepository) -> list[Grant]:
    index = GrantIndex(repository)
    grants = []
    for username in sorted(repository.people):
        grants.extend(index.person_grants(repository.people[username]))
    return grants


def grants_by_person_and_lock(repository: AccessRepository) -> dict[tuple[str, str], list[Grant]]:
    """Group the effective grants by (username, lock name)."""
    table: dict[tuple[str, str], list[Grant]] = {}
    for grant in all_grants(repository):
        table.setdefault((grant.username, grant.lock), []).append(grant)
    return table


def describe_access(grants: list[Grant]) -> str:
    """Describe the union of several grants at one lock, e.g. ``Mon–Fri 09:00–18:00 via members``."""
    by_text: dict[str, list[str]] = {}
    for grant in grants:
        text = grant.schedule_text + (", office mode" if grant.office_mode else "")
        by_text.setdefault(text, [])
        if grant.group not in by_text[text]:
            by_text[text].append(grant.group)
    parts = [f"{text} via {', '.join(sorted(groups))}" for text, groups in sorted(by_text.items())]
    return "; ".join(parts)


def access_hours(grants: list[Grant]) -> str:
    """Describe only when a set of grants opens, without the groups behind it.

    An always-open grant covers every other grant's hours, so the union is just "always".
    Other schedules could still open on the always schedule's closed days, which the report
    lists with the schedule.
    """
    office = ", office mode" if any(g.office_mode for g in grants) else ""
    if any(g.always_open for g in grants):
        return ALWAYS_TEXT + office
    texts = sorted({g.schedule_text + (", office mode" if g.office_mode else "") for g in grants})
    return "; ".join(texts)
