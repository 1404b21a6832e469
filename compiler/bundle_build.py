"""Build, sign and write one bundle per lock, plus the manifest and the signers document.

The build steps:

1. Read the signers document and check that the signing key is listed and the document has not
   expired or gone back in version against the previous build.
2. Expand every enabled lock's access (:mod:`compiler.expand`).
3. Per lock, copy the previously published bundle byte for byte when three things hold. It
   makes exactly the same decisions for the rest of its validity. Its signing key is listed in
   the current signers document. It expires more than the re-sign margin from now.
   Otherwise sign a new bundle with version ``max(previous version + 1, issued_at)``, so
   versions only increase.
4. Write everything into a temporary directory next to the output and rename it into place,
   so a failed run never leaves a half-written build.

Payload and envelope bytes are deterministic: the same repository, key, signers document,
previous build and ``now`` give byte-identical output.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from compiler import signing
from compiler.expand import Bounds, LockAccess, clip, expand_locks
from compiler.model import AccessRepository
from lockclient import bundle as bundle_format
from lockclient import dsse

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
DEFAULT_RESIGN_MARGIN = 2 * 86400
MANIFEST_NAME = "manifest.json"
SIGNERS_NAME = "signers.json"
BUNDLES_DIR = "bundles"
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # SHA-1 or SHA-256 object name


class BuildError(Exception):
    """A build that must not be produced. The message gives the reason and the fix."""


@dataclass
class PreviousBuild:
    """A previously published build: its manifest, signers document and bundle bytes."""

    directory: Path
    manifest: dict
    bundles: dict[str, bytes] = field(default_factory=dict)

    @property
    def source_commit(self) -> str | None:
        return self.manifest.get("source_commit")

    def bundle_version(self, lock_name: str) -> int:
        """Return the highest version published for a lock: in the manifest or in its bundle file."""
        versions = [0]
        entry = self.manifest.get("bundles", {}).get(lock_name)
        if isinstance(entry, dict) and isinstance(entry.get("version"), int):
            versions.append(entry["version"])
        if lock_name in self.bundles:
            try:
                payload = json.loads(dsse.parse_envelope(self.bundles[lock_name]).payload)
                if isinstance(payload.get("version"), int):
                    versions.append(payload["version"])
            except (dsse.EnvelopeError, ValueError, AttributeError):
                pass  # an unreadable bundle is replaced; the manifest still bounds the version
        return max(versions)


@dataclass(frozen=True)
class LockBundle:
    """One lock's bundle in a build."""

    lock: str
    envelope: bytes
    version: int
    issued_at: int
    expires_at: int
    keys: int
    certificate_sha256: str | None
    changed: bool  # False when the previous bundle was copied unchanged

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.envelope).hexdigest()


