"""Explain one decision: may this key (or person) open this lock at this instant, and why.

The explanation walks the access semantics in the order the lock applies them and records
one step per check, each pointing at the YAML line behind it:

1. the lock exists and is enabled (a disabled lock gets no bundle);
2. break-glass keys open at any time, also in lockdown;
3. lockdown lets nobody else in;
4. the key is enrolled, enabled and inside its validity;
5. the person is enabled and inside the membership validity;
6. some enabled group of the person has a rule listing the lock whose schedule is open at
   that instant: the window that contains it (judged by the day the window starts on), or
   why none does (closed day, outside the date ranges, no window at that hour).

Local times are the lock's. Days with a daylight-saving change and window times that do not
exist or exist twice on that day are called out, with the rule that applied.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from compiler.access_view import (
    describe_key,
    describe_schedule,
    describe_validity,
    describe_window_time,
    format_minutes,
)
from compiler.expand import expand_schedule, local_date, local_instant, validity_window
from compiler.model import MINUTES_PER_DAY, AccessRepository, Key, Lock, Person, Schedule, Source, Window
from lockclient.hwid import InvalidHardwareId, normalize_hwid

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WHOLE_DAY = Window(frozenset(range(7)), 0, MINUTES_PER_DAY)
# How far ahead "next opening" looks when the schedule is closed now.
LOOKAHEAD_DAYS = 14
# An unknown lock or person lists the known names when there are at most this many.
LIST_KNOWN_MAX = 20


class ExplainError(Exception):
    """A request that cannot be explained: unknown lock or person, or a malformed key or time."""


@dataclass(frozen=True)
class Step:
    """One check: ``passed`` True or False, or None for context that decides nothing."""

    passed: bool | None
    text: str
    source: str = ""


@dataclass
class Explanation:
    lock: str
    instant: int
    local_time: str
    allowed: bool = False
    decision: str = ""
    break_glass: bool = False  # allowed as a break-glass key: the bundle's expiry does not matter
    steps: list[Step] = field(default_factory=list)

    def add(self, passed: bool | None, text: str, source: Source | str = "") -> None:
        self.steps.append(Step(passed, text, str(source)))

    def finish(self, allowed: bool, decision: str) -> Explanation:
        self.allowed = allowed
        self.decision = decision
        return self

    def to_json(self) -> dict:
        return {
            "lock": self.lock,
            "at": datetime.fromtimestamp(self.instant, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "local_time": self.local_time,
            "allowed": self.allowed,
            "decision": self.decision,
            "steps": [{"passed": s.passed, "text": s.text, "source": s.source} for s in self.steps],
        }


def format_local(instant: int, zone_name: str) -> str:
    moment = datetime.fromtimestamp(instant, ZoneInfo(zone_name))
    return f"{DAY_NAMES[moment.weekday()]} {moment:%Y-%m-%d %H:%M:%S %Z} (UTC{moment:%z})"


def parse_instant(text: str, zone_name: str) -> int:
    """Parse ``--at`` into a Unix timestamp in seconds.

    ISO 8601 with an offset or ``Z`` is absolute, and a time without one is the lock's local time.

    A local time without an offset follows the schedule rules: a skipped time maps to the
    transition, a repeated time to its first occurrence.
    """
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ExplainError(f"--at {text!r} is not a valid time; use e.g. 2026-12-04T21:00 (lock time) or 2026-12-04T20:00Z") from None
    if moment.tzinfo is not None:
        return int(moment.timestamp())
    minutes = moment.hour * 60 + moment.minute
    return local_instant(moment.date(), minutes, zone_name) + moment.second


def explain(
    repository: AccessRepository,
    lock_name: str,
    instant: int,
    hwid: str | None = None,
    username: str | None = None,
) -> Explanation:
    """Explain whether ``hwid`` (or any key of ``username``) opens ``lock_name`` at ``instant``."""
    if (hwid is None) == (username is None):
        raise ExplainError("give exactly one of --key HWID or --person USER")
    lock = repository.locks.get(lock_name)
    if lock is None:
        raise ExplainError(not_found("lock", "locks", lock_name, repository.locks))

    result = Explanation(lock.name, instant, format_local(instant, lock.timezone))
    result.add(None, f"lock {lock.name} ({lock.timezone}): {result.local_time}", lock.source)
    _note_dst_day(result, lock, local_date(instant, lock.timezone))

    if not lock.enabled:
        result.add(False, "the lock is disabled: it gets no bundle and opens for nobody", lock.source)
        return result.finish(False, "denied: the lock is disabled")

    if hwid is not None:
        return _explain_key(result, repository, lock, instant, hwid)
    person = repository.people.get(username)
    if person is None:
        raise ExplainError(not_found("person", "people", username, repository.people))
    return _explain_person(result, repository, lock, instant, person)


def not_found(kind: str, kinds: str, name: str, known) -> str:
    """Build the not-found message for ``name``: close names, and the known ones when few."""
    names = sorted(known)
    text = f"{kind} {name!r} not found"
    close = _close_names(name, names)
    if close:
        text += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not names:
        text += f"; the access repository has no {kinds}"
    elif len(names) <= LIST_KNOWN_MAX:
        text += f"; known {kinds}: {', '.join(names)}"
    elif not close:
        text += f"; none of the {len(names)} {kinds} has a similar name"
    return text


def _close_names(name: str, names: list[str], limit: int = 3) -> list[str]:
    """Names that start like ``name`` (also per part: 'clea' finds 'cleaning.crew'), then similar ones."""
    typed = name.lower()
    parts = {n: re.split(r"[._-]", n.lower()) for n in names}
    found = [n for n in names if n.lower().startswith(typed) or any(part.startswith(typed) for part in parts[n])]
    by_part = {part: n for n in names for part in parts[n] if part}
    found += difflib.get_close_matches(name, names, n=limit)
    found += [by_part[part] for part in difflib.get_close_matches(typed, list(by_part), n=limit)]
    return list(dict.fromkeys(found))[:limit]


def _explain_key(result: Explanation, repository: AccessRepository, lock: Lock, instant: int, text: str) -> Explanation:
    try:
        hwid = normalize_hwid(text)
    except InvalidHardwareId as error:
        raise ExplainError(f"--key {text!r} is not a valid hardware id: {error}") from None

    for key in lock.break_glass:
        if key.hwid == hwid:
            label = f" ({key.description})" if key.description else ""
            result.add(True, f"{hwid}{label} is a break-glass key of {lock.name}: it opens at any time, "
                       "also in lockdown and after the bundle expired", key.source)
            result.break_glass = True
            return result.finish(True, "allowed: break-glass key")

    if lock.lockdown:
        result.add(False, f"{lock.name} is in lockdown: only break-glass keys open", lock.source)
        return result.finish(False, "denied: lockdown")

    for person in repository.people.values():
        for key in person.keys:
            if key.hwid == hwid:
                result.add(None, f"key {describe_key(key)} belongs to {person.username} ({person.name})", key.source)
                return _explain_holder(result, repository, lock, instant, person, [key])

    result.add(False, f"key {hwid} is not enrolled: no person in the access repository has it")
    return result.finish(False, "denied: unknown key")


def _explain_person(result: Explanation, repository: AccessRepository, lock: Lock, instant: int, person: Person) -> Explanation:
    break_glass = {k.hwid for k in lock.break_glass}
    for key in person.keys:
        if key.hwid in break_glass:
            result.add(True, f"{person.username}'s key {key.hwid} is a break-glass key of {lock.name}: "
                       "it opens at any time", key.source)
            result.break_glass = True
            return result.finish(True, "allowed: break-glass key")
    if lock.lockdown:
        result.add(False, f"{lock.name} is in lockdown: only break-glass keys open", lock.source)
        return result.finish(False, "denied: lockdown")
    if not person.keys:
        result.add(False, f"{person.username} has no keys", person.source)
        return result.finish(False, "denied: the person has no keys")
    return _explain_holder(result, repository, lock, instant, person, list(person.keys))


def _explain_holder(
    result: Explanation, repository: AccessRepository, lock: Lock, instant: int, person: Person, keys: list[Key],
) -> Explanation:
    usable = [key for key in keys if _check_key(result, lock, instant, key)]
    person_ok = _check_person(result, lock, instant, person)
    schedule_ok = _check_groups(result, repository, lock, instant, person)

    if not usable:
        return result.finish(False, "denied: no usable key (disabled or outside its validity)")
    if not person_ok:
        reason = "is disabled" if not person.enabled else "is outside the membership validity"
        return result.finish(False, f"denied: {person.username} {reason}")
    if not schedule_ok:
        return result.finish(False, f"denied: no rule of {person.username}'s groups opens {lock.name} at this time")
    keys_text = ", ".join(key.hwid for key in usable)
    return result.finish(True, f"allowed: {person.username} with key {keys_text}")


def _within(lock: Lock, instant: int, valid_from: date | None, valid_until: date | None) -> bool:
    start, end = validity_window(lock.timezone, valid_from, valid_until, instant - 1, instant + 1)
    return start <= instant < end


def _check_key(result: Explanation, lock: Lock, instant: int, key: Key) -> bool:
    if not key.enabled:
        result.add(False, f"key {key.hwid} is disabled", key.source)
        return False
    validity = describe_validity(key.valid_from, key.valid_until)
    if validity and not _within(lock, instant, key.valid_from, key.valid_until):
        result.add(False, f"key {key.hwid} is {validity} (days in {lock.timezone}): not at this time", key.source)
        return False
    result.add(True, f"key {key.hwid} is enabled" + (f" and {validity}" if validity else ""), key.source)
    return True


def _check_person(result: Explanation, lock: Lock, instant: int, person: Person) -> bool:
    if not person.enabled:
        result.add(False, f"{person.username} is disabled", person.source)
        return False
    validity = describe_validity(person.valid_from, person.valid_until)
    if validity and not _within(lock, instant, person.valid_from, person.valid_until):
        result.add(False, f"{person.username}'s membership is {validity} (days in {lock.timezone}): not at this time",
                   person.source)
        return False
    result.add(True, f"{person.username} is enabled" + (f", membership {validity}" if validity else ""), person.source)
    return True


def _check_groups(result: Explanation, repository: AccessRepository, lock: Lock, instant: int, person: Person) -> bool:
    if not person.groups:
        result.add(False, f"{person.username} is in no group", person.source)
        return False

    open_now = False
    for group_name in person.groups:
        group = repository.groups.get(group_name)
        if group is None:
            result.add(False, f"group {group_name} does not exist", person.source)
            continue
        if not group.enabled:
            result.add(False, f"group {group_name} is disabled: it grants nothing", group.source)
            continue
        rules = [rule for rule in group.access if lock.name in rule.locks]
        if not rules:
            result.add(None, f"group {group_name} has no rule for {lock.name}", group.source)
            continue
        for rule in rules:
            schedule = repository.schedules.get(rule.schedule)
            if schedule is None:
                result.add(False, f"group {group_name}: schedule {rule.schedule} does not exist", rule.source)
                continue
            prefix = f"group {group_name} grants {lock.name} under schedule {schedule.name} ({describe_schedule(schedule)})"
            if _check_schedule(result, prefix, lock, instant, schedule, rule.source):
                open_now = True
    return open_now


def _check_schedule(result: Explanation, prefix: str, lock: Lock, instant: int, schedule: Schedule, source: Source) -> bool:
    """Add the step for one rule's schedule at ``instant``; return whether it is open."""
    zone = lock.timezone
    today = local_date(instant, zone)
    blocked: list[str] = []
    windows = (_WHOLE_DAY,) if schedule.always else schedule.windows

    # A window belongs to the day it starts on and lasts at most a day, so only windows starting
    # yesterday or today can contain the instant.
    for day in (today - timedelta(days=1), today):
        for window in windows:
            if day.weekday() not in window.days:
                continue
            start = local_instant(day, window.start, zone)
            end_day = day + timedelta(days=1) if window.crosses_midnight else day
            end = local_instant(end_day, window.end, zone)
            if not start <= instant < end:
                continue
            shown = f"{DAY_NAMES[day.weekday()]} {describe_window_time(window)}"
            reason = _day_blocked(schedule, day)
            if reason:
                blocked.append(f"the window {shown} would cover this time, but {reason}")
                continue
            result.add(True, f"{prefix}: open, inside the window {shown} that started on {day.isoformat()} "
                       f"({_span(start, end, zone)})", window.source if window.source.file else source)
            _note_dst_times(result, day, window, zone)
            return True

    detail = "; ".join(blocked) if blocked else f"no window covers {DAY_NAMES[today.weekday()]} " \
        f"{datetime.fromtimestamp(instant, ZoneInfo(zone)):%H:%M}"
    result.add(False, f"{prefix}: closed, {detail}{_next_opening(schedule, zone, instant)}", source)
    return False


