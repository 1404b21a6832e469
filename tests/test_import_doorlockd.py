"""`doorlock import doorlockd`: the shipped doorlockd dump becomes an access repository that
validates, compiles, and decides every tap as doorlockd did, apart from reported differences.

The comparison runs the real pipeline (import, validate, keygen, signers, compile, verify,
decide) and checks every lock, every hardware id in the dump and every instant on a 15-minute
grid across a week with a daylight-saving change against ``tests/doorlockd_reference.py``.

The only differences accepted are the deliberate ones the import reports (:func:`explain`):

- inclusive end: doorlockd let a tap in at exactly ``time_end`` or ``before``; the bundle
  does not, because its intervals are half-open;
- overnight window imported: a rule with ``time_start`` later than ``time_end`` never
  matched in doorlockd; without ``--keep-doorlockd-behaviour`` it opens as written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.cli import main
from compiler.doorlockd_convert import ascii_fold, derive_usernames
from compiler.doorlockd_yaml import render_yaml
from compiler.loader import check_repository
from compiler.yaml_loader import load_yaml_bytes
from lockclient import bundle as bundle_format
from lockclient import dsse
from lockclient.hwid import normalize_hwid
from tests.doorlockd_reference import DoorlockdReference, ReferenceRule

DUMP = Path(__file__).resolve().parent / "data" / "doorlockd" / "dump.json"
TIMEZONE = "Europe/Amsterdam"
IMPORT_NOW = "2026-12-04T21:00:00Z"  # when the dump was taken: rule 7 has expired by then

# Monday 00:00 local of a week with a daylight-saving change on its Sunday.
SPRING_WEEK = datetime(2027, 3, 21, 23, 0, tzinfo=timezone.utc)  # clocks go forward 2027-03-28
AUTUMN_WEEK = datetime(2027, 10, 24, 22, 0, tzinfo=timezone.utc)  # clocks go back 2027-10-31
GRID = timedelta(minutes=15)


def run(*arguments: str):
    return CliRunner().invoke(main, [str(argument) for argument in arguments], catch_exceptions=False)


def import_dump(out: Path, *extra: str, dump: Path = DUMP):
    return run("import", "doorlockd", dump, "--out", out, "--now", IMPORT_NOW, *extra)


def tree(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


# --- the shipped dump --------------------------------------------------------------------------


def test_shipped_dump_imports_and_validates(tmp_path):
    result = import_dump(tmp_path / "access")

    assert result.exit_code == 0, result.output
    check = check_repository(tmp_path / "access")
    assert [str(problem.message) for problem in check.problems if problem.is_error] == []
    assert len(list((tmp_path / "access" / "people").glob("*.yaml"))) == 40
    assert len(list((tmp_path / "access" / "locks").glob("*.yaml"))) == 4


def test_shipped_dump_model_matches_doorlockd(tmp_path):
    import_dump(tmp_path / "access")
    repository = check_repository(tmp_path / "access").repository

    keys = {key.hwid: (person, key) for person in repository.people.values() for key in person.keys}
    assert len(keys) == 60
    assert sum(not key.enabled for _, key in keys.values()) == 6
    assert sum(not person.enabled for person in repository.people.values()) == 3
    assert not repository.locks["side-door"].enabled
    assert not repository.groups["former-volunteers"].enabled
    person, key = keys["04:0e:2b:15:95:6c:a8"]  # the enabled key of the disabled person
    assert key.enabled
    assert not person.enabled


def test_lock_fingerprint_is_sha256_of_certificate_der(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    import_dump(tmp_path / "access")
    repository = check_repository(tmp_path / "access").repository
    records = json.loads(DUMP.read_text())
    for record in records:
        if record["model"] != "doorlockdb.lock":
            continue
        certificate = x509.load_pem_x509_certificate(record["fields"]["certificate"].encode())
        expected = certificate.fingerprint(hashes.SHA256()).hex()
        assert repository.locks[record["fields"]["name"]].certificate_sha256 == expected


def test_import_twice_byte_identical(tmp_path):
    first = import_dump(tmp_path / "one")
    second = import_dump(tmp_path / "two")

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert first.output.replace(str(tmp_path / "one"), "OUT") == second.output.replace(str(tmp_path / "two"), "OUT")


def test_report_names_deliberate_differences(tmp_path):
    output = import_dump(tmp_path / "access").output

    assert re.search(r"rule 6 of ruleset 'evenings-and-events': window 22:00:00-02:00:00 .*imported as written",
                     output)
    assert re.search(r"rule 7 of ruleset 'temporary-contractors': expired", output)
    assert re.search(r"rule 9 of ruleset 'temporary-contractors': has no weekdays", output)
    assert re.search(r"key pk 43 of person 'Person 25' \(pk 25\): is enabled but its owner is disabled", output)
    assert re.search(r"rule 1 of ruleset 'office-hours': time_end 17:00:00 was inclusive", output)
    assert "people          40  (3 disabled)" in output


def test_report_accounts_for_every_record(tmp_path):
    """Each count of the report adds up to the dump's own counts, or the difference is explained."""
    output = import_dump(tmp_path / "access").output
    records = load_records()
    metadata_rows = sum(1 for record in records if record["model"] == "doorlockdb.keymetadata")

    kept = int(re.search(r"key metadata\s+(\d+)\s+kept as comments", output).group(1))
    left_out = sum(int(count) for count in re.findall(r"doorlockdb\.keymetadata: (\d+) row\(s\)", output))
    assert (kept, kept + left_out) == (30, metadata_rows)
    assert "9 row(s) describe unknown cards" in output
    assert "9 access rules from 5 access groups" in output
    assert "6  from 5 rulesets" in output
    # Without --stats-db the history is named as not loaded, never dropped silently.
    assert re.search(r"doorlockdb\.logunknownkey: 9 row\(s\) not loaded: pass --stats-db", output)
    assert re.search(r"doorlockdb\.logkeylastseen: 15 row\(s\) not loaded: pass --stats-db", output)
    with_stats = import_dump(tmp_path / "again", "--stats-db", tmp_path / "stats.db").output
    assert "not loaded: pass --stats-db" not in with_stats