@dataclass
class Build:
    generated_at: int
    source_commit: str | None
    signers_document: bytes
    signers: signing.SignersSummary
    bundles: dict[str, LockBundle]

    def manifest_bytes(self) -> bytes:
        manifest = {
            "format": MANIFEST_FORMAT,
            "generated_at": bundle_format.format_time(self.generated_at),
            "source_commit": self.source_commit,
            "signers": {
                "version": self.signers.version,
                "sha256": hashlib.sha256(self.signers_document).hexdigest(),
            },
            "bundles": {
                name: {
                    "version": entry.version,
                    "sha256": entry.sha256,
                    "issued_at": bundle_format.format_time(entry.issued_at),
                    "expires_at": bundle_format.format_time(entry.expires_at),
                    "path": f"{BUNDLES_DIR}/{name}.json",
                    "certificate_sha256": entry.certificate_sha256,
                    "keys": entry.keys,
                }
                for name, entry in sorted(self.bundles.items())
            },
        }
        return (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode("ascii")


# --- previous build and git ------------------------------------------------------------------


def read_previous(directory: Path) -> PreviousBuild:
    """Read a previously published build directory (manifest plus bundle files)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise BuildError(f"previous build directory {directory} not found; omit --previous for the first build")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise BuildError(f"{manifest_path} not found; --previous must point at a published build") from None
    except (OSError, ValueError) as error:
        raise BuildError(f"cannot read {manifest_path}: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("bundles", {}), dict):
        raise BuildError(f"{manifest_path} is not a doorlock manifest (no bundles object)")

    previous = PreviousBuild(directory, manifest)
    for name in manifest.get("bundles", {}):
        # The file name comes from the lock name, never from the manifest's path field.
        path = directory / BUNDLES_DIR / f"{name}.json"
        if "/" in name or name.startswith(".") or not path.is_file():
            log.warning("previous bundle for lock %s not found at %s; it will be re-signed", name, path)
            continue
        try:
            previous.bundles[name] = path.read_bytes()
        except OSError as error:
            raise BuildError(f"cannot read previous bundle {path}: {error.strerror}") from None
    return previous


def _git(directory: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(directory), *arguments], capture_output=True, text=True, check=False
    )


def git_head(directory: Path) -> str | None:
    """Return the HEAD commit of the git work tree containing ``directory``, or None."""
    try:
        inside = _git(directory, "rev-parse", "--is-inside-work-tree")
    except FileNotFoundError:
        log.warning("git is not installed; the build records no source commit")
        return None
    if inside.returncode != 0 and "not a git repository" not in inside.stderr:
        log.warning("git failed in %s, so the build records no source commit: %s", directory, inside.stderr.strip())
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    head = _git(directory, "rev-parse", "--verify", "HEAD")
    if head.returncode != 0:
        return None  # a repository without commits yet
    status = _git(directory, "status", "--porcelain", "--", ".")
    if status.returncode == 0 and status.stdout.strip():
        log.warning("%s has uncommitted changes; the build records commit %s but compiles the files as they are",
                    directory, head.stdout.strip()[:12])
    return head.stdout.strip()


def check_commit_order(directory: Path, previous_commit: str | None, head: str | None) -> None:
    """Raise :class:`BuildError` unless the previous build's commit is an ancestor of HEAD.

    A previous commit that is not an ancestor means this run compiles older (or diverged)
    access rules than those already published: typically an old pipeline re-run.
    """
    if previous_commit is None or previous_commit == head:
        return
    if head is None:
        log.warning("the published build comes from commit %.12s but %s is not a git work tree, "
                    "so an old pipeline re-run cannot be detected", previous_commit, directory)
        return
    if not isinstance(previous_commit, str) or not _COMMIT.match(previous_commit):
        raise BuildError(f"the previous manifest's source_commit {previous_commit!r} is not a git commit id")
    result = _git(directory, "merge-base", "--is-ancestor", previous_commit, head)
    if result.returncode == 0:
        return
    if result.returncode == 1:
        raise BuildError(
            f"the published build comes from commit {previous_commit[:12]}, which is not an ancestor of "
            f"HEAD {head[:12]}: this would publish older or diverged access rules (an old pipeline re-run?). "
            "Compile the newest commit, or pass --allow-older-commit to publish it on purpose"
        )
    raise BuildError(
        f"cannot check that the published build's commit {previous_commit[:12]} is an ancestor of HEAD "
        f"{head[:12]}: {result.stderr.strip() or 'git failed'}. Fetch the full history (e.g. fetch-depth: 0) "
        "or pass --allow-older-commit"
    )


# --- signers document ------------------------------------------------------------------------


def check_signers(
    document: bytes, shown: str, signing_key: Ed25519PrivateKey, now: int, previous: PreviousBuild | None
) -> signing.SignersSummary:
    """Check that the signers document lists the signing key, is current and did not go back."""
    summary = signing.read_signers_document(document, shown)
    keyid = dsse.key_id(signing_key.public_key())
    if keyid not in summary.key_ids:
        raise BuildError(
            f"the signing key {keyid} is not listed in {shown} (version {summary.version}), so every lock "
            "would reject its bundles. Sign a new signers document that lists it: doorlock signers sign "
            "--root ROOT.key --signer SIGNING.pub ... (see docs/keys.md)"
        )
    if now >= summary.expires_at:
        raise BuildError(
            f"{shown} (version {summary.version}) expired at {bundle_format.format_time(summary.expires_at)}; "
            "sign a new one with a higher --version"
        )

    if previous is not None:
        published = previous.manifest.get("signers") or {}
        published_version = published.get("version")
        digest = hashlib.sha256(document).hexdigest()
        if isinstance(published_version, int):
            if summary.version < published_version:
                raise BuildError(
                    f"{shown} has version {summary.version}, lower than the published version "
                    f"{published_version}; locks reject it. Use the current signers document"
                )
            if summary.version == published_version and published.get("sha256") not in (None, digest):
                raise BuildError(
                    f"{shown} has the published version {summary.version} but different bytes; locks reject it. "
                    "Sign it again with a higher --version"
                )
    return summary


def _signers_for_verification(document: bytes, summary: signing.SignersSummary) -> bundle_format.Signers:
    envelope = dsse.parse_envelope(document)
    entries = json.loads(envelope.payload)["signers"]
    keys = {}
    for entry in entries:
        public_key = dsse.load_public_key(entry["public_key"])
        keys[dsse.key_id(public_key)] = public_key
    return bundle_format.Signers(
        summary.version, summary.issued_at, summary.expires_at, keys, hashlib.sha256(document).hexdigest()
    )


# --- payloads --------------------------------------------------------------------------------


def lock_settings(access: LockAccess) -> dict:
    lock = access.lock
    return {
        "timezone": lock.timezone,
        "unlock_seconds": lock.unlock_seconds,
        "last_seen_precision": lock.last_seen_precision,
        "lockdown": lock.lockdown,
    }


def _break_glass(access: LockAccess) -> list[str]:
    return sorted({key.hwid for key in access.lock.break_glass})


def build_payload(access: LockAccess, version: int, source_commit: str | None) -> bytes:
    """Return the deterministic JSON payload bytes of one lock's bundle."""
    # Interval lists get their numbers in the order of the sorted distinct values, so the payload
    # does not depend on dict order. Most keys share list objects: compare by identity first.
    distinct: dict[int, Bounds] = {}
    for key_map in (access.keys, access.office_mode):
        for bounds in key_map.values():
            distinct[id(bounds)] = bounds
    intervals: list[Bounds] = []
    index_by_value: dict[tuple[int, ...], int] = {}
    for bounds in sorted(distinct.values()):
        value = tuple(bounds)
        if value not in index_by_value:
            index_by_value[value] = len(intervals)
            intervals.append(bounds)
    index_by_object = {identity: index_by_value[tuple(bounds)] for identity, bounds in distinct.items()}

    keys = {hwid: index_by_object[id(bounds)] for hwid, bounds in access.keys.items()}
    office_mode = {hwid: index_by_object[id(bounds)] for hwid, bounds in access.office_mode.items()}
    payload = {
        "format": bundle_format.BUNDLE_FORMAT,
        "lock": access.lock.name,
        "version": version,
        "issued_at": bundle_format.format_time(access.issued_at),
        "expires_at": bundle_format.format_time(access.expires_at),
        "source_commit": source_commit,
        "settings": lock_settings(access),
        "intervals": intervals,
        "keys": keys,
        "office_mode": office_mode,
        "break_glass": _break_glass(access),
    }
    return signing.encode_json(payload)


def _restricted(key_map: dict[str, Bounds], low: int, high: int) -> dict[str, tuple[int, ...]]:
    restricted: dict[str, tuple[int, ...]] = {}
    by_object: dict[int, tuple[int, ...]] = {}
    for hwid, bounds in key_map.items():
        value = by_object.get(id(bounds))
        if value is None:
            value = tuple(clip(bounds, low, high))
            by_object[id(bounds)] = value
        if value:
            restricted[hwid] = value
    return restricted


def same_decisions(previous: bundle_format.Bundle, access: LockAccess, now: int) -> bool:
    """Return True when ``previous`` decides every tap and office-mode request like ``access`` until it expires.

    Keys that cannot open in [now, previous expiry) count as absent in both.
    """
    if previous.lock != access.lock.name or previous.settings != lock_settings(access):
        return False
    if sorted(previous.break_glass) != _break_glass(access):
        return False
    low, high = now, previous.expires_at
    for old_map, new_map in ((previous.keys, access.keys), (previous.office_mode, access.office_mode)):
        old = _restricted({hwid: previous.intervals[index] for hwid, index in old_map.items()}, low, high)
        if old != _restricted(new_map, low, high):
            return False
    return True


# --- the build -------------------------------------------------------------------------------


def _reusable_previous(
    name: str, access: LockAccess, previous: PreviousBuild | None, signers: bundle_format.Signers,
    now: int, resign_margin: int,
) -> bundle_format.Bundle | None:
    if previous is None or name not in previous.bundles:
        return None
    try:
        old = bundle_format.verify_bundle(previous.bundles[name], signers, name, None, now)
    except bundle_format.BundleError as error:
        log.info("lock %s: previous bundle cannot be reused (%s: %s)", name, error.reason, error)
        return None
    if old.expires_at - now <= resign_margin:
        log.info("lock %s: previous bundle version %d expires within the re-sign margin", name, old.version)
        return None
    if not same_decisions(old, access, now):
        return None
    return old


@contextlib.contextmanager
def _garbage_collection_paused():
    # A large build allocates millions of small dicts and tuples without reference cycles.
    # The cyclic collector would scan them again and again: about a quarter of the compile time
    # in bench/compile.py.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compile_repository(
    repository: AccessRepository,
    signing_key: Ed25519PrivateKey,
    signers_document: bytes,
    now: int,
    previous: PreviousBuild | None = None,
    source_commit: str | None = None,
    resign_margin: int = DEFAULT_RESIGN_MARGIN,
    signers_shown: str = SIGNERS_NAME,
) -> Build:
    """Compile and sign every enabled lock's bundle; see the module docstring for the steps."""
    with _garbage_collection_paused():
        return _compile(repository, signing_key, signers_document, now, previous, source_commit,
                        resign_margin, signers_shown)