def _day_blocked(schedule: Schedule, day: date) -> str:
    for closed in schedule.closed:
        if closed.contains(day):
            note = f" ({closed.note})" if closed.note else ""
            return f"{day.isoformat()} is a closed day{note}, and a window judged by its start day does not run"
    if schedule.date_ranges and not any(r.contains(day) for r in schedule.date_ranges):
        return f"{day.isoformat()} is outside the schedule's date ranges"
    return ""


def _span(start: int, end: int, zone: str) -> str:
    first = datetime.fromtimestamp(start, ZoneInfo(zone))
    last = datetime.fromtimestamp(end, ZoneInfo(zone))
    return f"{first:%Y-%m-%d %H:%M %Z} until {last:%Y-%m-%d %H:%M %Z}"


def _next_opening(schedule: Schedule, zone: str, instant: int) -> str:
    bounds = expand_schedule(schedule, zone, instant, instant + LOOKAHEAD_DAYS * 86400)
    if not bounds:
        return f"; it does not open in the next {LOOKAHEAD_DAYS} days"
    return f"; next opens {format_local(bounds[0], zone)}"


def _note_dst_day(result: Explanation, lock: Lock, day: date) -> None:
    zone = ZoneInfo(lock.timezone)
    start = datetime(day.year, day.month, day.day, tzinfo=zone).utcoffset()
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=zone).utcoffset()
    if start != end:
        direction = "forward" if end > start else "back"
        result.add(None, f"daylight saving: clocks in {lock.timezone} go {direction} on {day.isoformat()}; "
                   "a local time that does not exist maps to the transition, a repeated one to its first occurrence")