def test_keep_doorlockd_behaviour_leaves_out_overnight(tmp_path):
    result = import_dump(tmp_path / "access", "--keep-doorlockd-behaviour")

    assert result.exit_code == 0, result.output
    assert re.search(r"rule 6 of ruleset 'evenings-and-events': .*left out \(--keep-doorlockd-behaviour\)",
                     result.output)
    schedule = (tmp_path / "access" / "schedules" / "evenings-and-events.yaml").read_text()
    assert '"22:00"' not in schedule
    assert '"19:00"' in schedule


def test_unknown_timezone_rejected(tmp_path):
    result = import_dump(tmp_path / "access", "--timezone", "Mars/Olympus")

    assert result.exit_code == 2
    assert "Mars/Olympus" in result.output
    assert not (tmp_path / "access").exists()


def test_other_timezone_written_to_locks(tmp_path):
    import_dump(tmp_path / "access", "--timezone", "America/New_York")

    assert 'timezone: "America/New_York"' in (tmp_path / "access" / "locks" / "front-door.yaml").read_text()


# --- decisions: compiled bundle against the reference evaluator -------------------------------


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    assert run("keygen", "--root", "--out", directory / "root").exit_code == 0
    assert run("keygen", "--out", directory / "signing").exit_code == 0
    root_b64 = (directory / "root.pub").read_text().strip()
    return directory, root_b64


def compile_bundles(access: Path, build: Path, keys, week_start: datetime) -> dict[str, bundle_format.Bundle]:
    """Compile ``access`` as of ``week_start`` and return each lock's verified bundle."""
    directory, root_b64 = keys
    now = week_start.strftime("%Y-%m-%dT%H:%M:%SZ")
    signers_path = build.parent / f"{build.name}-signers.json"
    signed = run("signers", "sign", "--root", directory / "root.key", "--signer", directory / "signing.pub",
                 "--version", "1", "--out", signers_path, "--now", now)
    assert signed.exit_code == 0, signed.output
    compiled = run("compile", access, "--key", directory / "signing.key", "--signers", signers_path,
                   "--out", build, "--now", now)
    assert compiled.exit_code == 0, compiled.output

    root_key = dsse.load_public_key(root_b64)
    instant = week_start.timestamp()
    signers = bundle_format.verify_signers((build / "signers.json").read_bytes(),
                                           {dsse.key_id(root_key): root_key}, None, instant)
    bundles = {}
    for path in sorted((build / "bundles").glob("*.json")):
        bundles[path.stem] = bundle_format.verify_bundle(path.read_bytes(), signers, path.stem, None, instant)
    return bundles


