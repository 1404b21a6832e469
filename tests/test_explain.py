"""``doorlock explain``: the decision for a key or person at a lock and time, with the rules behind it."""

from __future__ import annotations

import bisect
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler.cli import main
from compiler.expand import expand_repository
from compiler.explain import ExplainError, explain, parse_instant
from compiler.loader import load_repository
from tests.access_samples import BASE_FILES, write_access

ALICE_KEY = "04:a2:3b:4c:5d:6e:7f"
BOB_KEY = "04:b0:b0:b0:b0:b0:01"
CAROL_KEY = "04:c0:c0:c0:c0:c0:01"
BREAK_GLASS = "04:11:22:33:44:55:66"

DST_FILES = {
    "schedules/night.yaml": 'name: night\nwindows:\n  - days: [sun]\n    start: "02:30"\n    end: "04:00"\n',
    "schedules/small-hours.yaml": 'name: small-hours\nwindows:\n  - days: [sun]\n    start: "02:15"\n    end: "02:45"\n',
    "groups/night-shift.yaml": """\
name: night-shift
access:
  - locks: [workshop]
    schedule: night
  - locks: [front-door]
    schedule: small-hours
""",
    "people/dora.yaml": "username: dora\nname: Dora\ngroups: [night-shift]\nkeys:\n  - hwid: 04:d0:d0:d0:d0:d0:01\n",
}


@pytest.fixture
def repository(tmp_path):
    return load_repository(write_access(tmp_path / "access", DST_FILES))


def at(text: str) -> int:
    """Unix seconds of a UTC time written like 2026-12-02T09:00."""
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


def step_texts(explanation) -> str:
    return "\n".join(step.text for step in explanation.steps)


def test_inside_window_allowed(repository):
    # Wednesday 2 December 2026, 10:00 in Amsterdam (UTC+1).
    result = explain(repository, "workshop", at("2026-12-02T09:00"), hwid=ALICE_KEY)
    assert result.allowed
    assert "inside the window Wednesday 09:00–18:00" in step_texts(result)
    assert "group workshop grants workshop under schedule workshop-hours" in step_texts(result)


def test_outside_window_denied_with_next_opening(repository):
    # Saturday 5 December 2026, 10:00 local.
    result = explain(repository, "workshop", at("2026-12-05T09:00"), hwid=ALICE_KEY)
    assert not result.allowed
    assert "no window covers Saturday 10:00" in step_texts(result)
    assert "next opens Monday 2026-12-07 09:00:00 CET" in step_texts(result)


def test_window_crossing_midnight_belongs_to_start_day(repository):
    # Saturday 19 December 01:00 local: inside Friday's 23:00–02:00 window.
    result = explain(repository, "front-door", at("2026-12-19T00:00"), username="bob")
    assert result.allowed
    assert "started on 2026-12-18" in step_texts(result)


def test_window_starting_on_closed_day_does_not_run(repository):
    # Saturday 26 December 01:00 local: Friday the 25th is closed, so its night window never started.
    result = explain(repository, "front-door", at("2026-12-26T00:00"), username="bob")
    assert not result.allowed
    assert "2026-12-25 is a closed day" in step_texts(result)


def test_break_glass_opens_in_lockdown(tmp_path):
    repository = load_repository(write_access(tmp_path, {
        "locks/front-door.yaml": BASE_FILES["locks/front-door.yaml"] + "lockdown: true\n"}))
    result = explain(repository, "front-door", at("2026-12-05T03:00"), hwid=BREAK_GLASS)
    assert result.allowed
    assert result.decision == "allowed: break-glass key"


def test_lockdown_denies_member(tmp_path):
    repository = load_repository(write_access(tmp_path, {
        "locks/front-door.yaml": BASE_FILES["locks/front-door.yaml"] + "lockdown: true\n"}))
    result = explain(repository, "front-door", at("2026-12-02T12:00"), hwid=CAROL_KEY)
    assert not result.allowed
    assert result.decision == "denied: lockdown"


