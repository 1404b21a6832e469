"""`doorlock compile`: deterministic, minimal, monotonic builds and clear errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler import signing
from compiler.cli import main
from lockclient.bundle import decide, verify_bundle, verify_signers
from lockclient.dsse import key_id
from tests.bundle_fixtures import NOW, compile_verified, make_trust, small_repository

LOCK_YAML = """\
name: {name}
description: {description}
timezone: Europe/Amsterdam
certificate:
  sha256: "{fingerprint}"
bundle:
  valid_days: 7
break_glass:
  - hwid: "04:11:22:33:44:55:66"
    description: key safe for the fire brigade
"""

PEOPLE = {
    "alice": """\
username: alice
name: Alice Jansen
email: alice@example.org
groups: [members]
keys:
  - hwid: "04A23B4C5D6E7F"
    description: blue key fob
""",
    "bob": """\
username: bob
name: Bob de Vries
email: bob@example.net
groups: [members, night-owls]
keys:
  - hwid: "04:b0:b0:b0:b0:b0:01"
    description: office card
""",
}

GROUPS = {
    "members": """\
name: members
description: Everyone with a membership
access:
  - locks: [main-entrance, back-gate]
    schedule: workshop-hours
""",
    "night-owls": """\
name: night-owls
description: Allowed at night
access:
  - locks: [back-gate]
    schedule: always
    office_mode: true
""",
}

SCHEDULES = {
    "workshop-hours": """\
name: workshop-hours
description: Staffed workshop hours
windows:
  - days: [mon, tue, wed, thu, fri]
    start: "09:00"
    end: "18:00"
  - days: [fri]
    start: "22:00"
    end: "02:00"
""",
    "always": """\
