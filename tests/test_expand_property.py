"""The compiled bundle decides every tap like an independent reading of the rules.

Random small organisations are compiled and signed, the bundles verified as a lock does, and
``decide`` compared with :mod:`tests.reference_eval` at every quarter hour of the bundle's
validity and one second before it. All local times and offsets in the zones used here are
whole quarter hours, so every interval boundary (and every DST transition) is hit exactly.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from compiler.model import AccessRepository, AccessRule, BreakGlassKey, DateRange, Group, Key, Lock, Person, Schedule, Window
from lockclient.bundle import decide, office_mode_until
from tests import reference_eval
from tests.bundle_fixtures import DAY, compile_verified, make_trust

# Days with a DST change in each zone (2026); UTC gets ordinary days.
DST_DAYS = {
    "Europe/Amsterdam": [date(2026, 3, 29), date(2026, 10, 25)],
    "America/New_York": [date(2026, 3, 8), date(2026, 11, 1)],
    "Australia/Lord_Howe": [date(2026, 4, 5), date(2026, 10, 4)],  # 30-minute shift
    "UTC": [date(2026, 1, 1), date(2026, 6, 15)],
}
ZONES = sorted(DST_DAYS)
# Times of day around midnight and the hours clocks skip or repeat are drawn more often.
SPECIAL_MINUTES = [0, 60, 120, 135, 150, 165, 180, 1425]
TRUST = make_trust(issued_at=int(datetime(2025, 12, 1, tzinfo=timezone.utc).timestamp()), days=800)


def minutes_of_day(upper: int):
    return st.one_of(st.sampled_from([m for m in SPECIAL_MINUTES if m <= upper]),
                     st.integers(0, upper // 15).map(lambda quarter: quarter * 15))


@st.composite
def windows(draw):
    start = draw(minutes_of_day(1425))
    end = draw(minutes_of_day(1440).filter(lambda value: value != start))
    every_day = frozenset(range(7))
    days = every_day if draw(st.booleans()) else draw(st.frozensets(st.integers(0, 6), min_size=1))
    return Window(days, start, end)


def near(anchor: date):
    return st.integers(-4, 4).map(lambda offset: anchor + timedelta(days=offset))


@st.composite
def date_ranges(draw, anchor: date):
    first = draw(st.none() | near(anchor))
    last = draw(st.none() | near(anchor))
    if first is not None and last is not None and last < first:
        first, last = last, first
    return DateRange(first, last)


@st.composite
def schedules(draw, name: str, anchor: date):
    always = draw(st.integers(0, 4)) == 0
    return Schedule(
        name,
        always=always,
        windows=() if always else tuple(draw(st.lists(windows(), min_size=1, max_size=3))),
        date_ranges=(draw(date_ranges(anchor)),) if draw(st.integers(0, 3)) == 0 else (),
        closed=tuple(DateRange(day, day) for day in draw(st.lists(near(anchor), max_size=2))),
    )


@st.composite
def maybe_date(draw, anchor: date):
    # Mostly no limit, so that most keys have something to open.
    return draw(near(anchor)) if draw(st.integers(0, 3)) == 0 else None


@st.composite
def organisations(draw):
    main_zone = draw(st.sampled_from(ZONES))
    anchor = draw(st.sampled_from(DST_DAYS[main_zone]))
    lock_names = ["lock-a", "lock-b"][: draw(st.integers(1, 2))]
    schedule_names = [f"schedule-{n}" for n in range(draw(st.integers(1, 3)))]
    group_names = [f"group-{n}" for n in range(draw(st.integers(1, 3)))]

    locks = {
        name: Lock(
            name, main_zone if draw(st.integers(0, 3)) else draw(st.sampled_from(ZONES)),
            enabled=draw(st.integers(0, 9)) > 0,
            valid_days=draw(st.sampled_from([1, 2, 3, 3])),
            lockdown=draw(st.integers(0, 9)) == 0,
            break_glass=(BreakGlassKey(f"04:ff:00:00:00:00:{index:02x}"),) if draw(st.booleans()) else (),
        )
        for index, name in enumerate(lock_names)
    }
    schedule_map = {name: draw(schedules(name, anchor)) for name in schedule_names}
    groups = {
        name: Group(
            name,
            enabled=draw(st.integers(0, 6)) > 0,
            access=tuple(
                AccessRule(
                    tuple(draw(st.lists(st.sampled_from(lock_names), min_size=1, unique=True))),
                    draw(st.sampled_from(schedule_names)),
                    office_mode=draw(st.booleans()),
                )
                for _ in range(draw(st.integers(1, 2)))
            ),
        )
        for name in group_names
    }
    people = {}
    for person_index in range(draw(st.integers(1, 4))):
        keys = tuple(
            Key(f"04:00:00:00:00:{person_index:02x}:{key_index:02x}",
                enabled=draw(st.integers(0, 6)) > 0,
                valid_from=draw(maybe_date(anchor)), valid_until=draw(maybe_date(anchor)))
            for key_index in range(draw(st.integers(1, 2)))
        )
        username = f"person-{person_index}"
        people[username] = Person(
            username, username,
            enabled=draw(st.integers(0, 6)) > 0,
            valid_from=draw(maybe_date(anchor)), valid_until=draw(maybe_date(anchor)),
            groups=tuple(draw(st.lists(st.sampled_from(group_names), min_size=1, unique=True))),
            keys=keys,
        )

    repository = AccessRepository(Path("generated"), people, groups, locks, schedule_map)
    # Issue up to a day and a half before the anchor day, at any quarter hour, so that most
    # bundles cover the DST change.
    anchor_midnight = int(datetime(anchor.year, anchor.month, anchor.day, tzinfo=timezone.utc).timestamp())
    issued_at = anchor_midnight - draw(st.integers(0, 144)) * 900
    return repository, issued_at


def all_hwids(repository: AccessRepository) -> list[str]:
    hwids = {key.hwid for person in repository.people.values() for key in person.keys}
    hwids |= {key.hwid for lock in repository.locks.values() for key in lock.break_glass}
    return sorted(hwids) + ["04:de:ad:be:ef:00:01"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(organisations())
def test_decisions_match_reference(case):
    repository, issued_at = case
    build, bundles = compile_verified(repository, TRUST, now=issued_at)

    for lock_name, lock in repository.locks.items():
        if not lock.enabled:
            assert lock_name not in build.bundles, "a disabled lock must get no bundle"
            continue
        bundle = bundles[lock_name]
        assert bundle.issued_at == issued_at
        assert bundle.expires_at == issued_at + lock.valid_days * DAY
        for instant in range(issued_at, bundle.expires_at, 900):
            for probe in (instant, instant - 1):
                if probe < issued_at:
                    continue
                for hwid in all_hwids(repository):
                    expected = reference_eval.key_opens(repository, lock_name, hwid, probe)
                    actual = decide(bundle, hwid, probe)
                    assert actual.allowed == expected, (lock_name, hwid, probe, actual)
                    expected_office = reference_eval.office_mode_allowed(repository, lock_name, hwid, probe)
                    assert (office_mode_until(bundle, hwid, probe) is not None) == expected_office, (
                        "office mode", lock_name, hwid, probe)


def _utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


def _single_window_repository(zone: str, start: int, end: int, days=frozenset(range(7))) -> AccessRepository:
    return AccessRepository(
        Path("fixed"),
        people={"p": Person("p", "P", groups=("g",), keys=(Key("04:00:00:00:00:00:01"),))},
        groups={"g": Group("g", access=(AccessRule(("door",), "s"),))},
        locks={"door": Lock("door", zone, valid_days=3)},
        schedules={"s": Schedule("s", windows=(Window(days, start, end),))},
    )


def test_repeated_hour_window_opens_once():
    # 02:15-02:45 on the day Amsterdam repeats 02:00-03:00 (2026-10-25): only the first pass.
    repository = _single_window_repository("Europe/Amsterdam", 135, 165)
    build, bundles = compile_verified(repository, TRUST, now=_utc("2026-10-24T12:00:00"))
    bounds = bundles["door"].intervals[bundles["door"].keys["04:00:00:00:00:00:01"]]
    first_pass = [_utc("2026-10-25T00:15:00"), _utc("2026-10-25T00:45:00")]
    assert first_pass[0] in bounds
    assert first_pass[1] in bounds
    assert _utc("2026-10-25T01:15:00") not in bounds


def test_skipped_hour_window_starts_at_transition():
    # 02:30-04:00 on the day New York skips 02:00-03:00 (2026-03-08): opens at 03:00 EDT.
    repository = _single_window_repository("America/New_York", 150, 240)
    build, bundles = compile_verified(repository, TRUST, now=_utc("2026-03-07T12:00:00"))
    bounds = bundles["door"].intervals[bundles["door"].keys["04:00:00:00:00:00:01"]]
    assert [_utc("2026-03-08T07:00:00"), _utc("2026-03-08T08:00:00")] == bounds[0:2]


def test_window_inside_skipped_hour_dropped():
    # 02:15-02:45 does not exist on 2026-03-29 in Amsterdam: both ends map to 03:00, nothing opens.
    repository = _single_window_repository("Europe/Amsterdam", 135, 165, days=frozenset({6}))
    build, bundles = compile_verified(repository, TRUST, now=_utc("2026-03-27T12:00:00"))
    assert "04:00:00:00:00:00:01" not in bundles["door"].keys


def _closed_saturday_repository() -> AccessRepository:
    friday_and_saturday_nights = Window(frozenset({4, 5}), 22 * 60, 2 * 60)
    schedule = Schedule("nights", windows=(friday_and_saturday_nights,),
                        closed=(DateRange(date(2026, 12, 5), date(2026, 12, 5)),))
    repository = _single_window_repository("Europe/Amsterdam", 0, 60)
    repository.schedules["s"] = schedule
    return repository


def test_window_before_closed_day_runs_past_midnight():
    # Friday 2026-12-04 22:00 to Saturday 02:00 (CET) runs although Saturday is closed.
    build, bundles = compile_verified(_closed_saturday_repository(), TRUST, now=_utc("2026-12-04T12:00:00"))
    bounds = bundles["door"].intervals[bundles["door"].keys["04:00:00:00:00:00:01"]]
    assert bounds[0:2] == [_utc("2026-12-04T21:00:00"), _utc("2026-12-05T01:00:00")]


def test_window_starting_on_closed_day_dropped():
    # The Saturday night window starts on the closed Saturday, so it does not run into Sunday.
    build, bundles = compile_verified(_closed_saturday_repository(), TRUST, now=_utc("2026-12-04T12:00:00"))
    bounds = bundles["door"].intervals[bundles["door"].keys["04:00:00:00:00:00:01"]]
    # The bundle is valid for 3 days, so Friday night is the only window left.
    assert bounds == [_utc("2026-12-04T21:00:00"), _utc("2026-12-05T01:00:00")]


def test_valid_until_includes_the_whole_local_day():
    repository = _single_window_repository("Europe/Amsterdam", 0, 1440)
    person = repository.people["p"]
    repository.people["p"] = Person(person.username, person.name, groups=person.groups, keys=person.keys,
                                    valid_until=date(2026, 12, 5))
    build, bundles = compile_verified(repository, TRUST, now=_utc("2026-12-04T12:00:00"))
    bounds = bundles["door"].intervals[bundles["door"].keys["04:00:00:00:00:00:01"]]
    assert bounds == [_utc("2026-12-04T12:00:00"), _utc("2026-12-05T23:00:00")]