def _note_dst_times(result: Explanation, day: date, window: Window, zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    end_day = day + timedelta(days=1) if window.crosses_midnight else day
    for which, on_day, minutes in (("start", day, window.start), ("end", end_day, window.end)):
        if minutes >= MINUTES_PER_DAY:
            continue
        naive = datetime(on_day.year, on_day.month, on_day.day) + timedelta(minutes=minutes)
        instant = local_instant(on_day, minutes, zone_name)
        shown = datetime.fromtimestamp(instant, zone).replace(tzinfo=None)
        if shown != naive:
            result.add(None, f"the window's {which} {format_minutes(minutes)} does not exist on {on_day.isoformat()} "
                       f"(clocks go forward); it counts from {shown:%H:%M}")
        elif naive.replace(tzinfo=zone, fold=0).utcoffset() != naive.replace(tzinfo=zone, fold=1).utcoffset():
            result.add(None, f"the window's {which} {format_minutes(minutes)} occurs twice on {on_day.isoformat()} "
                       "(clocks go back); the first occurrence counts")


def format_text(explanation: Explanation) -> str:
    marks = {True: "ok ", False: "no ", None: "   "}
    verdict, _, reason = explanation.decision.partition(": ")
    lines = [f"{verdict.upper()}: {reason}", ""]
    for step in explanation.steps:
        source = f"  [{step.source}]" if step.source else ""
        lines.append(f"{marks[step.passed]} {step.text}{source}")
    if explanation.break_glass:
        lines.append("")
        lines.append("A break-glass key is in every bundle of this lock: it opens even when the bundle has expired.")
    elif explanation.allowed:
        lines.append("")
        lines.append("The lock decides from its bundle: it also needs a bundle that has not expired.")
    return "\n".join(lines) + "\n"
