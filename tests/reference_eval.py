"""An independent evaluation of the access rules at one instant, for checking the compiler.

Written from the documented semantics alone (docs/access-format.md, "Access semantics"), not
from :mod:`compiler.expand`: it looks at one instant, finds the local days whose windows could
cover it and checks each rule directly. Slow, simple, and easy to check by reading.

Daylight saving, as documented: a local time maps to the first instant at which the lock's
clock shows that time. A repeated time therefore maps to its first occurrence, and a skipped
time to the transition instant (the first instant the clock shows a later time).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from compiler.model import AccessRepository, Lock, Person, Key, Schedule, Window

_WHOLE_DAY = Window(frozenset(range(7)), 0, 24 * 60)


def wall_clock(instant: int, zone_name: str) -> datetime:
    """Return what the lock's clock shows at ``instant``, as a naive datetime."""
    return datetime.fromtimestamp(instant, timezone.utc).astimezone(ZoneInfo(zone_name)).replace(tzinfo=None)


@lru_cache(maxsize=None)
def first_instant_showing(naive: datetime, zone_name: str) -> int:
    """Return the first instant at which the clock in ``zone_name`` shows ``naive`` or later."""
    zone = ZoneInfo(zone_name)
    as_utc = int(naive.replace(tzinfo=timezone.utc).timestamp())
    candidates = sorted({
        as_utc - int(naive.replace(tzinfo=zone, fold=fold).utcoffset().total_seconds()) for fold in (0, 1)
    })
    exact = [candidate for candidate in candidates if wall_clock(candidate, zone_name) == naive]
    if exact:
        return min(exact)

    # The time falls into a gap: walk forward from the earliest candidate, first by minutes,
    # then by seconds, to the instant the clock jumps past it.
    instant = candidates[0]
    while wall_clock(instant, zone_name) < naive:
        instant += 60
    while wall_clock(instant - 1, zone_name) >= naive:
        instant -= 1
    return instant


def local_moment(day: date, minutes: int, zone_name: str) -> int:
    return first_instant_showing(datetime(day.year, day.month, day.day) + timedelta(minutes=minutes), zone_name)


def within_days(valid_from: date | None, valid_until: date | None, zone_name: str, instant: int) -> bool:
    """Apply a validity given in local calendar days, ``valid_until`` inclusive."""
    if valid_from is not None and instant < local_moment(valid_from, 0, zone_name):
        return False
    if valid_until is not None and instant >= local_moment(valid_until + timedelta(days=1), 0, zone_name):
        return False
    return True


def schedule_runs_on(schedule: Schedule, day: date) -> bool:
    if schedule.date_ranges and not any(part.contains(day) for part in schedule.date_ranges):
        return False
    return not any(part.contains(day) for part in schedule.closed)


def schedule_open(schedule: Schedule, zone_name: str, instant: int) -> bool:
    """Return True when a window of ``schedule`` covers ``instant``.

    A window lasts at most 24 hours of local time, so only windows starting on the day of
    ``instant`` or the two days before can cover it.
    """
    today = wall_clock(instant, zone_name).date()
    windows = (_WHOLE_DAY,) if schedule.always else schedule.windows
    for back in (2, 1, 0):
        day = today - timedelta(days=back)
        if not schedule_runs_on(schedule, day):
            continue
        for window in windows:
            if day.weekday() not in window.days:
                continue
            start = local_moment(day, window.start, zone_name)
            end_day = day + timedelta(days=1) if window.end <= window.start else day
            end = local_moment(end_day, window.end, zone_name)
            if start <= instant < end:
                return True
    return False


def _holders(repository: AccessRepository, hwid: str) -> list[tuple[Person, Key]]:
    return [(person, key) for person in repository.people.values() for key in person.keys if key.hwid == hwid]


def _rule_grants(repository: AccessRepository, lock: Lock, person: Person, key: Key, instant: int,
                 office_mode: bool) -> bool:
    if not (person.enabled and key.enabled):
        return False
    if not within_days(person.valid_from, person.valid_until, lock.timezone, instant):
        return False
    if not within_days(key.valid_from, key.valid_until, lock.timezone, instant):
        return False
    for group_name in person.groups:
        group = repository.groups.get(group_name)
        if group is None or not group.enabled:
            continue
        for rule in group.access:
            if lock.name not in rule.locks or (office_mode and not rule.office_mode):
                continue
            schedule = repository.schedules.get(rule.schedule)
            if schedule is not None and schedule_open(schedule, lock.timezone, instant):
                return True
    return False


def key_opens(repository: AccessRepository, lock_name: str, hwid: str, instant: int) -> bool:
    """Return True when ``hwid`` opens ``lock_name`` at ``instant`` (bundle expiry aside)."""
    lock = repository.locks[lock_name]
    if not lock.enabled:
        return False
    if any(key.hwid == hwid for key in lock.break_glass):
        return True
    if lock.lockdown:
        return False
    return any(_rule_grants(repository, lock, person, key, instant, False)
               for person, key in _holders(repository, hwid))


def office_mode_allowed(repository: AccessRepository, lock_name: str, hwid: str, instant: int) -> bool:
    """Return True when ``hwid`` may hold ``lock_name`` open (office mode) at ``instant``."""
    lock = repository.locks[lock_name]
    if not lock.enabled:
        return False
    return any(_rule_grants(repository, lock, person, key, instant, True)
               for person, key in _holders(repository, hwid))
