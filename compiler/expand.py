"""Expand time rules into absolute UTC intervals, one list per key and lock.

Steps, for a bundle valid over ``[issued_at, expires_at)``:

1. Each (schedule, lock time zone) pair is expanded once: every local day that can touch the
   validity window, its windows (judged by the day they start on, against ``date_ranges`` and
   ``closed``) turned into instants with :func:`local_instant`.
2. A person's enabled groups give, per lock, the set of schedules that apply. The union of a
   schedule set is computed once per (lock time zone, set) and shared.
3. Each enabled key of an enabled person gets that union restricted to the intersection of the
   person's and the key's validity (local days of the lock). Keys without restrictions share the
   union's list object, so identical lists cost nothing.

Interval lists are flat ``[start0, end0, start1, end1, ...]`` in Unix seconds: half-open,
merged (touching intervals joined) and clipped to the bundle's validity. Keys with no opening
time at all in the window are left out. Returned lists are shared between keys and must not be
modified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from compiler.model import AccessRepository, Lock, MINUTES_PER_DAY, Person, Schedule, Window

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400
_EPOCH = datetime(1970, 1, 1)
_WHOLE_DAY = (Window(frozenset(range(7)), 0, MINUTES_PER_DAY),)

Bounds = list[int]


@lru_cache(maxsize=None)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _wall_time(instant: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(instant, timezone.utc).astimezone(zone).replace(tzinfo=None)


def _instant_with_fold(naive: datetime, zone: ZoneInfo, fold: int) -> int:
    offset = naive.replace(tzinfo=zone, fold=fold).utcoffset()
    return int((naive - _EPOCH - offset).total_seconds())


@lru_cache(maxsize=65536)
def local_instant(day: date, minutes: int, zone_name: str) -> int:
    """Turn local ``day`` plus ``minutes`` since its midnight into Unix seconds.

    A local time that exists twice (autumn) maps to its first occurrence. A local time that
    does not exist (spring gap) maps to the transition instant: the first instant whose local
    time is later than it. ``minutes`` may be 1440 (the next midnight).
    """
    zone = _zone(zone_name)
    naive = datetime(day.year, day.month, day.day) + timedelta(minutes=minutes)

    # fold=0 gives the first occurrence of a repeated time. For a skipped time it applies the
    # offset from before the gap, which lands after the transition.
    after = _instant_with_fold(naive, zone, 0)
    if _wall_time(after, zone) == naive:
        return after

    # Skipped time: fold=1 applies the offset from after the gap and lands before the
    # transition. Between the two the local clock only moves forward, so bisect for the first
    # instant that shows ``naive`` or later.
    before = _instant_with_fold(naive, zone, 1)
    while after - before > 1:
        middle = (before + after) // 2
        if _wall_time(middle, zone) >= naive:
            after = middle
        else:
            before = middle
    return after


def local_date(instant: int, zone_name: str) -> date:
    """Return the calendar day in the zone at ``instant``."""
    return _wall_time(instant, _zone(zone_name)).date()


def merge(pairs: list[tuple[int, int]], low: int, high: int) -> Bounds:
    """Merge half-open (start, end) pairs, joining overlapping or touching ones, clipped to [low, high)."""
    bounds: Bounds = []
    for start, end in sorted(pairs):
        start = max(start, low)
        end = min(end, high)
        if end <= start:
            continue
        if bounds and start <= bounds[-1]:
            if end > bounds[-1]:
                bounds[-1] = end
        else:
            bounds.extend((start, end))
    return bounds


def clip(bounds: Bounds, low: int, high: int) -> Bounds:
    """Restrict merged bounds to [low, high)."""
    if not bounds or (low <= bounds[0] and bounds[-1] <= high):
        return bounds
    return merge(list(zip(bounds[0::2], bounds[1::2])), low, high)


def _day_runs(schedule: Schedule, day: date) -> bool:
    if schedule.date_ranges and not any(allowed.contains(day) for allowed in schedule.date_ranges):
        return False
    return not any(closed.contains(day) for closed in schedule.closed)


def expand_schedule(schedule: Schedule, zone_name: str, low: int, high: int) -> Bounds:
    """Expand one schedule in one time zone into merged bounds within [low, high)."""
    windows = _WHOLE_DAY if schedule.always else schedule.windows
    # A window lasts at most a day, so it can reach ``low`` only if it starts on low's local day
    # or the day before. One more day on each side absorbs offset changes.
    first_day = local_date(low, zone_name) - timedelta(days=2)
    last_day = local_date(high, zone_name) + timedelta(days=1)

    pairs = []
    day = first_day
    while day <= last_day:
        if _day_runs(schedule, day):
            weekday = day.weekday()
            for window in windows:
                if weekday not in window.days:
                    continue
                start = local_instant(day, window.start, zone_name)
                end_day = day + timedelta(days=1) if window.crosses_midnight else day
                end = local_instant(end_day, window.end, zone_name)
                if end > start:
                    pairs.append((start, end))
        day += timedelta(days=1)
    return merge(pairs, low, high)


def validity_window(
    zone_name: str, valid_from: date | None, valid_until: date | None, low: int, high: int
) -> tuple[int, int]:
    """Return [start, end) of a validity given in local days (``valid_until`` inclusive), within [low, high)."""
    start = low if valid_from is None else max(low, local_instant(valid_from, 0, zone_name))
    end = high if valid_until is None else min(high, local_instant(valid_until + timedelta(days=1), 0, zone_name))
    return start, end


@dataclass
class LockAccess:
    """Grants of one lock's bundle: keys and office-mode keys with their bounds."""

    lock: Lock
    issued_at: int
    expires_at: int
    keys: dict[str, Bounds] = field(default_factory=dict)
    office_mode: dict[str, Bounds] = field(default_factory=dict)