@dataclass(frozen=True)
class Difference:
    lock: str
    hwid: str
    instant: datetime
    doorlockd: bool
    imported: bool
    rules: tuple[int, ...]


def inclusive_end_only(rules: list[ReferenceRule], instant: datetime, zone) -> bool:
    """True when every matching rule matches only through its inclusive end (time_end or before)."""
    local_time = instant.astimezone(zone).time().replace(tzinfo=None)
    return bool(rules) and all(
        (rule.time_end is not None and local_time == rule.time_end) or rule.before == instant for rule in rules
    )


def in_overnight_as_written(rule: ReferenceRule, instant: datetime, zone) -> bool:
    """True when ``instant`` is inside an overnight rule's window read as crossing midnight."""
    if rule.time_start is None or rule.time_end is None or rule.time_start <= rule.time_end:
        return False
    if rule.after is not None and instant < rule.after or rule.before is not None and instant > rule.before:
        return False
    local = instant.astimezone(zone)
    time_of_day = local.time().replace(tzinfo=None)
    if time_of_day >= rule.time_start and local.weekday() in rule.weekdays:
        return True
    return time_of_day < rule.time_end and (local.weekday() - 1) % 7 in rule.weekdays


def compare_week(reference: DoorlockdReference, bundles, week_start: datetime) -> list[Difference]:
    hwids = [normalize_hwid(hwid) for hwid in reference.key_hwids()] + [
        hwid for hwid in reference.unknown_hwids()]
    differences = []
    for lock in reference.lock_names():
        bundle = bundles.get(lock)
        for hwid in hwids:
            if not reference.candidate_rules(lock, hwid) and (bundle is None or hwid not in bundle.keys):
                continue  # neither side can ever open: skip the grid for speed
            instant = week_start
            while instant < week_start + timedelta(days=7):
                expected = reference.allowed(lock, hwid, instant)
                got = bundle is not None and bundle_format.decide(bundle, hwid, instant.timestamp()).allowed
                if expected != got:
                    rules = reference.matching_rules(lock, hwid, instant)
                    differences.append(Difference(lock, hwid, instant, expected, got, tuple(r.pk for r in rules)))
                instant += GRID
    return differences


def explain(difference: Difference, reference: DoorlockdReference, overnight_imported: bool) -> str | None:
    """Name the reported deliberate difference behind ``difference``, or None if there is none."""
    zone = reference.zone
    if difference.doorlockd and not difference.imported:
        rules = [reference.rules[pk] for pk in difference.rules]
        if inclusive_end_only(rules, difference.instant, zone):
            return "inclusive-end"
        return None
    if overnight_imported:
        candidates = reference.candidate_rules(difference.lock, difference.hwid)
        if any(in_overnight_as_written(rule, difference.instant, zone) for rule in candidates):
            return "overnight-imported"
    return None


@pytest.mark.parametrize("week_start", [SPRING_WEEK, AUTUMN_WEEK], ids=["spring-dst", "autumn-dst"])
@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep-doorlockd-behaviour"])
def test_decisions_match_doorlockd(tmp_path, signing_keys, week_start, keep):
    options = ("--keep-doorlockd-behaviour",) if keep else ()
    imported = import_dump(tmp_path / "access", *options)
    assert imported.exit_code == 0, imported.output
    bundles = compile_bundles(tmp_path / "access", tmp_path / "build", signing_keys, week_start)
    reference = DoorlockdReference.from_file(DUMP, TIMEZONE)

    differences = compare_week(reference, bundles, week_start)
    explained: dict[str, list[Difference]] = {}
    unexplained = []
    for difference in differences:
        reason = explain(difference, reference, overnight_imported=not keep)
        if reason is None:
            unexplained.append(difference)
        else:
            explained.setdefault(reason, []).append(difference)

    assert unexplained == []
    assert "side-door" not in bundles
    # The reported differences do show up on the grid, so the comparison can see them.
    assert explained.get("inclusive-end")
    if keep:
        assert "overnight-imported" not in explained
    else:
        assert explained.get("overnight-imported")
    # Every rule behind an inclusive-end difference is reported as such.
    rules_with_differences = {pk for d in explained.get("inclusive-end", []) for pk in d.rules}
    for pk in rules_with_differences:
        assert re.search(rf"rule {pk} of ruleset '[^']+': (time_end|before) .* was inclusive", imported.output)