name: always
description: Open at all times
always: true
""",
}

SECRET_WORDS = ["alice", "Alice Jansen", "alice@example.org", "bob", "Bob de Vries", "bob@example.net",
                "members", "night-owls", "blue key fob", "office card", "workshop-hours", "fire brigade",
                "Everyone with a membership", "Allowed at night", "Staffed workshop hours", "Open at all times"]


def write_access(root: Path) -> Path:
    for kind, entries in (("people", PEOPLE), ("groups", GROUPS), ("schedules", SCHEDULES)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for name, text in entries.items():
            (root / kind / f"{name}.yaml").write_text(text)
    (root / "locks").mkdir(exist_ok=True)
    for name, fingerprint in (("main-entrance", "ab" * 32), ("back-gate", "cd" * 32)):
        text = LOCK_YAML.format(name=name, description=f"{name} of the building", fingerprint=fingerprint)
        (root / "locks" / f"{name}.yaml").write_text(text)
    return root


@pytest.fixture()
def setup(tmp_path):
    """An access repository with a signers document, and the signing key file."""
    access = write_access(tmp_path / "access")
    keys = tmp_path / "keys"
    keys.mkdir()
    root = signing.generate_key_pair(keys / "root")
    ci = signing.generate_key_pair(keys / "ci")
    document = signing.build_signers_document(
        signing.load_private_key(root.private), [(signing.load_public_key_file(ci.public), "ci")],
        1, NOW - 86400, NOW + 365 * 86400,
    )
    (access / "signers.json").write_bytes(document)
    return tmp_path, access, ci.private, root


def run_compile(*arguments: str, env: dict | None = None):
    return CliRunner().invoke(main, ["compile", *arguments], env=env, catch_exceptions=False)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def payload_of(envelope: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(envelope)["payload"]))


def iso(instant: int) -> str:
    from lockclient.bundle import format_time
    return format_time(instant)


def test_compile_writes_bundle_per_lock(setup):
    tmp_path, access, key, _ = setup
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "build"), "--now", iso(NOW))
    assert result.exit_code == 0, result.output
    assert sorted(tree_bytes(tmp_path / "build")) == [
        "bundles/back-gate.json", "bundles/main-entrance.json", "manifest.json", "signers.json"]
    assert f"main-entrance: 2 keys, version {NOW}, changed" in result.output
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert manifest["bundles"]["back-gate"]["certificate_sha256"] == "cd" * 32


def test_same_input_gives_identical_bytes(setup):
    tmp_path, access, key, _ = setup
    for out in ("one", "two"):
        result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / out), "--now", iso(NOW))
        assert result.exit_code == 0, result.output
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_bundles_carry_no_names_or_emails(setup):
    tmp_path, access, key, _ = setup
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "build"), "--now", iso(NOW))
    for lock, other in (("main-entrance", "back-gate"), ("back-gate", "main-entrance")):
        envelope = (tmp_path / "build" / "bundles" / f"{lock}.json").read_bytes()
        text = base64.b64decode(json.loads(envelope)["payload"]).decode()
        for word in SECRET_WORDS + [other, "of the building"]:
            assert word not in text, f"{word!r} leaked into the bundle of {lock}"


def test_unchanged_bundle_copied_byte_for_byte(setup):
    tmp_path, access, key, _ = setup
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "first"), "--now", iso(NOW))
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "second"),
                         "--previous", str(tmp_path / "first"), "--now", iso(NOW + 86400))
    assert result.exit_code == 0, result.output
    first, second = tree_bytes(tmp_path / "first"), tree_bytes(tmp_path / "second")
    assert second["bundles/main-entrance.json"] == first["bundles/main-entrance.json"]
    assert second["bundles/back-gate.json"] == first["bundles/back-gate.json"]
    assert "main-entrance: 2 keys, version %d, unchanged" % NOW in result.output


def test_changed_access_gets_higher_version(setup):
    tmp_path, access, key, _ = setup
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "first"), "--now", iso(NOW))
    (access / "people" / "bob.yaml").write_text(PEOPLE["bob"].replace("groups: [members, night-owls]", "groups: [members]"))
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "second"),
                         "--previous", str(tmp_path / "first"), "--now", iso(NOW + 60))
    assert result.exit_code == 0, result.output
    first, second = tree_bytes(tmp_path / "first"), tree_bytes(tmp_path / "second")
    assert payload_of(second["bundles/back-gate.json"])["version"] == NOW + 60
    assert second["bundles/main-entrance.json"] == first["bundles/main-entrance.json"]


def test_version_above_int64_not_produced(setup):
    tmp_path, access, key, _ = setup
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "first"), "--now", iso(NOW))
    manifest_path = tmp_path / "first" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["bundles"]["back-gate"]["version"] = 2**63 - 1
    manifest_path.write_text(json.dumps(manifest))
    (access / "people" / "bob.yaml").unlink()
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "second"),
                         "--previous", str(tmp_path / "first"), "--now", iso(NOW + 60))
    assert result.exit_code == 1
    assert "above 2**63-1" in result.output
    assert not (tmp_path / "second").exists()


def test_version_increases_even_when_clock_goes_back(setup):
    tmp_path, access, key, _ = setup
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "first"), "--now", iso(NOW))
    (access / "people" / "alice.yaml").unlink()
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "second"),
                         "--previous", str(tmp_path / "first"), "--now", iso(NOW - 3600))
    assert result.exit_code == 0, result.output
    version = payload_of(tree_bytes(tmp_path / "second")["bundles/main-entrance.json"])["version"]
    assert version == NOW + 1


def test_bundle_near_expiry_resigned(setup):
    tmp_path, access, key, _ = setup
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "first"), "--now", iso(NOW))
    later = NOW + 6 * 86400  # one day before the 7-day bundles expire, inside the 2-day margin
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "second"),
                         "--previous", str(tmp_path / "first"), "--now", iso(later))
    assert result.exit_code == 0, result.output
    payload = payload_of(tree_bytes(tmp_path / "second")["bundles/main-entrance.json"])
    assert payload["version"] == later
    assert payload["expires_at"] == iso(later + 7 * 86400)


def test_resign_margin_option(setup):
    tmp_path, access, key, _ = setup
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "first"), "--now", iso(NOW))
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "second"),
                         "--previous", str(tmp_path / "first"), "--now", iso(NOW + 86400), "--resign-margin", "6.5")
    assert result.exit_code == 0, result.output
    assert "unchanged" not in result.output


def test_previous_build_replaced_in_place(setup):
    tmp_path, access, key, _ = setup
    build = tmp_path / "build"
    run_compile(str(access), "--key", str(key), "--out", str(build), "--now", iso(NOW))
    (access / "people" / "alice.yaml").unlink()
    result = run_compile(str(access), "--key", str(key), "--out", str(build), "--previous", str(build),
                         "--now", iso(NOW + 60))
    assert result.exit_code == 0, result.output
    assert payload_of((build / "bundles" / "main-entrance.json").read_bytes())["version"] == NOW + 60
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_key_from_environment(setup):
    tmp_path, access, key, _ = setup
    result = run_compile(str(access), "--out", str(tmp_path / "build"), "--now", iso(NOW),
                         env={signing.SIGNING_KEY_ENV: key.read_text()})
    assert result.exit_code == 0, result.output


def test_source_commit_recorded_from_git(setup):
    tmp_path, access, key, _ = setup
    head = _git_commit(access, "first")
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "build"), "--now", iso(NOW))
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert manifest["source_commit"] == head
    assert payload_of((tmp_path / "build" / "bundles" / "back-gate.json").read_bytes())["source_commit"] == head


def test_old_pipeline_rerun_rejected(setup):
    tmp_path, access, key, _ = setup
    old = _git_commit(access, "first")
    (access / "people" / "alice.yaml").unlink()
    _git_commit(access, "remove alice")
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "published"), "--now", iso(NOW))

    _git(access, "reset", "--quiet", "--hard", old)
    arguments = [str(access), "--key", str(key), "--out", str(tmp_path / "rerun"),
                 "--previous", str(tmp_path / "published"), "--now", iso(NOW + 60)]
    result = run_compile(*arguments)
    assert result.exit_code != 0
    assert "not an ancestor" in result.output
    assert not (tmp_path / "rerun").exists()
    assert run_compile(*arguments, "--allow-older-commit").exit_code == 0


def test_build_from_newer_commit_accepted(setup):
    tmp_path, access, key, _ = setup
    _git_commit(access, "first")
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "published"), "--now", iso(NOW))
    (access / "people" / "alice.yaml").unlink()
    head = _git_commit(access, "remove alice")
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "next"),
                         "--previous", str(tmp_path / "published"), "--now", iso(NOW + 60))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "next" / "manifest.json").read_text())["source_commit"] == head


def test_unlisted_signing_key_rejected(setup):
    tmp_path, access, _, _ = setup
    other = signing.generate_key_pair(tmp_path / "keys" / "other")
    result = run_compile(str(access), "--key", str(other.private), "--out", str(tmp_path / "build"), "--now", iso(NOW))
    assert result.exit_code == 1
    assert f"signing key {other.key_id} is not listed" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "build").exists()


def test_failed_build_keeps_previous_output(setup):
    tmp_path, access, key, _ = setup
    run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "build"), "--now", iso(NOW))
    before = tree_bytes(tmp_path / "build")
    other = signing.generate_key_pair(tmp_path / "keys" / "other")
    result = run_compile(str(access), "--key", str(other.private), "--out", str(tmp_path / "build"), "--now", iso(NOW + 60))
    assert result.exit_code == 1
    assert tree_bytes(tmp_path / "build") == before


def test_rolled_back_signers_document_rejected(setup):
    tmp_path, access, key, root = setup
    newer = tmp_path / "signers-v2.json"
    newer.write_bytes(signing.build_signers_document(
        signing.load_private_key(root.private),
        [(signing.load_private_key(key).public_key(), "ci")], 2, NOW, NOW + 30 * 86400))
    run_compile(str(access), "--key", str(key), "--signers", str(newer), "--out", str(tmp_path / "first"), "--now", iso(NOW))
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "second"),
                         "--previous", str(tmp_path / "first"), "--now", iso(NOW + 60))
    assert result.exit_code == 1
    assert "lower than the published version 2" in result.output


@pytest.mark.parametrize(("arguments", "message"), [
    (["--key", "missing.key"], "key file missing.key not found"),
    (["--now", "yesterday"], "is not an ISO 8601 time"),
    (["--now", "2026-12-04T20:00:00"], "has no time zone"),
    (["--signers", "nowhere.json"], "signers document nowhere.json not found"),
    (["--previous", "no-such-build"], "previous build directory no-such-build not found"),
])
def test_cli_errors_name_the_problem(setup, arguments, message, monkeypatch):
    tmp_path, access, key, _ = setup
    monkeypatch.chdir(tmp_path)
    defaults = {"--key": str(key), "--now": iso(NOW)}
    for option, value in zip(arguments[0::2], arguments[1::2]):
        defaults[option] = value
    flat = [item for pair in defaults.items() for item in pair]
    result = run_compile(str(access), "--out", "build", *flat)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "build").exists()


def test_missing_key_without_environment(setup, monkeypatch):
    tmp_path, access, _, _ = setup
    monkeypatch.delenv(signing.SIGNING_KEY_ENV, raising=False)
    result = run_compile(str(access), "--out", str(tmp_path / "build"), "--now", iso(NOW))
    assert result.exit_code == 1
    assert signing.SIGNING_KEY_ENV in result.output


def test_foreign_output_directory_not_replaced(setup):
    tmp_path, access, key, _ = setup
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    result = run_compile(str(access), "--key", str(key), "--out", str(precious), "--now", iso(NOW))
    assert result.exit_code == 1
    assert "contains no manifest.json" in result.output
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_invalid_access_reported_without_traceback(setup):
    tmp_path, access, key, _ = setup
    (access / "people" / "carol.yaml").write_text("username: carol\nname: Carol\ngroups: [nonexistent]\nkeys: []\n")
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "build"), "--now", iso(NOW))
    assert result.exit_code == 1
    assert "carol.yaml" in result.output
    assert "Traceback" not in result.output


def test_identical_interval_lists_shared():
    build, bundles = compile_verified(small_repository(), make_trust())
    front = bundles["front-door"]
    # Alice (workshop hours) and Bob (always) differ; a second always-key would share Bob's list.
    assert len(front.intervals) == len(set(map(tuple, front.intervals)))
    assert len(front.intervals) == len(set(front.keys.values()) | set(front.office_mode.values()))


def test_keys_with_equal_intervals_share_one_list():
    from dataclasses import replace
    from compiler.model import AccessRule, Group, Key, Person

    repository = small_repository()
    # Carol is in Bob's group; Dan reaches the same lock and schedule through another group, so
    # his list is computed separately but equal in value. Both must point at Bob's list.
    repository.people["carol"] = Person("carol", "Carol", groups=("staff",), keys=(Key("04:c0:c0:c0:c0:c0:01"),))
    repository.groups["porters"] = Group("porters", access=(AccessRule(("front-door",), "always"),))
    repository.people["dan"] = Person("dan", "Dan", groups=("porters",), keys=(Key("04:d0:d0:d0:d0:d0:01"),))
    build, bundles = compile_verified(repository, make_trust())
    front = bundles["front-door"]

    bob_list = front.keys["04:b0:b0:b0:b0:b0:01"]
    assert front.keys["04:c0:c0:c0:c0:c0:01"] == bob_list
    assert front.keys["04:d0:d0:d0:d0:d0:01"] == bob_list
    assert front.office_mode["04:b0:b0:b0:b0:b0:01"] == bob_list
    assert len(front.intervals) == len(set(map(tuple, front.intervals)))


def test_disabled_lock_gets_no_bundle():
    from dataclasses import replace
    repository = small_repository()
    repository.locks["workshop"] = replace(repository.locks["workshop"], enabled=False)
    build, _ = compile_verified(repository, make_trust())
    assert sorted(build.bundles) == ["front-door"]


def test_break_glass_and_office_mode_in_bundle():
    build, bundles = compile_verified(small_repository(), make_trust())
    front = bundles["front-door"]
    assert front.break_glass == {"04:11:22:33:44:55:66"}
    assert list(front.office_mode) == ["04:b0:b0:b0:b0:b0:01"]
    assert decide(front, "04:11:22:33:44:55:66", NOW + 30 * 86400).code == "break-glass"


def _git(directory: Path, *arguments: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org", "-C", str(directory), *arguments],
        check=True, capture_output=True, text=True,
    )
    return result.stdout.strip()


def _git_commit(directory: Path, message: str) -> str:
    if not (directory / ".git").exists():
        _git(directory, "init", "--quiet")
    _git(directory, "add", "--all")
    _git(directory, "commit", "--quiet", "-m", message)
    return _git(directory, "rev-parse", "HEAD")


def test_expired_signers_document_rejected(setup):
    tmp_path, access, key, root = setup
    expired = tmp_path / "expired-signers.json"
    expired.write_bytes(signing.build_signers_document(
        signing.load_private_key(root.private),
        [(signing.load_private_key(key).public_key(), "ci")], 1, NOW - 30 * 86400, NOW - 86400))
    result = run_compile(str(access), "--key", str(key), "--signers", str(expired),
                         "--out", str(tmp_path / "build"), "--now", iso(NOW))
    assert result.exit_code == 1
    assert "expired at" in result.output
    assert not (tmp_path / "build").exists()


def test_summary_says_one_key_not_one_keys(setup):
    tmp_path, access, key, _ = setup
    # Without alice's fob, each lock holds bob's card only.
    (access / "people" / "alice.yaml").write_text(PEOPLE["alice"].split("keys:")[0])
    result = run_compile(str(access), "--key", str(key), "--out", str(tmp_path / "build"), "--now", iso(NOW))
    assert result.exit_code == 0, result.output
    assert f"back-gate: 1 key, version {NOW}, changed" in result.output
    assert f"main-entrance: 1 key, version {NOW}, changed" in result.output
    assert "2 bundles (2 changed)" in result.output