def _compile(
    repository: AccessRepository,
    signing_key: Ed25519PrivateKey,
    signers_document: bytes,
    now: int,
    previous: PreviousBuild | None,
    source_commit: str | None,
    resign_margin: int,
    signers_shown: str,
) -> Build:
    summary = check_signers(signers_document, signers_shown, signing_key, now, previous)
    verification_signers = _signers_for_verification(signers_document, summary)
    expanded = expand_locks(repository, now)

    bundles: dict[str, LockBundle] = {}
    for name, access in expanded.items():
        certificate = access.lock.certificate_sha256
        old = _reusable_previous(name, access, previous, verification_signers, now, resign_margin)
        if old is not None:
            bundles[name] = LockBundle(
                name, previous.bundles[name], old.version, old.issued_at, old.expires_at,
                len(old.keys), certificate, changed=False,
            )
            continue

        published = previous.bundle_version(name) if previous is not None else 0
        version = max(published + 1, now)
        if version > bundle_format.MAX_INTEGER:
            raise BuildError(
                f"lock {name}: the published bundle has version {published}, so the next one would be above "
                "2**63-1, which locks reject. Check the previous manifest for a forged or mistyped version"
            )
        if version <= published:
            raise BuildError(
                f"lock {name}: the published bundle has version {published}, not lower than {version}; "
                "locks would reject the new bundle"
            )
        payload = build_payload(access, version, source_commit)
        envelope = signing.sign_envelope(bundle_format.BUNDLE_PAYLOAD_TYPE, payload, signing_key)
        if len(envelope) > bundle_format.MAX_ENVELOPE_BYTES:
            raise BuildError(
                f"lock {name}: the bundle is {len(envelope)} bytes, over the {bundle_format.MAX_ENVELOPE_BYTES} "
                "bytes a lock accepts; split the lock's groups or shorten its bundle validity (bundle.valid_days)"
            )
        bundles[name] = LockBundle(
            name, envelope, version, access.issued_at, access.expires_at, len(access.keys), certificate,
            changed=True,
        )

    if summary.expires_at < max((entry.expires_at for entry in bundles.values()), default=0):
        log.warning(
            "the signers document expires at %s, before some bundles do; locks reject every bundle after that",
            bundle_format.format_time(summary.expires_at),
        )
    return Build(now, source_commit, signers_document, summary, bundles)