def rule_record(pk: int, days: str, start=None, end=None, after=None, before=None) -> dict:
    names = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    fields = {"parent": 3, "after": after, "before": before, "time_start": start, "time_end": end}
    fields.update({f"weekdays_{name}": str(day) in days for day, name in enumerate(names)})
    return {"model": "doorlockdb.accessrule", "pk": pk, "fields": fields}


# Rules cut by after/before at times that are not local midnight, overnight windows cut by a
# limit, a half-open time range on the daylight-saving day, and a period longer than the week.
CUT_RULES = [
    rule_record(101, "0123456", "08:00:00", "12:00:00", "2027-03-23T10:30:00Z", "2027-03-26T09:00:00Z"),
    rule_record(102, "45", "23:00:00", "01:30:00", "2027-03-26T23:00:00Z", None),
    rule_record(103, "6", "01:30:00", None),
    rule_record(104, "2", None, "06:00:00", "2027-03-20T00:00:00Z", "2027-04-10T00:00:00Z"),
    rule_record(105, "3", "10:00:00", "11:00:00", "2027-03-25T09:20:00Z", "2027-03-25T09:40:00Z"),
    rule_record(106, "0", "20:00:00", "03:00:00", None, "2027-03-22T23:30:00Z"),
]


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep-doorlockd-behaviour"])
def test_rules_cut_by_period_match_doorlockd(tmp_path, signing_keys, keep):
    records = [r for r in load_records() if not (r["model"] == "doorlockdb.accessrule" and r["fields"]["parent"] == 3)]
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(records + CUT_RULES, indent=2))
    options = ("--keep-doorlockd-behaviour",) if keep else ()
    imported = import_dump(tmp_path / "access", *options, dump=dump)
    assert imported.exit_code == 0, imported.output
    bundles = compile_bundles(tmp_path / "access", tmp_path / "build", signing_keys, SPRING_WEEK)
    reference = DoorlockdReference.from_file(dump, TIMEZONE)

    differences = compare_week(reference, bundles, SPRING_WEEK)
    reasons = [explain(difference, reference, overnight_imported=not keep) for difference in differences]

    assert [d for d, reason in zip(differences, reasons) if reason is None] == []
    assert "inclusive-end" in reasons
    assert ("overnight-imported" in reasons) != keep


def test_event_rule_cut_at_both_ends(tmp_path, signing_keys):
    """Rule 5 (all days, 2027-03-24 18:00 CET to 2027-03-25 23:00 CET) is cut at both ends."""
    import_dump(tmp_path / "access")
    bundles = compile_bundles(tmp_path / "access", tmp_path / "build", signing_keys, SPRING_WEEK)
    evening_crew_only = normalize_hwid("b4:6e:26:d3")  # Person 11: evening-crew only

    def opens(iso: str) -> bool:
        instant = datetime.fromisoformat(iso).timestamp()
        return bundle_format.decide(bundles["front-door"], evening_crew_only, instant).allowed

    assert not opens("2027-03-24T16:59:00+00:00")
    assert opens("2027-03-24T17:00:00+00:00")
    assert opens("2027-03-25T10:00:00+00:00")
    assert opens("2027-03-25T21:59:00+00:00")
    assert not opens("2027-03-25T22:00:00+00:00")


# --- names -------------------------------------------------------------------------------------


def test_usernames_folded_and_collisions_numbered():
    usernames = derive_usernames({3: "Jöhn Doe", 1: "John  Doe", 2: "john.doe", 4: "Ødegård, Zoë", 5: "李"})

    assert usernames == {1: "john-doe", 2: "john-doe-2", 3: "john-doe-3", 4: "odegard-zoe", 5: "person-5"}


def test_ascii_fold_spells_special_letters():
    assert ascii_fold("Straße Æsop Łódź") == "Strasse AEsop Lodz"


# --- malformed dumps ---------------------------------------------------------------------------


def load_records() -> list[dict]:
    return json.loads(DUMP.read_text())


def find(records, model: str, pk: int) -> dict:
    return next(r for r in records if r["model"] == f"doorlockdb.{model}" and r["pk"] == pk)


def without_field(records):
    del find(records, "key", 7)["fields"]["owner"]
    return records


def dangling_owner(records):
    find(records, "key", 7)["fields"]["owner"] = 999
    return records


def duplicate_hwid(records):
    find(records, "key", 8)["fields"]["hwid"] = find(records, "key", 7)["fields"]["hwid"].upper()
    return records