class _Expander:
    """Caches shared by all locks of one expansion run."""

    def __init__(self, repository: AccessRepository, locks: dict[str, Lock], windows: dict[str, tuple[int, int]],
                 result: dict[str, LockAccess]):
        self.repository = repository
        self.result = result
        self.locks = locks
        self.windows = windows
        self._schedule_cache: dict[tuple, Bounds] = {}
        self._union_cache: dict[tuple, Bounds] = {}
        self._plan_cache: dict[tuple[str, ...], list[tuple]] = {}
        self._group_grants = {name: self._grants_of_group(name) for name in repository.groups}

    def _grants_of_group(self, name: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        group = self.repository.groups[name]
        access: dict[str, set[str]] = {}
        office: dict[str, set[str]] = {}
        if not group.enabled:
            return access, office
        for rule in group.access:
            if rule.schedule not in self.repository.schedules:
                log.warning("group %s refers to unknown schedule %s; the rule grants nothing", name, rule.schedule)
                continue
            for lock_name in rule.locks:
                if lock_name not in self.locks:
                    continue  # disabled or unknown lock
                access.setdefault(lock_name, set()).add(rule.schedule)
                if rule.office_mode:
                    office.setdefault(lock_name, set()).add(rule.schedule)
        return access, office

    def grants_of_person(self, person: Person) -> tuple[dict[str, frozenset], dict[str, frozenset]]:
        """Return lock -> schedule names, for access and for office mode, from the person's groups."""
        access: dict[str, set[str]] = {}
        office: dict[str, set[str]] = {}
        for name in set(person.groups):
            if name not in self._group_grants:
                continue
            group_access, group_office = self._group_grants[name]
            for lock_name, schedules in group_access.items():
                access.setdefault(lock_name, set()).update(schedules)
            for lock_name, schedules in group_office.items():
                office.setdefault(lock_name, set()).update(schedules)
        return (
            {lock_name: frozenset(names) for lock_name, names in access.items()},
            {lock_name: frozenset(names) for lock_name, names in office.items()},
        )

    def _schedule_bounds(self, schedule_name: str, zone_name: str, low: int, high: int) -> Bounds:
        cache_key = (schedule_name, zone_name, low, high)
        bounds = self._schedule_cache.get(cache_key)
        if bounds is None:
            bounds = expand_schedule(self.repository.schedules[schedule_name], zone_name, low, high)
            self._schedule_cache[cache_key] = bounds
        return bounds

    def union_bounds(self, lock: Lock, schedule_names: frozenset) -> Bounds:
        """Return the merged bounds of several schedules at ``lock``, computed once per zone and set."""
        low, high = self.windows[lock.name]
        cache_key = (schedule_names, lock.timezone, low, high)
        bounds = self._union_cache.get(cache_key)
        if bounds is None:
            lists = [self._schedule_bounds(name, lock.timezone, low, high) for name in sorted(schedule_names)]
            if len(lists) == 1:
                bounds = lists[0]
            else:
                pairs = [pair for each in lists for pair in zip(each[0::2], each[1::2])]
                bounds = merge(pairs, low, high)
            self._union_cache[cache_key] = bounds
        return bounds

    def plan_of_person(self, person: Person) -> list[tuple]:
        """Return (target map, union bounds, low, high, zone) per non-empty grant of the person's groups.

        The plan depends only on the set of groups, so people with the same groups share it.
        """
        groups = tuple(sorted(set(person.groups)))
        plan = self._plan_cache.get(groups)
        if plan is not None:
            return plan
        access, office = self.grants_of_person(person)
        plan = []
        for target_name, grants in (("keys", access), ("office_mode", office)):
            for lock_name, schedule_names in sorted(grants.items()):
                lock = self.locks[lock_name]
                union = self.union_bounds(lock, schedule_names)
                if union:
                    target = getattr(self.result[lock_name], target_name)
                    plan.append((target, union, *self.windows[lock_name], lock.timezone))
        self._plan_cache[groups] = plan
        return plan


def _add_key(target: dict[str, Bounds], hwid: str, bounds: Bounds, low: int, high: int) -> None:
    existing = target.get(hwid)
    if existing is None:
        target[hwid] = bounds
        return
    # The loader rejects a hardware id used twice; should one slip through, its grants add up.
    log.warning("hardware id %s… appears more than once; its opening times are combined", hwid[:8])
    pairs = list(zip(existing[0::2], existing[1::2])) + list(zip(bounds[0::2], bounds[1::2]))
    target[hwid] = merge(pairs, low, high)


def _bundle_windows(
    locks: dict[str, Lock], issued_at: int, expires_at: int | dict[str, int] | None
) -> dict[str, tuple[int, int]]:
    windows = {}
    for name, lock in locks.items():
        if expires_at is None:
            end = issued_at + lock.valid_days * SECONDS_PER_DAY
        elif isinstance(expires_at, dict):
            end = expires_at[name]
        else:
            end = expires_at
        windows[name] = (issued_at, end)
    return windows


def expand_locks(
    repository: AccessRepository, issued_at: int, expires_at: int | dict[str, int] | None = None
) -> dict[str, LockAccess]:
    """Expand every enabled lock's access over [issued_at, expires_at).

    ``expires_at`` is one instant for all locks, a dict per lock name, or None for each lock's
    ``issued_at + valid_days``. Disabled locks are left out: they get no bundle.
    """
    locks = {name: lock for name, lock in sorted(repository.locks.items()) if lock.enabled}
    windows = _bundle_windows(locks, issued_at, expires_at)
    result = {name: LockAccess(lock, *windows[name]) for name, lock in locks.items()}
    expander = _Expander(repository, locks, windows, result)

    for person in repository.people.values():
        keys = [key for key in person.keys if key.enabled] if person.enabled else []
        plan = expander.plan_of_person(person) if keys else []
        if not plan:
            continue

        if _unrestricted(person, keys):
            # The common case: every grant is the shared union list itself.
            hwids = [key.hwid for key in keys]
            for target, union, low, high, _ in plan:
                for hwid in hwids:
                    if hwid in target:
                        _add_key(target, hwid, union, low, high)
                    else:
                        target[hwid] = union
            continue

        for target, union, low, high, zone_name in plan:
            person_start, person_end = validity_window(zone_name, person.valid_from, person.valid_until, low, high)
            for key in keys:
                key_start, key_end = validity_window(zone_name, key.valid_from, key.valid_until, low, high)
                start, end = max(person_start, key_start), min(person_end, key_end)
                if end <= start:
                    continue
                bounds = union if (start, end) == (low, high) else clip(union, start, end)
                if bounds:
                    _add_key(target, key.hwid, bounds, low, high)
    return result


def _unrestricted(person: Person, keys: list) -> bool:
    if person.valid_from is not None or person.valid_until is not None:
        return False
    return all(key.valid_from is None and key.valid_until is None for key in keys)


def expand_repository(
    repository: AccessRepository, issued_at: int, expires_at: int | dict[str, int] | None = None
) -> dict[str, dict[str, Bounds]]:
    """Return, per enabled lock, hardware id -> ``[start0, end0, ...]`` in Unix seconds.

    See :func:`expand_locks` for ``expires_at``. The lists are shared: do not modify them.
    """
    return {name: access.keys for name, access in expand_locks(repository, issued_at, expires_at).items()}
