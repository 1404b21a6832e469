"""``doorlock diff``: access changes between two git revisions (or directories), in plain words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler.cli import main
from tests.access_samples import BASE_FILES, git_commit, git_init, write_access


def run_diff(repo: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["diff", *args, "--repo", str(repo)], catch_exceptions=False)
    return result.exit_code, result.output


def diff_json(repo: Path, changes: dict[str, str | None]) -> dict:
    """Commit the base repository, then ``changes`` on top, and return the JSON diff of the two."""
    git_init(repo)
    write_access(repo)
    git_commit(repo, "base")
    write_access(repo, changes)
    git_commit(repo, "change")
    code, output = run_diff(repo, "HEAD~1", "HEAD", "--format", "json")
    assert code == 0, output
    return json.loads(output)


def texts(section: list[dict]) -> list[str]:
    return [change["text"] for change in section]


def kinds(diff: dict, section: str, subject: str) -> list[str]:
    return [change["kind"] for change in diff[section].get(subject, [])]


def edit(path: str, old: str, new: str) -> dict[str, str]:
    text = BASE_FILES[path]
    assert old in text, f"{old!r} not in {path}"
    return {path: text.replace(old, new)}


# -- formatting-only changes ----------------------------------------------------------------

REFORMATTED_ALICE = """\
# Alice joined in 2024; keys handed out at the front desk.
username:   alice
name: "Alice Jansen"     # display name
email: alice@example.org
keys:
- hwid: "04A23B4C5D6E7F"        # same key, other spelling
  description: blue key fob
groups:
  - members
  - workshop
"""


def test_comment_and_formatting_change_is_no_change(tmp_path):
    diff = diff_json(tmp_path, {
        "people/alice.yaml": REFORMATTED_ALICE,
        "groups/members.yaml": "# who may enter the building\n" + BASE_FILES["groups/members.yaml"],
    })
    assert diff["no_change_in_access"] is True
    assert diff["sensitive"] == []
    assert diff["people"] == {}


def test_description_only_change_markdown_says_no_change(tmp_path):
    git_init(tmp_path)
    write_access(tmp_path)
    git_commit(tmp_path, "base")
    write_access(tmp_path, edit("people/alice.yaml", "blue key fob", "blue key fob (replaced)"))
    git_commit(tmp_path, "describe")

    code, output = run_diff(tmp_path, "HEAD~1", "HEAD")
    assert code == 0
    assert "No change in access" in output


# -- grants and schedules -----------------------------------------------------------------------


def test_grant_added_per_person_and_per_lock(tmp_path):
    diff = diff_json(tmp_path, edit("people/bob.yaml", "groups: [members]", "groups: [members, workshop]"))
    assert texts(diff["people"]["bob"]) == ["bob: gains workshop, Mon–Fri 09:00–18:00 via workshop"]
    assert kinds(diff, "locks", "workshop") == ["people-gained"]
    assert "bob" in diff["locks"]["workshop"][0]["text"]
    assert diff["sensitive"] == []


def test_grant_removed(tmp_path):
    diff = diff_json(tmp_path, edit("people/alice.yaml", "groups: [members, workshop]", "groups: [members]"))
    assert kinds(diff, "people", "alice") == ["grant-removed"]
    assert "loses workshop" in diff["people"]["alice"][0]["text"]
    assert kinds(diff, "locks", "workshop") == ["people-lost"]


def test_schedule_change_in_local_time(tmp_path):
    diff = diff_json(tmp_path, {"schedules/workshop-hours.yaml": """\
name: workshop-hours
windows:
  - days: [mon, tue, wed, thu, fri, sat, sun]
    start: "09:00"
    end: "22:00"