def dangling_group(records):
    find(records, "person", 5)["fields"]["personsgroup"] = [1, 77]
    return records


def wrong_type(records):
    find(records, "accessrule", 4)["fields"]["time_start"] = "seven pm"
    return records


MALFORMED = [
    ("missing-field", without_field, r"doorlockdb\.key pk 7 field owner: field is missing"),
    ("dangling-owner", dangling_owner,
     r"doorlockdb\.key pk 7 field owner: points to doorlockdb\.person pk 999, which does not exist"),
    ("duplicate-hwid", duplicate_hwid,
     r"doorlockdb\.key pk 8 field hwid: hardware id '04:C6:67:71:43:07:22' is also used by doorlockdb\.key pk 7"),
    ("dangling-group", dangling_group,
     r"doorlockdb\.person pk 5 field personsgroup: points to doorlockdb\.persongroup pk 77"),
    ("bad-time", wrong_type, r"doorlockdb\.accessrule pk 4 field time_start: 'seven pm' is not a time of day"),
]


@pytest.mark.parametrize("name, damage, message", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_dump_rejected(tmp_path, name, damage, message):
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(damage(load_records()), indent=2))

    result = import_dump(tmp_path / "access", dump=dump)

    assert result.exit_code == 1
    assert re.search(message, result.output), result.output
    assert re.search(r"dump\.json:\d+: ", result.output)  # the line of the record
    assert "nothing was written" in result.output
    assert not (tmp_path / "access").exists()
    assert list(tmp_path.iterdir()) == [dump]  # no temporary directory left behind


def test_broken_record_reported_once(tmp_path):
    """A person with a missing field is one problem; its keys are not also called dangling."""
    records = load_records()
    del find(records, "person", 3)["fields"]["is_enabled"]
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(records, indent=2))

    result = import_dump(tmp_path / "access", dump=dump)

    assert result.exit_code == 1
    assert re.search(r"doorlockdb\.person pk 3 field is_enabled: field is missing", result.output)
    assert "1 problem(s)" in result.output, result.output
    assert not (tmp_path / "access").exists()


@pytest.mark.parametrize("text, message", [
    ('[{"model": "doorlockdb.person", "pk": 1,, }]', r"dump\.json:1: not valid JSON"),
    ("This is not JSON\n", r"not valid JSON"),
    ('{"model": "doorlockdb.person"}', r"must be a JSON list of records"),
    ("[]", r"no doorlockdb records found"),
], ids=["syntax-error", "text", "object", "empty"])
def test_non_json_dump_rejected(tmp_path, text, message):
    dump = tmp_path / "dump.json"
    dump.write_text(text)

    result = import_dump(tmp_path / "access", dump=dump)

    assert result.exit_code == 1
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "access").exists()


def test_existing_directory_kept_without_force(tmp_path):
    out = tmp_path / "access"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    result = import_dump(out)

    assert result.exit_code == 1
    assert "--force" in result.output
    assert tree(out) == {"notes.txt": b"mine"}


def test_force_replaces_directory_whole(tmp_path):
    out = tmp_path / "access"
    out.mkdir()
    (out / "notes.txt").write_text("old")

    result = import_dump(out, "--force")

    assert result.exit_code == 0, result.output
    assert not (out / "notes.txt").exists()
    assert (out / "people" / "person-01.yaml").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["access"]


# --- statistics --------------------------------------------------------------------------------


def test_statistics_loaded_into_receiver_database(tmp_path):
    from receiver import queries

    result = import_dump(tmp_path / "access", "--stats-db", tmp_path / "stats.db")

    assert result.exit_code == 0, result.output
    unknown = {(row["lock"], row["hwid"]): row for row in queries.unknown_keys(tmp_path / "stats.db")}
    assert len(unknown) == 9
    assert unknown[("front-door", "11:32:5b:9b")]["count"] == 5
    assert unknown[("front-door", "11:32:5b:9b")]["last_seen"] == "2026-11-25T12:15:00Z"
    seen = {(row["lock"], row["hwid"]): row for row in queries.last_seen(tmp_path / "stats.db")}
    assert len(seen) == 15
    assert seen[("workshop", "04:fb:04:b4:2a:68:58")]["window_start"] == "2026-11-20T00:00:00Z"
    assert seen[("workshop", "04:fb:04:b4:2a:68:58")]["window_end"] == "2026-11-21T00:00:00Z"