def test_disabled_key_denied(tmp_path):
    repository = load_repository(write_access(tmp_path, {
        "people/alice.yaml": BASE_FILES["people/alice.yaml"] + "    enabled: false\n"}))
    result = explain(repository, "workshop", at("2026-12-02T09:00"), hwid=ALICE_KEY)
    assert not result.allowed
    assert f"key {ALICE_KEY} is disabled" in step_texts(result)


def test_key_validity_inclusive_in_lock_time(repository):
    # Bob's key is valid until 2027-03-31 (inclusive): 22:00 local on that day is still inside.
    last_evening = explain(repository, "front-door", at("2027-03-31T20:00"), hwid=BOB_KEY)
    next_morning = explain(repository, "front-door", at("2027-04-01T08:00"), hwid=BOB_KEY)
    assert last_evening.allowed
    assert not next_morning.allowed
    assert f"key {BOB_KEY} is valid until 2027-03-31 (days in Europe/Amsterdam)" in step_texts(next_morning)


def test_membership_validity_ends_access(tmp_path):
    repository = load_repository(write_access(tmp_path, {
        "people/bob.yaml": BASE_FILES["people/bob.yaml"].replace("    valid_until: 2027-03-31\n", "")}))
    last_evening = explain(repository, "front-door", at("2027-06-30T20:00"), username="bob")
    next_morning = explain(repository, "front-door", at("2027-07-01T08:00"), username="bob")
    assert last_evening.allowed
    assert not next_morning.allowed
    assert "bob's membership is valid until 2027-06-30" in step_texts(next_morning)


def test_unknown_key_denied(repository):
    result = explain(repository, "workshop", at("2026-12-02T09:00"), hwid="04:ee:ee:ee:ee:ee:ee")
    assert not result.allowed
    assert result.decision == "denied: unknown key"


def test_key_spelling_normalised(repository):
    result = explain(repository, "workshop", at("2026-12-02T09:00"), hwid="04A23B4C5D6E7F")
    assert result.allowed


def test_unknown_lock_is_an_error(repository):
    with pytest.raises(ExplainError, match="lock 'garage' not found; known locks: front-door, workshop"):
        explain(repository, "garage", at("2026-12-02T09:00"), hwid=ALICE_KEY)


def test_skipped_hour_window_starts_at_transition(repository):
    # 29 March 2026: Amsterdam skips 02:00–03:00. The 02:30 window starts at 03:00 CEST (01:00Z).
    result = explain(repository, "workshop", at("2026-03-29T01:05"), username="dora")
    assert result.allowed
    assert "clocks in Europe/Amsterdam go forward on 2026-03-29" in step_texts(result)
    assert "start 02:30 does not exist on 2026-03-29" in step_texts(result)


def test_repeated_hour_window_open_once(repository):
    # 25 October 2026: 02:00–03:00 happens twice. 02:15–02:45 is open the first time only.
    first = explain(repository, "front-door", at("2026-10-25T00:20"), username="dora")
    second = explain(repository, "front-door", at("2026-10-25T01:20"), username="dora")
    assert first.allowed
    assert "occurs twice on 2026-10-25" in step_texts(first)
    assert not second.allowed


def test_local_time_parsed_in_lock_zone():
    assert parse_instant("2026-12-02T10:00", "Europe/Amsterdam") == at("2026-12-02T09:00")
    assert parse_instant("2026-12-02T10:00Z", "Europe/Amsterdam") == at("2026-12-02T10:00")


@pytest.mark.parametrize("start", ["2026-03-27T00:00", "2026-10-23T00:00", "2026-12-23T00:00"])
def test_explain_agrees_with_compiled_intervals(repository, start):
    """Every 23 minutes over four days around DST and Christmas, explain matches the expander."""
    low = at(start)
    high = low + 4 * 86400
    expanded = expand_repository(repository, low, high)
    keys = {ALICE_KEY: "alice", BOB_KEY: "bob", CAROL_KEY: "carol", "04:d0:d0:d0:d0:d0:01": "dora"}

    for lock in ("front-door", "workshop"):
        for hwid in keys:
            bounds = expanded[lock].get(hwid, [])
            for instant in range(low, high, 23 * 60):
                expected = bisect.bisect_right(bounds, instant) % 2 == 1
                assert explain(repository, lock, instant, hwid=hwid).allowed == expected, (lock, hwid, instant)