# --- writing ---------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_build(build: Build, out: Path) -> None:
    """Write ``build`` to ``out`` via a temporary directory next to it, replacing a previous build.

    Refuses to replace a non-empty directory that is not a doorlock build.
    """
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        raise BuildError(f"output directory's parent {parent} does not exist; create it first")
    if out.exists():
        if not out.is_dir():
            raise BuildError(f"{out} exists and is not a directory; choose another --out")
        if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
            raise BuildError(f"{out} is not empty and contains no {MANIFEST_NAME}, so it is not replaced. "
                             "Choose an empty or new --out directory")

    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        (temporary / BUNDLES_DIR).mkdir()
        files = {temporary / BUNDLES_DIR / f"{name}.json": entry.envelope
                 for name, entry in sorted(build.bundles.items())}
        files[temporary / SIGNERS_NAME] = build.signers_document
        files[temporary / MANIFEST_NAME] = build.manifest_bytes()
        for path, data in files.items():
            _write_file(path, data)
        # Syncing after all writes lets the kernel batch them: about half the time of
        # syncing each file as it is written.
        for path in [*files, temporary / BUNDLES_DIR, temporary]:
            _fsync_path(path)
        os.chmod(temporary, 0o755)

        if out.exists():
            # Linux cannot swap two directories in one rename: move the old one aside first.
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.rename(out, retired / out.name)
            os.rename(temporary, out)
            shutil.rmtree(retired)
        else:
            os.rename(temporary, out)
        _fsync_path(parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
