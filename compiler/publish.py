"""Publish a compiled build to the directory nginx serves, atomically.

Layout of the publish directory::

    DIR/current -> releases/r000042-20261204T201500Z    (symlink, swapped with rename)
    DIR/releases/r000042-20261204T201500Z/{manifest.json, signers.json, bundles/<lock>.json}
    DIR/.publish.lock                                    (serialises publishers)

Steps of :func:`publish`:

1. check the build: every file the manifest lists exists and has the listed SHA-256;
2. take the publish lock, so two pipelines cannot interleave their checks and swaps;
3. compare with the live release: a bundle (or signers document) with a version lower than
   or equal to the live one but different bytes is rejected. That is what happens when two
   pipelines compiled from different commits, or when an old build is published again.
   A deliberate rollback is a new compile of the old access state, which gets a higher
   version; old bytes are never served again;
4. stage a complete new release directory: unchanged files are hard links to the live ones
   (same bytes and mtime, so locks keep getting 304), changed files get an mtime strictly above every mtime
   published before. nginx's ETag is ``hex(mtime)-hex(size)``, so a changed file can never
   repeat an earlier ETag, not even for two publishes within one second with equal sizes;
5. fsync the files and directories, then point ``current`` at the new release with
   ``rename`` (atomic on POSIX): a reader opens either the old or the new file, never a mix
   inside one file and never a half-written one;
6. delete all but the newest ``keep`` releases (never the live one).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["PublishError", "PublishRejected", "PublishResult", "publish", "live_release",
           "CURRENT", "RELEASES", "DEFAULT_KEEP"]

log = logging.getLogger(__name__)

CURRENT = "current"
RELEASES = "releases"
LOCK_FILE = ".publish.lock"
MANIFEST = "manifest.json"
SIGNERS = "signers.json"
DEFAULT_KEEP = 10

_RELEASE_NAME = re.compile(r"^r(\d{6,})-\d{8}T\d{6}Z$")
_BUNDLE_PATH = re.compile(r"^bundles/[a-z0-9][a-z0-9._-]{0,62}\.json$")


class PublishError(Exception):
    """A build or publish directory that cannot be published; the message says what to fix."""


class PublishRejected(PublishError):
    """The build would replace live bytes with an equal or lower version (rollback or race)."""


@dataclass
class PublishResult:
    release: Path | None  # None when the build was byte-identical to the live release
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    mtime: int | None = None
    pruned: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class _Entry:
    """One published file: its path in the tree, version, and digest from the manifest."""

    path: str
    version: int | None
    sha256: str | None


def live_release(publish_dir: str | os.PathLike) -> Path | None:
    """Return the release directory ``current`` points at, or None before the first publish."""
    link = Path(publish_dir) / CURRENT
    if not link.is_symlink():
        return None
    return (link.parent / os.readlink(link)).resolve()


def publish(build_dir: str | os.PathLike, publish_dir: str | os.PathLike, keep: int = DEFAULT_KEEP,
            now: float | None = None) -> PublishResult:
    """Publish ``build_dir`` into ``publish_dir`` as a new release; see the module docstring."""
    if keep < 1:
        raise PublishError(f"invalid --keep {keep}: keep at least the live release (1)")
    build_dir, publish_dir = Path(build_dir), Path(publish_dir)
    manifest_bytes, entries = _read_build(build_dir)

    publish_dir.mkdir(parents=True, exist_ok=True)
    _check_layout(publish_dir)
    (publish_dir / RELEASES).mkdir(exist_ok=True)
    with _publish_lock(publish_dir):
        live = live_release(publish_dir)
        live_entries = _read_live(live)
        result = _compare(entries, live_entries, build_dir, live)

        if live is not None and not result.changed and not result.removed \
                and (live / MANIFEST).read_bytes() == manifest_bytes:
            log.info("nothing to publish: %s is identical to the live release %s", build_dir, live.name)
            return result

        mtime = _next_mtime(publish_dir, now)
        release = _stage(build_dir, publish_dir, live, entries, result, mtime, now)
        _swap_current(publish_dir, release)
        result.release, result.mtime = release, mtime
        result.pruned = _prune(publish_dir, keep)

    log.info("published %s as %s: %d changed, %d unchanged, %d removed",
             build_dir, release.name, len(result.changed), len(result.unchanged), len(result.removed))
    return result


# --- the build ---------------------------------------------------------------------------


def _read_build(build_dir: Path) -> tuple[bytes, dict[str, _Entry]]:
    manifest_path = build_dir / MANIFEST
    try:
        manifest_bytes = manifest_path.read_bytes()
    except FileNotFoundError:
        raise PublishError(f"{manifest_path} not found: pass the directory 'doorlock compile --out' wrote") from None
    entries = _entries_from_manifest(manifest_bytes, manifest_path)

    for entry in entries.values():
        path = build_dir / entry.path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PublishError(f"{path} is listed in {manifest_path} but missing: the build is incomplete; "
                               f"compile again") from None
        if entry.sha256 is not None and hashlib.sha256(data).hexdigest() != entry.sha256:
            raise PublishError(f"{path} does not match the sha256 in {manifest_path}: the build was changed "
                               f"after compiling or is incomplete; compile again")
    return manifest_bytes, entries


def _entries_from_manifest(data: bytes, origin) -> dict[str, _Entry]:
    try:
        manifest = json.loads(data)
        bundles = manifest["bundles"]
        entries: dict[str, _Entry] = {}
        for lock, info in bundles.items():
            path = info.get("path", f"bundles/{lock}.json")
            if not _BUNDLE_PATH.match(path):
                raise PublishError(f"{origin}: bundle path {path!r} of lock {lock!r} is not bundles/<lock>.json")
            entries[path] = _Entry(path, int(info["version"]), str(info["sha256"]))
        signers = manifest.get("signers")
        if signers is not None:
            entries[SIGNERS] = _Entry(SIGNERS, int(signers["version"]), str(signers["sha256"]))
    except PublishError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PublishError(f"{origin} is not a valid doorlock manifest ({type(error).__name__}: {error}); "
                           f"compile again") from None
    return entries


def _read_live(live: Path | None) -> dict[str, _Entry]:
    if live is None:
        return {}
    return _entries_from_manifest((live / MANIFEST).read_bytes(), live / MANIFEST)


def _compare(entries: dict[str, _Entry], live_entries: dict[str, _Entry], build_dir: Path,
             live: Path | None) -> PublishResult:
    result = PublishResult(release=None)
    for path, entry in sorted(entries.items()):
        old = live_entries.get(path)
        if old is None:
            result.changed.append(path)
            continue
        if _same_bytes(build_dir / path, live / path):
            result.unchanged.append(path)
            continue
        if entry.version is not None and old.version is not None and entry.version <= old.version:
            raise PublishRejected(
                f"{build_dir / path} has version {entry.version} but the live release {live.name} serves "
                f"version {old.version} with different content. Either another pipeline published a "
                f"newer compile, or this is an old build: compile the current access repository again "
                f"(with --previous pointing at the published tree) so that it gets a higher version.")
        result.changed.append(path)
    result.removed = sorted(path for path in live_entries if path not in entries)
    return result


def _same_bytes(first: Path, second: Path) -> bool:
    try:
        return first.read_bytes() == second.read_bytes()
    except FileNotFoundError:
        return False


# --- staging and swapping ----------------------------------------------------------------


def _next_mtime(publish_dir: Path, now: float | None) -> int:
    """Return a whole-second mtime above every mtime already published and not before now."""
    newest = 0
    for release in (publish_dir / RELEASES).iterdir():
        for path in release.rglob("*"):
            if path.is_file():
                newest = max(newest, int(path.stat().st_mtime))
    current = int(time.time() if now is None else now)
    return max(current, newest + 1)


def _stage(build_dir: Path, publish_dir: Path, live: Path | None, entries: dict[str, _Entry],
           result: PublishResult, mtime: int, now: float | None) -> Path:
    releases = publish_dir / RELEASES
    staging = releases / f".staging-{secrets.token_hex(8)}"
    (staging / "bundles").mkdir(parents=True)
    try:
        for path in result.unchanged:
            # Same bytes and same mtime as the live file: same ETag, so locks get 304.
            _link_or_copy(live / path, staging / path)
        for path in result.changed:
            _copy_file(build_dir / path, staging / path, mtime * 1_000_000_000)
        _copy_file(build_dir / MANIFEST, staging / MANIFEST, mtime * 1_000_000_000)
        _fsync_directory(staging / "bundles")
        _fsync_directory(staging)

        release = releases / _release_name(releases, now)
        os.rename(staging, release)
        _fsync_directory(releases)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return release


def _copy_file(source: Path, target: Path, mtime_ns: int) -> None:
    data = source.read_bytes()
    with open(target, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(target, 0o644)
    os.utime(target, ns=(mtime_ns, mtime_ns))


def _link_or_copy(source: Path, target: Path) -> None:
    # Published files are never written again after their release is staged, so releases
    # can share them through hard links; the shared inode keeps the mtime, and so the ETag.
    try:
        os.link(source, target)
    except OSError as error:
        log.debug("hard link %s -> %s failed (%s); copying", source, target, error)
        _copy_file(source, target, os.stat(source).st_mtime_ns)


def _release_name(releases: Path, now: float | None) -> str:
    sequence = max((_release_sequence(path.name) for path in releases.iterdir()), default=0) + 1
    stamp = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"r{sequence:06d}-{stamp}"


def _release_sequence(name: str) -> int:
    match = _RELEASE_NAME.match(name)
    return int(match.group(1)) if match else 0


def _swap_current(publish_dir: Path, release: Path) -> None:
    temporary = publish_dir / f".{CURRENT}.{secrets.token_hex(8)}"
    os.symlink(Path(RELEASES) / release.name, temporary)
    try:
        os.replace(temporary, publish_dir / CURRENT)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(publish_dir)


def _prune(publish_dir: Path, keep: int) -> list[Path]:
    releases = sorted((path for path in (publish_dir / RELEASES).iterdir() if _RELEASE_NAME.match(path.name)),
                      key=lambda path: _release_sequence(path.name))
    live = live_release(publish_dir)
    pruned = []
    for release in releases[:-keep]:
        if release.resolve() == live:
            continue
        shutil.rmtree(release)
        pruned.append(release)
    for leftover in (publish_dir / RELEASES).glob(".staging-*"):
        # A publisher that died while staging; the lock is held, so no one is using it.
        shutil.rmtree(leftover, ignore_errors=True)
    return pruned


def _check_layout(publish_dir: Path) -> None:
    current = publish_dir / CURRENT
    if current.exists() and not current.is_symlink():
        raise PublishError(f"{current} exists but is not a symlink: {publish_dir} was not created by "
                           f"'doorlock publish'; publish into an empty directory")


@contextmanager
def _publish_lock(publish_dir: Path):
    # NOTE: flock serialises publishers on one host; it does not work across NFS clients.
    with open(publish_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            log.info("waiting for another publisher to finish in %s", publish_dir)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