"""})
    assert texts(diff["people"]["alice"]) == ["alice: workshop, Mon–Fri 09:00–18:00 → Mon–Sun 09:00–22:00"]
    change = diff["people"]["alice"][0]
    assert (change["before"], change["after"]) == ("Mon–Fri 09:00–18:00", "Mon–Sun 09:00–22:00")


def test_disabled_group_removes_grants(tmp_path):
    diff = diff_json(tmp_path, edit("groups/workshop.yaml", "access:", "enabled: false\naccess:"))
    assert kinds(diff, "people", "alice") == ["grant-removed"]


def test_same_hours_through_another_group_is_a_route_change(tmp_path):
    diff = diff_json(tmp_path, {
        "groups/evening.yaml": "name: evening\naccess:\n  - locks: [workshop]\n    schedule: workshop-hours\n",
        **edit("people/alice.yaml", "groups: [members, workshop]", "groups: [members, evening]"),
    })
    assert kinds(diff, "people", "alice") == ["grant-route-changed"]
    assert "same hours" in diff["people"]["alice"][0]["text"]
    assert diff["people"]["alice"][0]["text"] == (
        "alice: workshop, same hours (Mon–Fri 09:00–18:00), other rules: "
        "Mon–Fri 09:00–18:00 via workshop → Mon–Fri 09:00–18:00 via evening")


def test_schedule_change_hidden_by_always(tmp_path):
    # Carol opens the workshop always (keyholders), so longer workshop hours change nothing for
    # her: no "hours changed" line that contradicts itself, only the rules behind them.
    carol_in_workshop = edit("people/carol.yaml", "groups: [keyholders]", "groups: [keyholders, workshop]")
    git_init(tmp_path)
    write_access(tmp_path, carol_in_workshop)
    git_commit(tmp_path, "base")
    write_access(tmp_path, {**carol_in_workshop,
                            **edit("schedules/workshop-hours.yaml", 'end: "18:00"', 'end: "22:00"')})
    git_commit(tmp_path, "longer workshop hours")
    code, output = run_diff(tmp_path, "HEAD~1", "HEAD", "--format", "json")
    assert code == 0, output
    diff = json.loads(output)

    assert kinds(diff, "people", "alice") == ["schedule-changed"]
    assert kinds(diff, "people", "carol") == ["grant-route-changed"]
    text = diff["people"]["carol"][0]["text"]
    assert text.startswith("carol: workshop, same hours (always), other rules: ")
    assert "Mon–Fri 09:00–18:00 via workshop" in text.split(" → ")[0]
    assert "Mon–Fri 09:00–22:00 via workshop" in text.split(" → ")[1]
    assert "carol" not in diff["locks"]["workshop"][0]["text"]


def test_closed_day_reported_once_per_schedule(tmp_path):
    diff = diff_json(tmp_path, edit("schedules/daytime.yaml", "  - 2026-12-25\n", "  - 2026-12-25\n  - 2026-12-26\n"))
    assert diff["people"] == {}
    assert kinds(diff, "schedules", "daytime") == ["closed-days-added"]
    assert "2026-12-26" in diff["schedules"]["daytime"][0]["text"]


# -- people and keys ------------------------------------------------------------------------------


def test_key_added(tmp_path):
    diff = diff_json(tmp_path, edit("people/alice.yaml", "    description: blue key fob\n",
                                    "    description: blue key fob\n  - hwid: 04:a2:00:00:00:00:02\n    description: spare card\n"))
    assert texts(diff["people"]["alice"]) == ["alice: key added 04:a2:00:00:00:00:02 (spare card)"]


def test_key_disabled(tmp_path):
    diff = diff_json(tmp_path, edit("people/alice.yaml", "    description: blue key fob\n",
                                    "    description: blue key fob\n    enabled: false\n"))
    assert kinds(diff, "people", "alice") == ["key-disabled"]


def test_key_removed(tmp_path):
    diff = diff_json(tmp_path, edit("people/carol.yaml",
                                    'keys:\n  - hwid: "04:c0:c0:c0:c0:c0:01"\n    description: red fob\n', "keys: []\n"))
    assert kinds(diff, "people", "carol") == ["key-removed"]
    assert "04:c0:c0:c0:c0:c0:01" in diff["people"]["carol"][0]["text"]


def test_key_expiry_changed(tmp_path):
    diff = diff_json(tmp_path, edit("people/bob.yaml", "valid_until: 2027-03-31", "valid_until: 2027-09-30"))
    change = diff["people"]["bob"][0]
    assert change["kind"] == "key-validity-changed"
    assert (change["before"], change["after"]) == ("valid until 2027-03-31", "valid until 2027-09-30")


def test_membership_expiry_changed(tmp_path):
    diff = diff_json(tmp_path, edit("people/bob.yaml", "valid_until: 2027-06-30", "valid_until: 2026-12-31"))
    assert texts(diff["people"]["bob"]) == ["bob: membership valid until 2027-06-30 → valid until 2026-12-31"]


def test_person_disabled_loses_every_lock(tmp_path):
    diff = diff_json(tmp_path, edit("people/alice.yaml", "groups:", "enabled: false\ngroups:"))
    assert kinds(diff, "people", "alice") == ["person-disabled", "grant-removed", "grant-removed"]


def test_person_added_with_grants_and_key(tmp_path):
    diff = diff_json(tmp_path, {"people/dave.yaml": "username: dave\nname: Dave\ngroups: [members]\n"
                                                    "keys:\n  - hwid: 04:d0:d0:d0:d0:d0:01\n"})
    assert kinds(diff, "people", "dave") == ["person-added", "grant-added", "key-added"]


def test_person_added_shows_membership_start(tmp_path):
    # Without the start date a reviewer would read "gains front-door" as access from today.
    diff = diff_json(tmp_path, {"people/dave.yaml": "username: dave\nname: Dave\nvalid_from: 2027-01-01\n"
                                                    "groups: [members]\n"})
    assert diff["people"]["dave"][0]["text"] == "dave: new person (membership valid from 2027-01-01)"


# -- locks -----------------------------------------------------------------------------------------


def test_lock_added(tmp_path):
    diff = diff_json(tmp_path, {
        "locks/back-door.yaml": "name: back-door\ntimezone: Europe/London\n",
        **edit("groups/members.yaml", "locks: [front-door]", "locks: [front-door, back-door]"),
    })
    assert kinds(diff, "locks", "back-door") == ["people-gained", "lock-added"]
    assert "Europe/London" in diff["locks"]["back-door"][1]["text"]


def test_lock_removed(tmp_path):
    diff = diff_json(tmp_path, {
        "locks/workshop.yaml": None,
        **edit("groups/workshop.yaml", "locks: [workshop]", "locks: [front-door]"),
        **edit("groups/keyholders.yaml", "locks: [front-door, workshop]", "locks: [front-door]"),
    })
    assert "lock-removed" in kinds(diff, "locks", "workshop")


def test_lock_disabled(tmp_path):
    diff = diff_json(tmp_path, edit("locks/workshop.yaml", "timezone:", "enabled: false\ntimezone:"))
    assert "lock-disabled" in kinds(diff, "locks", "workshop")
    assert "loses workshop" in diff["people"]["alice"][0]["text"]


def test_break_glass_removed_is_not_sensitive(tmp_path):
    diff = diff_json(tmp_path, edit("locks/front-door.yaml",
                                    'break_glass:\n  - hwid: "04:11:22:33:44:55:66"\n    description: key safe for the fire brigade\n', ""))
    assert kinds(diff, "locks", "front-door") == ["break-glass-removed"]
    assert diff["sensitive"] == []


def test_valid_days_lowered_is_not_sensitive(tmp_path):
    diff = diff_json(tmp_path, edit("locks/front-door.yaml", "valid_days: 7", "valid_days: 3"))
    assert kinds(diff, "locks", "front-door") == ["valid-days-changed"]
    assert diff["sensitive"] == []


# -- sensitive changes -------------------------------------------------------------------------------

SENSITIVE_CASES = {
    "new break-glass key": (
        edit("locks/front-door.yaml", "    description: key safe for the fire brigade\n",
             "    description: key safe for the fire brigade\n  - hwid: 04:99:99:99:99:99:99\n    description: caretaker\n"),
        "break-glass-added", "04:99:99:99:99:99:99",
    ),
    "always-open rule on a lock": (
        edit("groups/members.yaml", "schedule: daytime", "schedule: always"),
        "always-open-granted", "group members",
    ),
    "person joins an always-open group": (
        edit("people/bob.yaml", "groups: [members]", "groups: [members, keyholders]"),
        "always-open-granted", "bob",
    ),
    "offline validity raised": (
        edit("locks/front-door.yaml", "valid_days: 7", "valid_days: 30"),
        "valid-days-changed", "7 → 30 days",
    ),
    "lockdown switched on": (
        {"locks/workshop.yaml": BASE_FILES["locks/workshop.yaml"] + "lockdown: true\n"},
        "lockdown-switched", "lockdown switched ON",
    ),
    "signing key change": (
        {"signers.json": '{"payloadType": "x", "payload": "e30=", "signatures": []}\n'},
        "signers-changed", "signers.json added",
    ),
}


@pytest.mark.parametrize("case", sorted(SENSITIVE_CASES))
def test_sensitive_change_flagged(tmp_path, case):
    changes, kind, fragment = SENSITIVE_CASES[case]
    diff = diff_json(tmp_path, changes)
    flagged = [c for c in diff["sensitive"] if c["kind"] == kind]
    assert flagged, diff["sensitive"]
    assert any(fragment in c["text"] for c in flagged)


def test_lockdown_switched_off_is_sensitive(tmp_path):
    git_init(tmp_path)
    write_access(tmp_path, {"locks/workshop.yaml": BASE_FILES["locks/workshop.yaml"] + "lockdown: true\n"})
    git_commit(tmp_path, "lockdown")
    write_access(tmp_path)
    git_commit(tmp_path, "lift lockdown")

    code, output = run_diff(tmp_path, "HEAD~1", "HEAD", "--format", "json")
    assert [c["kind"] for c in json.loads(output)["sensitive"]] == ["lockdown-switched"]


def test_sensitive_changes_come_first_in_markdown(tmp_path):
    git_init(tmp_path)
    write_access(tmp_path)
    git_commit(tmp_path, "base")
    write_access(tmp_path, {
        **edit("locks/front-door.yaml", "valid_days: 7", "valid_days: 30"),
        **edit("people/bob.yaml", "groups: [members]", "groups: [members, workshop]"),
    })
    git_commit(tmp_path, "change")

    code, output = run_diff(tmp_path, "HEAD~1", "HEAD")
    assert code == 0
    assert output.index("Sensitive changes") < output.index("### People")
    assert "offline validity raised 7 → 30 days" in output.split("### People")[0]
    assert "gains workshop, Mon–Fri 09:00–18:00 via workshop" in output


def test_signers_rotation_lists_key_ids(tmp_path):
    import base64

    def signers(*keyids: str) -> str:
        payload = json.dumps({"signers": [{"keyid": k} for k in keyids]}).encode()
        return json.dumps({"payloadType": "x", "payload": base64.b64encode(payload).decode(), "signatures": []})

    git_init(tmp_path)
    write_access(tmp_path, {"signers.json": signers("aa" * 32)})
    git_commit(tmp_path, "base")
    write_access(tmp_path, {"signers.json": signers("aa" * 32, "bb" * 32)})
    git_commit(tmp_path, "rotate")

    code, output = run_diff(tmp_path, "HEAD~1", "HEAD", "--format", "json")
    assert texts(json.loads(output)["signers"]) == [f"signing keys: signing key added {'bb' * 8}…"]


# -- inputs ---------------------------------------------------------------------------------------------


def test_two_directories(tmp_path):
    base = write_access(tmp_path / "base")
    head = write_access(tmp_path / "head", edit("people/alice.yaml", "groups: [members, workshop]", "groups: [members]"))
    code, output = run_diff(tmp_path, str(base), str(head), "--format", "json")
    assert code == 0
    assert "alice" in json.loads(output)["people"]


def test_access_repository_in_subdirectory(tmp_path):
    project = git_init(tmp_path / "project")
    (project / "README").write_text("project\n")
    git_commit(project, "no access repository yet")
    write_access(project / "access")
    git_commit(project, "add access repository")

    code, output = run_diff(project / "access", "HEAD~1", "HEAD", "--format", "json")
    assert code == 0, output
    diff = json.loads(output)
    assert set(diff["locks"]) == {"front-door", "workshop"}
    assert [c["kind"] for c in diff["sensitive"]].count("break-glass-added") == 1


def test_head_defaults_to_working_tree(tmp_path):
    git_init(tmp_path)
    write_access(tmp_path)
    git_commit(tmp_path, "base")
    write_access(tmp_path, edit("people/alice.yaml", "groups: [members, workshop]", "groups: [members]"))

    code, output = run_diff(tmp_path, "HEAD", "--format", "json")
    assert json.loads(output)["head"] == "working tree"
    assert "alice" in json.loads(output)["people"]


def test_unknown_revision_is_a_clear_error(tmp_path):
    git_init(tmp_path)
    write_access(tmp_path)
    git_commit(tmp_path, "base")
    code, output = run_diff(tmp_path, "no-such-branch", "HEAD")
    assert code == 1
    assert "'no-such-branch' is neither a directory nor a git revision" in output
    assert "Traceback" not in output


def test_invalid_side_names_file_and_problem(tmp_path):
    git_init(tmp_path)
    write_access(tmp_path)
    git_commit(tmp_path, "base")
    write_access(tmp_path, edit("people/alice.yaml", "groups: [members, workshop]", "groups: [members, nosuchgroup]"))
    git_commit(tmp_path, "broken")

    code, output = run_diff(tmp_path, "HEAD~1", "HEAD")
    assert code == 1
    assert "has errors" in output
    assert "people/alice.yaml" in output
    # The side is named by its revision, the problem as file:line:column, never as a Python
    # object or the temporary directory it was exported to.
    assert "the access repository at HEAD (" in output
    assert "people/alice.yaml:" in output and "unknown group 'nosuchgroup'" in output
    assert "Problem(" not in output
    assert "doorlock-diff-" not in output


def test_long_markdown_cut_with_notice(tmp_path):
    from compiler.diff import AccessSide, diff_access, format_markdown
    from compiler.loader import load_repository
    from compiler.revision import load_directory

    people = {f"people/p{i:03d}.yaml": f"username: p{i:03d}\nname: Person {i}\ngroups: [members]\n"
              for i in range(300)}
    base = AccessSide("base", load_directory(write_access(tmp_path / "base")))
    head = AccessSide("head", load_repository(write_access(tmp_path / "head", people)))

    text = format_markdown(diff_access(base, head), limit=5_000)
    assert len(text) < 5_200
    assert text.rstrip().endswith("run `doorlock diff` locally for the rest.*")
    assert "**p000**" in text


def test_no_change_means_identical_compiled_access(tmp_path):
    """Cross-check with the compiler: "no change in access" sides expand to the same intervals."""
    from compiler.expand import expand_repository
    from compiler.loader import load_repository

    issued_at = 1_796_414_400  # 2026-12-04T20:00:00Z
    base = load_repository(write_access(tmp_path / "base"))
    reformatted = load_repository(write_access(tmp_path / "head", {"people/alice.yaml": REFORMATTED_ALICE}))
    changed = load_repository(write_access(tmp_path / "changed", edit(
        "schedules/workshop-hours.yaml", 'end: "18:00"', 'end: "22:00"')))

    from compiler.diff import AccessSide, diff_access

    assert diff_access(AccessSide("base", base), AccessSide("head", reformatted)).no_change
    assert expand_repository(base, issued_at) == expand_repository(reformatted, issued_at)
    assert not diff_access(AccessSide("base", base), AccessSide("head", changed)).no_change
    assert expand_repository(base, issued_at) != expand_repository(changed, issued_at)


def test_markdown_escapes_only_what_would_render_as_markup(tmp_path):
    git_init(tmp_path)
    write_access(tmp_path)
    git_commit(tmp_path, "base")
    write_access(tmp_path, {"people/john_doe.yaml": "username: john_doe\nname: John Doe\ngroups: [members]\n"
                                                    "keys:\n  - hwid: '04:d0:d0:d0:d0:d0:01'\n"
                                                    "    description: _spare_ fob\n"})
    git_commit(tmp_path, "add")
    write_access(tmp_path, edit("locks/front-door.yaml", "valid_days: 7", "valid_days: 1"))
    git_commit(tmp_path, "shorter")

    code, output = run_diff(tmp_path, "HEAD~1")
    assert code == 0
    heading = output.splitlines()[0]
    assert heading.startswith("## Access changes: HEAD~1 (") and heading.endswith("→ working tree")
    assert "\\" not in heading
    assert "offline validity lowered 7 → 1 day" in output

    code, output = run_diff(tmp_path, "HEAD~2", "HEAD~1")
    heading = output.splitlines()[0]
    # Two tildes on one line could strike the text between them through: both are escaped.
    assert heading.startswith("## Access changes: HEAD\\~2 (") and "HEAD\\~1 (" in heading
    assert "**john_doe**" in output
    assert "(\\_spare\\_ fob)" in output


def test_new_lock_with_one_day_offline_validity(tmp_path):
    diff = diff_json(tmp_path, {"locks/garage.yaml": "name: garage\ntimezone: UTC\nbundle:\n  valid_days: 1\n"})
    assert "bundles valid 1 day offline" in diff["locks"]["garage"][0]["text"]