def test_statistics_shown_by_stats_cli(tmp_path):
    """What an admin runs after the import: the doorlockd history is in `doorlock stats`."""
    stats_db = tmp_path / "stats.db"
    assert import_dump(tmp_path / "access", "--stats-db", stats_db).exit_code == 0

    unknown = run("stats", "unknown-keys", "--db", stats_db)
    seen = run("stats", "last-seen", "--db", stats_db)

    assert unknown.exit_code == 0, unknown.output
    assert re.search(r"front-door\s+11:32:5b:9b\s+5\s+\S+\s+2026-11-25T12:15:00Z", unknown.output)
    assert re.search(r"storage-room\s+f5:2d:1c:46\s+7\s+.*NXP NTAG213", unknown.output)
    assert len([line for line in unknown.output.splitlines() if line.strip()]) == 1 + 9
    assert seen.exit_code == 0, seen.output
    assert re.search(r"workshop\s+04:fb:04:b4:2a:68:58\s+2026-11-20T00:00:00Z\s+2026-11-21T00:00:00Z", seen.output)
    assert len([line for line in seen.output.splitlines() if line.strip()]) == 1 + 15


def test_statistics_reimport_does_not_double_count(tmp_path):
    from receiver import queries

    import_dump(tmp_path / "one", "--stats-db", tmp_path / "stats.db")
    second = import_dump(tmp_path / "two", "--stats-db", tmp_path / "stats.db")

    assert second.exit_code == 0, second.output
    assert "9 already there from an earlier import" in second.output
    counts = {(row["lock"], row["hwid"]): row["count"] for row in queries.unknown_keys(tmp_path / "stats.db")}
    assert counts[("front-door", "11:32:5b:9b")] == 5


def test_statistics_from_other_dump_not_added(tmp_path):
    from receiver import queries

    import_dump(tmp_path / "one", "--stats-db", tmp_path / "stats.db")
    records = load_records()
    find(records, "logunknownkey", 5)["fields"]["counter"] = 50
    dump = tmp_path / "newer.json"
    dump.write_text(json.dumps(records))

    result = import_dump(tmp_path / "two", "--stats-db", tmp_path / "stats.db", dump=dump)

    assert "unknown keys for lock front-door: not loaded" in result.output
    counts = {(row["lock"], row["hwid"]): row["count"] for row in queries.unknown_keys(tmp_path / "stats.db")}
    assert counts[("front-door", "11:32:5b:9b")] == 5


# --- YAML output -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_written_strings_read_back_unchanged(text):
    document = {"username": "someone", "name": text, "keys": [{"hwid": "04:a2:3b:4c", "description": text}]}

    loaded = load_yaml_bytes(render_yaml(document, "person", [text])).data

    assert loaded["name"] == text
    assert loaded["keys"][0]["description"] == text


def test_person_comments_keep_info_and_metadata(tmp_path):
    import_dump(tmp_path / "access")

    text = (tmp_path / "access" / "people" / "person-01.yaml").read_text()

    assert "# doorlockd info: Synthetic test person 01" in text
    assert '# key 04:33:68:be:5a:ab:0a metadata: {"tag": {"product": "NXP NTAG215"}}' in text


# --- findings for unusual rules ----------------------------------------------------------------


UNUSUAL_RULES = [
    ("start-not-whole-minute", rule_record(201, "0", "08:00:40", "12:00:00"), "changed", "start-rounded"),
    ("single-instant", rule_record(202, "0", "12:00:00", "12:00:00"), "skipped", "window-too-short"),
    ("after-later-than-before", rule_record(203, "0", None, None, "2027-05-02T00:00:00Z", "2027-05-01T00:00:00Z"),
     "skipped", "empty-period"),
    ("period-without-weekday", rule_record(204, "0", None, None, "2027-05-04T00:00:00Z", "2027-05-06T00:00:00Z"),
     "skipped", "empty-period"),
    ("after-not-whole-minute", rule_record(205, "0", None, None, "2027-05-04T10:00:10Z", None),
     "changed", "after-rounded"),
    ("end-on-last-second", rule_record(206, "0", "20:00:00", "23:59:59"), "changed", "inclusive-end"),
]


@pytest.mark.parametrize("rule, kind, code", [case[1:] for case in UNUSUAL_RULES],
                         ids=[case[0] for case in UNUSUAL_RULES])
