"""A small access repository as YAML text, shared by the diff, explain, report and CI tests.

``write_access(root, changes)`` writes the base files plus ``changes`` (relative path -> text,
or None to delete a file). ``git_commit`` turns a directory into a commit of a real git
repository so tests diff real revisions.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

BASE_FILES: dict[str, str] = {
    "locks/front-door.yaml": """\
name: front-door
description: Main entrance
timezone: Europe/Amsterdam
certificate:
  sha256: "5e8f000000000000000000000000000000000000000000000000000000000001"
bundle:
  valid_days: 7
break_glass:
  - hwid: "04:11:22:33:44:55:66"
    description: key safe for the fire brigade
""",
    "locks/workshop.yaml": """\
name: workshop
description: Workshop with the machines
timezone: Europe/Amsterdam
certificate:
  sha256: "5e8f000000000000000000000000000000000000000000000000000000000002"
""",
    "schedules/workshop-hours.yaml": """\
name: workshop-hours
description: Staffed workshop hours
windows:
  - days: [mon, tue, wed, thu, fri]
    start: "09:00"
    end: "18:00"
""",
    "schedules/daytime.yaml": """\
name: daytime
description: Building open hours
windows:
  - days: [mon, tue, wed, thu, fri, sat, sun]
    start: "08:00"
    end: "23:00"
  - days: [fri]
    start: "23:00"
    end: "02:00"
closed:
  - 2026-12-25
""",
    "schedules/always.yaml": """\
name: always
description: Any time
always: true
""",
    "groups/members.yaml": """\
name: members
description: Everyone with a membership
access:
  - locks: [front-door]
    schedule: daytime
""",
    "groups/workshop.yaml": """\
name: workshop
description: Trained on the machines
access:
  - locks: [workshop]
    schedule: workshop-hours
""",
    "groups/keyholders.yaml": """\
name: keyholders
description: Board members who open and close the space
access:
  - locks: [front-door, workshop]
    schedule: always
""",
    "people/alice.yaml": """\
username: alice
name: Alice Jansen
email: alice@example.org
groups: [members, workshop]
keys:
  - hwid: "04:a2:3b:4c:5d:6e:7f"
    description: blue key fob
""",
    "people/bob.yaml": """\
username: bob
name: Bob de Vries
groups: [members]
valid_until: 2027-06-30
keys:
  - hwid: "04:b0:b0:b0:b0:b0:01"
    description: card
    valid_until: 2027-03-31
""",
    "people/carol.yaml": """\
username: carol
name: Carol Smit
groups: [keyholders]
keys:
  - hwid: "04:c0:c0:c0:c0:c0:01"
    description: red fob
""",
}


def write_access(root: Path, changes: dict[str, str | None] | None = None) -> Path:
    """Write the base repository with ``changes`` applied into ``root`` (which may already hold files)."""
    files: dict[str, str | None] = dict(BASE_FILES)
    files.update(changes or {})
    for relative, text in files.items():
        path = root / relative
        if text is None:
            if path.exists():
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
        env={"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.org",
             "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.org",
             "HOME": str(repo), "PATH": "/usr/bin:/bin"},
    )
    return completed.stdout.strip()


def git_init(repo: Path, branch: str = "main") -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "--quiet", f"--initial-branch={branch}")
    return repo


def git_commit(repo: Path, message: str) -> str:
    """Commit everything in ``repo`` (deletions included) and return the commit id."""
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")
