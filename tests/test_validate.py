"""Validation of access repositories: each problem with its file, line and message."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compiler.loader import AccessInvalid, check_repository, load_repository
from compiler.model import Window
from compiler.synthetic import generate_organisation

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
FINGERPRINT = "ab" * 32

BASE_FILES = {
    "locks/front-door.yaml": f"""\
        name: front-door
        timezone: Europe/Amsterdam
        certificate:
          sha256: "{FINGERPRINT}"
        break_glass:
          - hwid: "04:11:22:33:44:55:66"
        """,
    "schedules/always.yaml": """\
        name: always
        always: true
        """,
    "schedules/evenings.yaml": """\
        name: evenings
        windows:
          - days: [fri]
            start: "22:00"
            end: "02:00"
        """,
    "groups/members.yaml": """\
        name: members
        access:
          - locks: [front-door]
            schedule: evenings
        """,
    "people/alice.yaml": """\
        username: alice
        name: Alice
        groups: [members]
        keys:
          - hwid: "04:a2:3b:4c:5d:6e:7f"
        """,
}


def write_repository(root: Path, changes: dict[str, str | bytes | None] | None = None) -> Path:
    """Write the base repository with ``changes`` applied (None deletes a file)."""
    files: dict[str, str | bytes | None] = dict(BASE_FILES)
    files.update(changes or {})
    for relative, content in files.items():
        if content is None:
            continue
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content), encoding="utf-8")
    return root


def problems_of(root: Path, now: datetime | None = None):
    return check_repository(root, now=now).problems


def test_base_repository_is_clean(tmp_path):
    result = check_repository(write_repository(tmp_path))

    assert result.problems == []
    assert result.repository is not None
    assert set(result.repository.people) == {"alice"}


# Each case: files to change, then the expected (file, line, severity, message fragment).
ERROR_CASES = {
    "unknown group": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members, nobody]\n"},
        ("people/alice.yaml", 3, "error", "unknown group 'nobody'"),
    ),
    "unknown lock": (
        {"groups/members.yaml": "name: members\naccess:\n  - locks: [front-door, back-door]\n    schedule: evenings\n"},
        ("groups/members.yaml", 3, "error", "unknown lock 'back-door'"),
    ),
    "unknown schedule": (
        {"groups/members.yaml": "name: members\naccess:\n  - locks: [front-door]\n    schedule: evening\n"},
        ("groups/members.yaml", 4, "error", "unknown schedule 'evening'"),
    ),
    "duplicate username": (
        {"people/alice2.yaml": "username: alice\nname: Alice Again\ngroups: [members]\n"},
        ("people/alice2.yaml", 1, "error", "username 'alice' is already used in people/alice.yaml:1:11"),
    ),
    "duplicate lock name": (
        {"locks/front-door-2.yaml": "name: front-door\ntimezone: UTC\n"},
        ("locks/front-door.yaml", 1, "error", "lock name 'front-door' is already used in locks/front-door-2.yaml:1:7"),
    ),
    "duplicate schedule name": (
        {"schedules/zz.yaml": "name: always\nalways: true\n"},
        ("schedules/zz.yaml", 1, "error", "schedule name 'always' is already used in schedules/always.yaml:1:7"),
    ),
    "duplicate group name": (
        {"groups/more.yaml": "name: members\n"},
        ("groups/more.yaml", 1, "error", "group name 'members' is already used in groups/members.yaml:1:7"),
    ),
    "hardware id on two people": (
        {"people/bob.yaml": "username: bob\nname: Bob\ngroups: [members]\nkeys:\n  - hwid: 04A23B4C5D6E7F\n"},
        ("people/bob.yaml", 5, "error",
         "hardware id 04:a2:3b:4c:5d:6e:7f of this key of person 'bob' is already used by the key of person "
         "'alice' at people/alice.yaml:5:5"),
    ),
    "hardware id on a person and a break-glass key": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: 04-11-22-33-44-55-66\n"},
        ("locks/front-door.yaml", 6, "error",
         "hardware id 04:11:22:33:44:55:66 of this break-glass key of lock 'front-door' is already used by the key "
         "of person 'alice' at people/alice.yaml:5:5"),
    ),
    "hardware id twice in one person": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n"
                              "  - hwid: 04:a2:3b:4c\n  - hwid: 04A23B4C\n"},
        ("people/alice.yaml", 6, "error", "hardware id 04:a2:3b:4c of this key of person 'alice' is already used"),
    ),
    "hardware id odd length": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: 04:a2:3b:4\n"},
        ("people/alice.yaml", 5, "error", "odd number of hex digits"),
    ),
    "hardware id not hex": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: 04:a2:3b:zz\n"},
        ("people/alice.yaml", 5, "error", "which is not a hex digit"),
    ),
    "hardware id random uid": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: 08:a2:3b:4c\n"},
        ("people/alice.yaml", 5, "error", "random UID"),
    ),
    "hardware id wrong length": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: 04:a2:3b:4c:5d\n"},
        ("people/alice.yaml", 5, "error", "is 5 bytes long"),
    ),
    "hardware id unquoted number": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: 04123456\n"},
        ("people/alice.yaml", 5, "error", "keys[0].hwid must be text, not the number 1091374 (YAML reads 04123456"),
    ),
    "break-glass hardware id invalid": (
        {"locks/front-door.yaml": f"name: front-door\ntimezone: UTC\ncertificate:\n  sha256: \"{FINGERPRINT}\"\n"
                                  "break_glass:\n  - hwid: '08:00:00:01'\n"},
        ("locks/front-door.yaml", 6, "error", "random UID"),
    ),
    "invalid time zone": (
        {"locks/front-door.yaml": "name: front-door\ntimezone: Europe/Amsterdm\n"},
        ("locks/front-door.yaml", 2, "error", "unknown time zone 'Europe/Amsterdm'"),
    ),
    "machine-local time zone": (
        {"locks/front-door.yaml": "name: front-door\ntimezone: localtime\n"},
        ("locks/front-door.yaml", 2, "error", "unknown time zone 'localtime'"),
    ),
    "zero-length window": (
        {"schedules/evenings.yaml": "name: evenings\nwindows:\n  - days: [mon]\n    start: '09:00'\n    end: '09:00'\n"},
        ("schedules/evenings.yaml", 5, "error", "window from 09:00 to 09:00 has zero length"),
    ),
    "membership ends before it starts": (
        {"people/alice.yaml": "username: alice\nname: Alice\nvalid_from: 2026-05-01\nvalid_until: 2026-04-30\n"
                              "groups: [members]\n"},
        ("people/alice.yaml", 4, "error", "membership valid_until 2026-04-30 is before valid_from 2026-05-01"),
    ),
    "key validity ends before it starts": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: 04:a2:3b:4c\n"
                              "    valid_from: 2026-05-01\n    valid_until: 2025-05-01\n"},
        ("people/alice.yaml", 7, "error", "key 04:a2:3b:4c valid_until 2025-05-01 is before valid_from 2026-05-01"),
    ),
    "impossible date": (
        {"people/alice.yaml": "username: alice\nname: Alice\nvalid_until: 2026-02-30\ngroups: [members]\n"},
        ("people/alice.yaml", 3, "error", "'2026-02-30' is not a calendar date"),
    ),
    "closed range ends before it starts": (
        {"schedules/always.yaml": "name: always\nalways: true\nclosed:\n  - from: 2026-12-31\n    until: 2026-12-24\n"},
        ("schedules/always.yaml", 5, "error", "closed range ends 2026-12-24 before it starts 2026-12-31"),
    ),
    "schedule never open": (
        {"schedules/evenings.yaml": "name: evenings\ndescription: nothing yet\n"},
        ("schedules/evenings.yaml", 1, "error", "schedule 'evenings' has no windows and is never open"),
    ),
    "always with windows": (
        {"schedules/always.yaml": "name: always\nalways: true\nwindows:\n  - days: [mon]\n    start: '09:00'\n"
                                  "    end: '10:00'\n"},
        ("schedules/always.yaml", 2, "error", "schedule 'always' has 'always: true' and windows"),
    ),
    "malformed certificate fingerprint": (
        {"locks/front-door.yaml": "name: front-door\ntimezone: UTC\ncertificate:\n  sha256: 'ab:cd'\n"},
        ("locks/front-door.yaml", 4, "error", "certificate.sha256 'ab:cd' is not valid"),
    ),
    "unknown field": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nemial: alice@example.org\n"},
        ("people/alice.yaml", 4, "error", "unknown field 'emial' in this person"),
    ),
    "missing required field": (
        {"locks/front-door.yaml": "name: front-door\ndescription: no zone\n"},
        ("locks/front-door.yaml", 1, "error", "missing required field 'timezone' in this lock"),
    ),
    "wrong type": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: members\n"},
        ("people/alice.yaml", 3, "error", "groups must be a list, not the text 'members'"),
    ),
    "unknown weekday": (
        {"schedules/evenings.yaml": "name: evenings\nwindows:\n  - days: [fri, satt]\n    start: '22:00'\n"
                                    "    end: '02:00'\n"},
        ("schedules/evenings.yaml", 3, "error", "windows[0].days[1] is 'satt', which is not one of"),
    ),
    "invalid time of day": (
        {"schedules/evenings.yaml": "name: evenings\nwindows:\n  - days: [fri]\n    start: '24:00'\n    end: '02:00'\n"},
        ("schedules/evenings.yaml", 4, "error", "windows[0].start '24:00' is not valid"),
    ),
    "bundle setting out of range": (
        {"locks/front-door.yaml": "name: front-door\ntimezone: UTC\nbundle:\n  valid_days: 0\n"},
        ("locks/front-door.yaml", 4, "error", "bundle.valid_days is 0 but must be at least 1"),
    ),
    "duplicate mapping key": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nname: Alicia\n"},
        ("people/alice.yaml", 4, "error", "duplicate key 'name' in one mapping (first at line 2)"),
    ),
    "tab in indentation": (
        {"people/alice.yaml": "username: alice\nname: Alice\ngroups:\n\t- members\n"},
        ("people/alice.yaml", 4, "error", "tab character in indentation"),
    ),
    "not utf-8": (
        {"people/alice.yaml": b"username: alice\nname: Ren\xe9\ngroups: [members]\n"},
        ("people/alice.yaml", 2, "error", "file is not valid UTF-8: byte 0xe9"),
    ),
    "list instead of mapping": (
        {"people/alice.yaml": "- username: alice\n  name: Alice\n"},
        ("people/alice.yaml", 1, "error", "the file must be a mapping of fields for a person, but it is a list"),
    ),
    "alias bomb": (
        {"schedules/evenings.yaml": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                                    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                                    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                                    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                                    "f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"},
        ("schedules/evenings.yaml", None, "error", "document expands to more than 100000 values"),
    ),
    "yaml syntax error": (
        {"groups/members.yaml": "name: members\ndescription: Board: all doors\n"},
        ("groups/members.yaml", 2, "error", "invalid YAML: mapping values are not allowed"),
    ),
}

WARNING_CASES = {
    "lock that no rule reaches": (
        {"locks/back-door.yaml": "name: back-door\ntimezone: America/New_York\n"},
        ("locks/back-door.yaml", 1, "warning", "no access rule of an enabled group lists lock 'back-door'"),
    ),
    "lock reached only by a disabled group": (
        {"groups/members.yaml": "name: members\nenabled: false\naccess:\n  - locks: [front-door]\n    schedule: evenings\n"},
        ("locks/front-door.yaml", 1, "warning", "no access rule of an enabled group lists lock 'front-door'"),
    ),
    "person in no group": (
        {"people/bob.yaml": "username: bob\nname: Bob\n"},
        ("people/bob.yaml", 1, "warning", "person 'bob' is in no group"),
    ),
    "file name not matching the id": (
        {"people/alice.yaml": None, "people/alice-jansen.yaml": BASE_FILES["people/alice.yaml"]},
        ("people/alice-jansen.yaml", 1, "warning", "file name 'alice-jansen.yaml' does not match the username 'alice'"),
    ),
    "yaml file at the top": (
        {"extra.yaml": "name: x\n"},
        ("extra.yaml", 0, "warning", "YAML file at the top of the repository is not read"),
    ),
}


def _assert_reported(problems, expected):
    file, line, severity, fragment = expected
    matching = [problem for problem in problems if fragment in problem.message]
    assert matching, f"no problem contains {fragment!r}; got: {[p.message for p in problems]}"
    problem = matching[0]
    assert problem.file == file
    if line is not None:
        assert problem.line == line
    assert problem.severity == severity
    assert problem.fix


@pytest.mark.parametrize(("changes", "expected"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_reported_at_its_place(tmp_path, changes, expected):
    result = check_repository(write_repository(tmp_path, changes))

    _assert_reported(result.problems, expected)
    assert result.repository is None


@pytest.mark.parametrize(("changes", "expected"), WARNING_CASES.values(), ids=WARNING_CASES.keys())
def test_warning_reported_at_its_place(tmp_path, changes, expected):
    result = check_repository(write_repository(tmp_path, changes))

    _assert_reported(result.problems, expected)
    assert result.errors == []
    assert result.repository is not None


def test_every_problem_reported_sorted(tmp_path):
    changes = {
        "people/zed.yaml": "username: zed\nname: Zed\ngroups: [ghosts]\nkeys:\n  - hwid: 08:01:02:03\n",
        "people/bob.yaml": "username: bob\nname: Bob\ngroups: [members, nobody]\n",
        "locks/front-door.yaml": "name: front-door\ntimezone: Mars/Olympus\n",
        "groups/members.yaml": "name: members\naccess:\n  - locks: [front-door, side-door]\n    schedule: nightly\n",
    }
    problems = problems_of(write_repository(tmp_path, changes))

    places = [(problem.file, problem.line) for problem in problems]
    assert places == sorted(places)
    assert places == [
        ("groups/members.yaml", 3),
        ("groups/members.yaml", 4),
        ("locks/front-door.yaml", 1),  # warning: no certificate
        ("locks/front-door.yaml", 2),
        ("people/bob.yaml", 3),
        ("people/zed.yaml", 3),
        ("people/zed.yaml", 5),
    ]


def test_broken_file_does_not_cascade(tmp_path):
    changes = {"groups/members.yaml": "name: members\naccess: [\n"}
    problems = problems_of(write_repository(tmp_path, changes))

    assert [problem.file for problem in problems] == ["groups/members.yaml"]


def test_schema_error_file_does_not_cascade(tmp_path):
    changes = {"groups/members.yaml": "name: members\naccess:\n  - locks: front-door\n    schedule: evenings\n"}
    problems = problems_of(write_repository(tmp_path, changes))

    assert [problem.file for problem in problems] == ["groups/members.yaml"]


def test_schema_error_does_not_hide_other_errors(tmp_path):
    changes = {
        "people/alice.yaml": "username: alice\nname: Alice\nemial: alice@example.org\ngroups: [members, nobody, 7]\n"
                             "keys:\n  - hwid: 08:01:02:03\n  - hwid: 04123456\n",
        "schedules/evenings.yaml": "name: evenings\nwindows:\n  - days: [fri, satt]\n    start: '22:00'\n"
                                   "    end: '22:00'\n",
    }
    problems = problems_of(write_repository(tmp_path, changes))

    assert [(problem.file, problem.line, problem.message) for problem in problems] == [
        ("people/alice.yaml", 3, "unknown field 'emial' in this person"),
        ("people/alice.yaml", 4, "unknown group 'nobody'"),
        ("people/alice.yaml", 4, "groups[2] must be text, not the number 7"),
        ("people/alice.yaml", 6, "hardware id '08:01:02:03' is a random UID (4 bytes starting with 08): the card sends "
                                 "a new one on every tap, so it cannot identify anyone; enrol another card"),
        ("people/alice.yaml", 7, "keys[1].hwid must be text, not the number 1091374 (YAML reads 04123456 that way)"),
        ("schedules/evenings.yaml", 3, "windows[0].days[1] is 'satt', which is not one of: mon, tue, wed, thu, fri, sat, sun"),
        ("schedules/evenings.yaml", 5, "window from 22:00 to 22:00 has zero length"),
    ]


def test_partial_file_gives_no_warnings(tmp_path):
    changes = {"people/alice.yaml": "username: alice\nname: Alice\ngroups: members\n"}
    problems = problems_of(write_repository(tmp_path, changes))

    assert [problem.severity for problem in problems] == ["error"]


def test_fingerprint_normalised(tmp_path):
    spelled = ":".join(["AB"] * 32)
    changes = {"locks/front-door.yaml": f"name: front-door\ntimezone: UTC\ncertificate:\n  sha256: '{spelled}'\n"}
    repository = load_repository(write_repository(tmp_path, changes))

    assert repository.locks["front-door"].certificate_sha256 == FINGERPRINT


def test_model_values(tmp_path):
    repository = load_repository(write_repository(tmp_path))

    lock = repository.locks["front-door"]
    assert (lock.valid_days, lock.last_seen_precision, lock.unlock_seconds) == (7, 3600, 5)
    assert lock.break_glass[0].hwid == "04:11:22:33:44:55:66"
    assert repository.schedules["evenings"].windows == (Window(frozenset({4}), 22 * 60, 2 * 60,
                                                               repository.schedules["evenings"].windows[0].source),)
    assert repository.schedules["evenings"].windows[0].crosses_midnight
    assert repository.schedules["always"].always
    alice = repository.people["alice"]
    assert alice.keys[0].hwid == "04:a2:3b:4c:5d:6e:7f"
    assert str(alice.keys[0].source) == "people/alice.yaml:5:5"
    assert str(alice.source) == "people/alice.yaml:1:11"


def test_break_glass_key_shared_by_locks_allowed(tmp_path):
    changes = {
        "locks/back-door.yaml": f"name: back-door\ntimezone: UTC\ncertificate:\n  sha256: '{'cd' * 32}'\n"
                                "break_glass:\n  - hwid: '04:11:22:33:44:55:66'\n",
        "groups/members.yaml": "name: members\naccess:\n  - locks: [front-door, back-door]\n    schedule: evenings\n",
    }
    assert problems_of(write_repository(tmp_path, changes)) == []


def test_load_repository_raises_with_problems(tmp_path):
    changes = {"people/alice.yaml": "username: alice\nname: Alice\ngroups: [nobody]\n"}

    with pytest.raises(AccessInvalid) as caught:
        load_repository(write_repository(tmp_path, changes))

    assert [problem.message for problem in caught.value.problems] == ["unknown group 'nobody'"]
    assert "people/alice.yaml:3:10" in str(caught.value)


def test_missing_directory_reported(tmp_path):
    result = check_repository(tmp_path / "nowhere")

    assert result.repository is None
    assert "not a directory" in result.problems[0].message


def test_empty_directory_reported(tmp_path):
    result = check_repository(tmp_path)

    assert result.repository is None
    assert "no access files found" in result.problems[0].message


# -- lock certificate files ------------------------------------------------------------------------


def _write_certificate(path: Path, common_name: str, not_after: datetime) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=365))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _lock_with_certificate(fingerprint: str, file: str = "certs/front-door.pem") -> dict[str, str]:
    return {"locks/front-door.yaml": f"name: front-door\ntimezone: UTC\ncertificate:\n"
                                     f"  sha256: '{fingerprint}'\n  file: {file}\n"}


NOW = datetime(2026, 12, 4, 20, 0, tzinfo=timezone.utc)


def test_certificate_expiring_soon_warned(tmp_path):
    fingerprint = _write_certificate(tmp_path / "certs/front-door.pem", "front-door", NOW + timedelta(days=10))
    result = check_repository(write_repository(tmp_path, _lock_with_certificate(fingerprint)), now=NOW)

    _assert_reported(result.problems, ("locks/front-door.yaml", 5, "warning",
                                       "certificate 'certs/front-door.pem' of lock 'front-door' expires on 2026-12-14"))
    assert result.repository is not None


def test_certificate_expired_warned(tmp_path):
    fingerprint = _write_certificate(tmp_path / "certs/front-door.pem", "front-door", NOW - timedelta(days=1))
    result = check_repository(write_repository(tmp_path, _lock_with_certificate(fingerprint)), now=NOW)

    _assert_reported(result.problems, ("locks/front-door.yaml", 5, "warning", "expired on 2026-12-03"))


def test_certificate_valid_long_enough_is_quiet(tmp_path):
    fingerprint = _write_certificate(tmp_path / "certs/front-door.pem", "front-door", NOW + timedelta(days=200))

    assert problems_of(write_repository(tmp_path, _lock_with_certificate(fingerprint)), now=NOW) == []


def test_certificate_fingerprint_mismatch_rejected(tmp_path):
    _write_certificate(tmp_path / "certs/front-door.pem", "front-door", NOW + timedelta(days=200))
    problems = problems_of(write_repository(tmp_path, _lock_with_certificate("cd" * 32)), now=NOW)

    _assert_reported(problems, ("locks/front-door.yaml", 4, "error", "does not match 'certs/front-door.pem'"))


def test_certificate_of_other_lock_warned(tmp_path):
    fingerprint = _write_certificate(tmp_path / "certs/front-door.pem", "back-door", NOW + timedelta(days=200))
    problems = problems_of(write_repository(tmp_path, _lock_with_certificate(fingerprint)), now=NOW)

    _assert_reported(problems, ("locks/front-door.yaml", 5, "warning", "is issued to 'back-door'"))


@pytest.mark.parametrize(
    ("file", "content", "fragment"),
    [
        ("certs/missing.pem", None, "cannot read certificate file 'certs/missing.pem'"),
        ("certs/front-door.pem", b"not a certificate\n", "is not an X.509 certificate"),
        ("../outside.pem", None, "is outside the access repository"),
    ],
)
def test_unreadable_certificate_rejected(tmp_path, file, content, fragment):
    root = tmp_path / "access"
    if content is not None:
        (root / file).parent.mkdir(parents=True)
        (root / file).write_bytes(content)
    problems = problems_of(write_repository(root, _lock_with_certificate(FINGERPRINT, file)), now=NOW)

    _assert_reported(problems, ("locks/front-door.yaml", 5, "error", fragment))


# -- the shipped example and the synthetic generator ---------------------------------------------


def test_example_repository_is_clean():
    result = check_repository(REPOSITORY_ROOT / "access")

    assert result.problems == []
    repository = result.repository
    assert len(repository.people) >= 25
    assert len(repository.groups) == 6
    assert len(repository.locks) == 4
    assert {lock.timezone for lock in repository.locks.values()} == {"Europe/Amsterdam", "America/New_York"}


def test_example_repository_shows_the_features():
    repository = load_repository(REPOSITORY_ROOT / "access")

    windows = [window for schedule in repository.schedules.values() for window in schedule.windows]
    keys = [key for person in repository.people.values() for key in person.keys]
    rules = [rule for group in repository.groups.values() for rule in group.access]
    assert any(window.crosses_midnight for window in windows)
    assert any(schedule.closed for schedule in repository.schedules.values())
    assert any(person.valid_until is not None and person.valid_until.year <= 2026 for person in repository.people.values())
    assert any(not key.enabled for key in keys)
    assert any(lock.break_glass for lock in repository.locks.values())
    assert any(rule.office_mode for rule in rules)


def test_synthetic_organisation_is_valid(tmp_path):
    organisation = generate_organisation(tmp_path, people=60, keys_per_person=2, groups=7, locks=12, seed=3)
    result = check_repository(tmp_path)

    assert result.errors == []
    assert len(result.repository.people) == organisation.people == 60
    assert sum(len(person.keys) for person in result.repository.people.values()) == organisation.keys == 120
    assert len(result.repository.locks) == 12


def test_synthetic_organisation_is_deterministic(tmp_path):
    generate_organisation(tmp_path / "one", people=30, groups=4, locks=5, seed=9)
    generate_organisation(tmp_path / "two", people=30, groups=4, locks=5, seed=9)

    files = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*.yaml"))
    assert files == sorted(path.relative_to(tmp_path / "two") for path in (tmp_path / "two").rglob("*.yaml"))
    for relative in files:
        assert (tmp_path / "one" / relative).read_bytes() == (tmp_path / "two" / relative).read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("usernamekyhwid:-[]{}&*!'\"# \n0489")), max_size=150))
def test_arbitrary_person_file_reported_not_raised(tmp_path, text):
    root = write_repository(tmp_path, {"people/alice.yaml": text})

    result = check_repository(root)

    assert all(problem.file for problem in result.problems)


FIELD_NAMES = ["username", "name", "email", "enabled", "valid_from", "valid_until", "groups", "keys", "hwid",
               "description", "access", "locks", "schedule", "office_mode", "timezone", "certificate", "sha256",
               "file", "bundle", "valid_days", "lockdown", "break_glass", "always", "windows", "days", "start",
               "end", "date_ranges", "closed", "date", "from", "until", "note"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 100_000),
    st.sampled_from(["members", "front-door", "evenings", "always", "alice", "UTC", "Europe/Amsterdam", "mon", "fri",
                     "09:00", "24:00", "00:00", "2026-02-30", "2026-12-31", "2025-01-01", "04:a2:3b:4c", "08:00:00:00",
                     "04a23b4c5d6e7f", "ab" * 32, "certs/x.pem", "../x.pem", ""]),
)
VALUES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=5)), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["people/alice.yaml", "groups/members.yaml", "locks/front-door.yaml",
                             "schedules/evenings.yaml"]),
       document=st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=8))
def test_structured_garbage_reported_not_raised(tmp_path, kind, document):
    import yaml

    root = write_repository(tmp_path, {kind: yaml.safe_dump(document)})

    result = check_repository(root)

    assert all(problem.message for problem in result.problems)


# -- fix lines and warnings a newcomer met --------------------------------------------------------


@pytest.mark.parametrize(("hwid", "fix"), [
    ("08:a2:3b:4c", "enrol another card"),
    ("08a23b4c", "enrol another card"),
    ("04:a2:3b:4c:5d", "copy the UID again"),
    ("04:a2:3b:zz", "copy the UID again"),
])
def test_hardware_id_fix_matches_the_error(tmp_path, hwid, fix):
    changes = {"people/alice.yaml": f"username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: '{hwid}'\n"}
    [problem] = problems_of(write_repository(tmp_path, changes))

    assert fix in problem.fix
    if "random UID" in problem.message:
        assert "copy the UID again" not in problem.fix


def test_lock_without_certificate_warned(tmp_path):
    changes = {"locks/front-door.yaml": "name: front-door\ntimezone: Europe/Amsterdam\n"}
    [problem] = problems_of(write_repository(tmp_path, changes))

    assert (problem.file, problem.line, problem.severity) == ("locks/front-door.yaml", 1, "warning")
    assert "has no 'certificate:'" in problem.message and "403" in problem.message
    assert "doorlock pki issue-lock front-door" in problem.fix


def test_disabled_lock_without_certificate_not_warned(tmp_path):
    changes = {"locks/front-door.yaml": "name: front-door\ntimezone: Europe/Amsterdam\nenabled: false\n"}
    problems = problems_of(write_repository(tmp_path, changes))

    assert not any("certificate" in problem.message for problem in problems)


def test_certificate_shared_by_two_locks_rejected(tmp_path):
    changes = {
        "locks/back-door.yaml": f'name: back-door\ntimezone: Europe/Amsterdam\ncertificate:\n  sha256: "{FINGERPRINT}"\n',
        "groups/members.yaml": "name: members\naccess:\n  - locks: [front-door, back-door]\n    schedule: evenings\n",
    }
    [problem] = problems_of(write_repository(tmp_path, changes))

    # Files are checked in name order, so the second file in that order carries the error.
    assert (problem.file, problem.line, problem.severity) == ("locks/front-door.yaml", 4, "error")
    assert "same certificate sha256 as lock 'back-door'" in problem.message
    assert "doorlock pki issue-lock front-door" in problem.fix


def test_validity_above_lock_limit_warned(tmp_path):
    changes = {
        "locks/front-door.yaml": f'name: front-door\ntimezone: Europe/Amsterdam\ncertificate:\n  sha256: "{FINGERPRINT}"\n'
                                 "bundle:\n  valid_days: 45\n",
    }
    [problem] = problems_of(write_repository(tmp_path, changes))

    assert (problem.file, problem.line, problem.severity) == ("locks/front-door.yaml", 6, "warning")
    assert "valid for 45 days" in problem.message
    assert "max_bundle_validity_days = 45" in problem.fix