def test_cli_prints_chain_and_exit_code(tmp_path):
    access = write_access(tmp_path)
    runner = CliRunner()
    allowed = runner.invoke(main, ["explain", str(access), "--lock", "workshop", "--person", "alice",
                                   "--at", "2026-12-02T10:00"])
    denied = runner.invoke(main, ["explain", str(access), "--lock", "workshop", "--key", ALICE_KEY,
                                  "--at", "2026-12-05T10:00"])
    assert allowed.exit_code == 0
    assert allowed.output.startswith("ALLOWED: alice with key")
    assert "people/alice.yaml" in allowed.output
    assert denied.exit_code == 1
    assert denied.output.startswith("DENIED:")


def test_cli_bad_time_is_a_clear_error(tmp_path):
    access = write_access(tmp_path)
    result = CliRunner().invoke(main, ["explain", str(access), "--lock", "workshop", "--person", "alice",
                                       "--at", "next tuesday"])
    assert result.exit_code == 2
    assert "--at 'next tuesday' is not a valid time" in result.output


def test_denial_names_disabled_or_expired(tmp_path):
    # bob's membership runs until 2027-06-30; Wednesday 7 July 2027, 10:00 local, is after it.
    # (His card's own validity is lifted, so that only the membership ends.)
    card_without_end = {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace("    valid_until: 2027-03-31\n", "")}
    expired = explain(load_repository(write_access(tmp_path / "a", card_without_end)), "front-door",
                      at("2027-07-07T08:00"), username="bob")
    assert expired.decision == "denied: bob is outside the membership validity"

    disabled_files = {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace("groups:", "enabled: false\ngroups:")}
    disabled = explain(load_repository(write_access(tmp_path / "b", disabled_files)), "front-door",
                       at("2026-12-02T09:00"), username="bob")
    assert disabled.decision == "denied: bob is disabled"


def test_break_glass_output_does_not_ask_for_an_unexpired_bundle(tmp_path):
    access = write_access(tmp_path)
    result = CliRunner().invoke(main, ["explain", str(access), "--lock", "front-door", "--key", BREAK_GLASS,
                                       "--at", "2026-12-05T03:00"])
    assert result.exit_code == 0
    assert result.output.startswith("ALLOWED: break-glass key")
    assert "has not expired" not in result.output
    assert "opens even when the bundle has expired" in result.output

    member = CliRunner().invoke(main, ["explain", str(access), "--lock", "workshop", "--person", "alice",
                                       "--at", "2026-12-02T10:00"])
    assert "it also needs a bundle that has not expired" in member.output


def test_unknown_person_suggests_close_names(repository):
    with pytest.raises(ExplainError, match=r"person 'carl' not found; did you mean 'carol'\?; "
                                           r"known people: alice, bob, carol, dora"):
        explain(repository, "front-door", at("2026-12-02T09:00"), username="carl")


def test_unknown_person_found_by_first_part_in_example():
    example = Path(__file__).resolve().parent.parent / "access"
    result = CliRunner().invoke(main, ["explain", str(example), "--lock", "front-door", "--person", "clea",
                                       "--at", "2026-12-02T10:00"])
    assert result.exit_code == 2
    assert "person 'clea' not found; did you mean 'cleaning.schoonmaak'?" in result.output


def test_unknown_lock_suggests_close_names(repository):
    with pytest.raises(ExplainError, match=r"lock 'frontdoor' not found; did you mean 'front-door'\?; "
                                           r"known locks: front-door, workshop"):
        explain(repository, "frontdoor", at("2026-12-02T09:00"), hwid=ALICE_KEY)


def test_unknown_person_in_a_large_repository_lists_no_names(tmp_path):
    people = {f"people/p{i:03d}.yaml": f"username: p{i:03d}\nname: Person {i}\ngroups: [members]\n" for i in range(30)}
    repository = load_repository(write_access(tmp_path, people))
    with pytest.raises(ExplainError) as error:
        explain(repository, "front-door", at("2026-12-02T09:00"), username="p015x")
    assert "did you mean 'p015'" in str(error.value)
    assert "known people" not in str(error.value)
