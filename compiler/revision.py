"""Load an access repository as it was at a git revision, or from a plain directory.

``doorlock diff`` compares two revisions without touching the working tree: each revision is
exported with ``git archive`` into a temporary directory and loaded from there. When the
access repository is a subdirectory of the git repository (``--repo project/access``), only
that subdirectory is exported.
"""

from __future__ import annotations

import io
import logging
import subprocess
import tarfile
from pathlib import Path

from compiler.model import AccessRepository

log = logging.getLogger(__name__)

ENTITY_DIRECTORIES = ("locks", "groups", "schedules", "people")


class RevisionError(Exception):
    """A revision or directory that cannot be loaded. The message names it and the reason."""


def _git(repo: Path, *args: str) -> bytes:
    try:
        completed = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise RevisionError("git is not installed; pass two directories instead of revisions") from None
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip()
        raise RevisionError(f"git {' '.join(args)} failed in {repo}: {message}")
    return completed.stdout


def resolve_commit(repo: Path, revision: str) -> str:
    """Return the full commit id of ``revision`` in the git repository at ``repo``."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").decode().strip()
    except RevisionError:
        raise RevisionError(
            f"{revision!r} is neither a directory nor a git revision of {repo}; "
            "give a branch, tag or commit (e.g. origin/main) or a path"
        ) from None


def export_revision(repo: Path, revision: str, target: Path) -> str:
    """Write the access repository at ``revision`` into ``target`` and return the commit id.

    A revision in which the access repository's directory does not exist yet exports as an
    empty directory, so the first pull request of a new repository diffs against nothing.
    """
    commit = resolve_commit(repo, revision)
    prefix = _git(repo, "rev-parse", "--show-prefix").decode().strip().rstrip("/")
    # Run the remaining commands from the top level: git refuses to archive from a working
    # directory that did not exist at the revision.
    top = Path(_git(repo, "rev-parse", "--show-toplevel").decode().strip())
    target.mkdir(parents=True, exist_ok=True)

    if prefix:
        try:
            _git(top, "cat-file", "-e", f"{commit}:{prefix}")
        except RevisionError:
            log.info("%s does not exist at %s; treating it as empty", prefix, commit[:12])
            return commit

    archive = _git(top, "archive", "--format=tar", f"{commit}:{prefix}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return commit


def is_empty_repository(root: Path) -> bool:
    return not any((root / name).is_dir() for name in ENTITY_DIRECTORIES)


def load_directory(root: Path, label: str | None = None) -> AccessRepository:
    """Load and validate an access repository; a directory without entity folders is empty.

    ``label`` names the side in error messages (a revision such as ``main (5b732f55aea8)``);
    by default the directory is named.
    """
    if is_empty_repository(root):
        return AccessRepository(root=root)

    from compiler.loader import AccessInvalid, load_repository

    try:
        return load_repository(root)
    except AccessInvalid as error:
        errors = [problem for problem in error.problems if problem.is_error]
        listed = "\n".join(f"  {problem.location()}: {problem.message}" for problem in errors[:20])
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise RevisionError(
            f"the access repository at {label or root} has errors; run 'doorlock validate' on it:\n{listed}{more}"
        ) from None