def test_unusual_rule_reported(tmp_path, rule, kind, code):
    from compiler.doorlockd_convert import convert_dump
    from compiler.doorlockd_dump import load_dump

    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(load_records() + [rule]))

    converted = convert_dump(load_dump(dump), TIMEZONE, now=datetime(2026, 12, 4, 21, tzinfo=timezone.utc))

    findings = [(f.kind, f.code) for f in converted.report.findings if f.rule_pk == rule["pk"]]
    assert (kind, code) in findings


def test_last_second_end_becomes_midnight(tmp_path):
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(load_records() + [rule_record(206, "0", "20:00:00", "23:59:59")]))

    import_dump(tmp_path / "access", dump=dump)

    schedule = (tmp_path / "access" / "schedules" / "evenings-and-events.yaml").read_text()
    assert 'start: "20:00"\n    end: "24:00"' in schedule


def test_statistics_error_writes_nothing(tmp_path):
    (tmp_path / "stats.db").write_bytes(b"this is not an SQLite database" * 100)

    result = import_dump(tmp_path / "access", "--stats-db", tmp_path / "stats.db")

    assert result.exit_code == 1
    assert "statistics not loaded" in result.output
    assert not (tmp_path / "access").exists()


# --- random rules against the reference --------------------------------------------------------

PROPERTY_START = datetime(2027, 3, 15, 0, 0, tzinfo=timezone.utc)  # three weeks around the spring change
PROPERTY_END = datetime(2027, 4, 5, 0, 0, tzinfo=timezone.utc)
EVENING_CREW_ONLY = "b4:6e:26:d3"  # Person 11, member of evening-crew only: ruleset 3


@st.composite
def random_rules(draw):
    rules = []
    for offset in range(draw(st.integers(min_value=1, max_value=3))):
        days = "".join(str(day) for day in range(7) if draw(st.booleans()))
        times = [draw(st.one_of(st.none(), st.integers(min_value=0, max_value=1439))) for _ in range(2)]
        start, end = (None if minute is None else f"{minute // 60:02d}:{minute % 60:02d}:00" for minute in times)
        limits = []
        for _ in range(2):
            minutes = draw(st.one_of(st.none(), st.integers(min_value=-3 * 1440, max_value=24 * 1440)))
            instant = None if minutes is None else PROPERTY_START + timedelta(minutes=5 * (minutes // 5))
            limits.append(None if instant is None else instant.strftime("%Y-%m-%dT%H:%M:%SZ"))
        rules.append(rule_record(300 + offset, days, start, end, *limits))
    return rules


@settings(max_examples=15, deadline=None)
@given(rules=random_rules(), keep=st.booleans())
def test_random_rules_match_doorlockd(rules, keep):
    import bisect
    import tempfile

    from compiler.doorlockd_convert import convert_dump
    from compiler.doorlockd_dump import load_dump
    from compiler.expand import expand_repository
    from compiler.import_cli import write_repository
    from compiler.loader import load_repository

    records = [r for r in load_records() if not (r["model"] == "doorlockdb.accessrule" and r["fields"]["parent"] == 3)]
    with tempfile.TemporaryDirectory() as directory:
        dump = Path(directory) / "dump.json"
        dump.write_text(json.dumps(records + rules))
        converted = convert_dump(load_dump(dump), TIMEZONE, keep, now=datetime(2026, 12, 4, 21, tzinfo=timezone.utc))
        write_repository(converted, Path(directory) / "access")
        repository = load_repository(Path(directory) / "access", now=PROPERTY_START)
        expanded = expand_repository(repository, int(PROPERTY_START.timestamp()), int(PROPERTY_END.timestamp()))
        reference = DoorlockdReference.from_file(dump, TIMEZONE)

    bounds = expanded["front-door"].get(EVENING_CREW_ONLY, [])
    instant = PROPERTY_START
    while instant < PROPERTY_END:
        expected = reference.allowed("front-door", EVENING_CREW_ONLY, instant)
        got = bisect.bisect_right(bounds, instant.timestamp()) % 2 == 1
        if expected != got:
            rules_now = reference.matching_rules("front-door", EVENING_CREW_ONLY, instant)
            difference = Difference("front-door", EVENING_CREW_ONLY, instant, expected, got,
                                    tuple(rule.pk for rule in rules_now))
            assert explain(difference, reference, overnight_imported=not keep) is not None, difference
        instant += GRID
