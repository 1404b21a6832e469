"""`doorlock validate`: exit codes and the text, json and github output formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler.cli import main

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

VALID = {
    "locks/front-door.yaml": f"name: front-door\ntimezone: Europe/Amsterdam\ncertificate:\n  sha256: '{'ab' * 32}'\n",
    "schedules/always.yaml": "name: always\nalways: true\n",
    "groups/members.yaml": "name: members\naccess:\n  - locks: [front-door]\n    schedule: always\n",
    "people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\nkeys:\n  - hwid: '04:a2:3b:4c'\n",
}


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def run(*arguments: str):
    return CliRunner().invoke(main, ["validate", *arguments], catch_exceptions=False)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    files = dict(VALID)
    files["people/alice.yaml"] = "username: alice\nname: Alice\ngroups: [members, nobody]\n"
    files["people/bob.yaml"] = "username: bob\nname: Bob, 100%\n"
    return write(tmp_path / "access", files)


def test_clean_repository_exits_zero(tmp_path):
    result = run(str(write(tmp_path, VALID)))

    assert result.exit_code == 0
    assert result.output == "0 errors, 0 warnings\n"


def test_warnings_exit_zero(tmp_path):
    result = run(str(write(tmp_path, {**VALID, "people/bob.yaml": "username: bob\nname: Bob\n"})))

    assert result.exit_code == 0
    assert "people/bob.yaml:1:11: warning: person 'bob' is in no group" in result.output
    assert result.output.endswith("0 errors, 1 warning\n")


def test_errors_exit_one_with_locations(broken, monkeypatch):
    monkeypatch.chdir(broken.parent)
    result = run("access")

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "access/people/alice.yaml:3:19: error: unknown group 'nobody'"
    assert lines[1].startswith("    fix: ")
    assert any(line.startswith("access/people/bob.yaml:1:11: warning: person 'bob' is in no group") for line in lines)
    assert lines[-1] == "1 error, 1 warning"


def test_json_format(broken, monkeypatch):
    monkeypatch.chdir(broken.parent)
    result = run("access", "--format", "json")

    assert result.exit_code == 1
    document = json.loads(result.output)
    assert document["errors"] == 1
    assert document["warnings"] == 1
    first = document["problems"][0]
    assert first["file"] == "access/people/alice.yaml"
    assert (first["line"], first["column"]) == (3, 19)
    assert first["severity"] == "error"
    assert first["message"] == "unknown group 'nobody'"
    assert first["fix"]


def test_github_format(broken, monkeypatch):
    monkeypatch.chdir(broken.parent)
    result = run("access", "--format", "github")

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("::error file=access/people/alice.yaml,line=3,col=19::unknown group 'nobody'%0Afix: ")
    assert lines[1].startswith("::warning file=access/people/bob.yaml,line=1,col=11::person 'bob' is in no group")
    assert len(lines) == 2


def test_github_format_escapes_data(tmp_path):
    files = {**VALID, "people/alice.yaml": "username: alice\nname: Alice\ngroups: [members, '50%']\n"}
    result = run(str(write(tmp_path, files)), "--format", "github")

    assert "unknown group '50%25'" in result.output


def test_missing_path_is_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nowhere")])

    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_unknown_format_is_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(write(tmp_path, VALID)), "--format", "xml"])

    assert result.exit_code == 2
    assert "xml" in result.output


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\x02\xff\xfe",
        b"username: [\n",
        b"- - - - -\n",
        b"username: !!python/object/apply:os.system ['true']\n",
        b"username: alice\nkeys: {hwid: 04}\n",
        b"&a [*a]\n",
        b"",
    ],
)
def test_hostile_file_reported_without_traceback(tmp_path, content):
    root = write(tmp_path, VALID)
    (root / "people/alice.yaml").write_bytes(content)

    completed = subprocess.run(
        [sys.executable, "-c", "from compiler.cli import main; main()", "validate", str(root)],
        cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=60,
    )

    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert "people/alice.yaml" in completed.stdout


def test_example_repository_passes():
    result = run(str(REPOSITORY_ROOT / "access"))

    assert result.exit_code == 0, result.output


def test_no_path_inside_the_access_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(write(tmp_path / "access", VALID))
    result = run()

    assert result.exit_code == 0, result.output
    assert result.output == "0 errors, 0 warnings\n"


def test_no_path_prefers_access_directory(broken, monkeypatch):
    monkeypatch.chdir(broken.parent)
    result = run()

    assert result.exit_code == 1
    assert result.output.startswith("access/people/alice.yaml:3:19: error: unknown group 'nobody'")


def test_no_path_outside_repository_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run()

    assert result.exit_code == 2
    assert "no access repository here" in result.output
    assert "access/" in result.output
    assert "locks/" in result.output
    assert "people/" in result.output
