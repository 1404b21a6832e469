"""Crash-safe storage of the current and previous good bundle and signers document.

Files in the state directory:

- ``bundle.json`` / ``bundle.previous.json``: current and previous verified bundle envelopes;
- ``signers.json`` / ``signers.previous.json``: the same for the signers document;
- ``state.json``: versions and hashes accepted so far (rollback protection), the key that signed
  the current bundle and the system part of the clock floor when it was accepted
  (``accepted_system_time``), ETags, the system part of the clock floor (``clock_floor``, see
  :mod:`lockclient.clock`), last fetch and last rejected bundle.

Every write goes to a temporary file in the same directory, is fsynced, renamed over the target
with ``os.replace`` and followed by an fsync of the directory, so a power cut leaves either the
old or the new file. The previous copy is written from the verified bytes held in memory, never
copied from disk, so a corrupt current file cannot overwrite a good previous one.

At start every stored file is verified again. A corrupt or truncated current file falls back to
the previous one. When nothing verifies, the lock runs without a bundle (everything denied)
and keeps fetching instead of crashing in a loop.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lockclient import bundle as bundle_mod
from lockclient.bundle import Bundle, BundleError, Signers, TrustedState

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"
PREVIOUS_BUNDLE_FILE = "bundle.previous.json"
SIGNERS_FILE = "signers.json"
PREVIOUS_SIGNERS_FILE = "signers.previous.json"
STATE_FILE = "state.json"


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(path.parent)


@dataclass
class StoredDocument:
    """Verified bytes of a stored document and what they verified to."""

    data: bytes
    document: Bundle | Signers


class Storage:
    """The lock's state directory. Not thread-safe: the daemon calls it under its own lock."""

    def __init__(self, state_dir: Path, lock_name: str, root_keys: dict[str, Ed25519PublicKey]):
        self.directory = Path(state_dir)
        self.lock_name = lock_name
        self.root_keys = root_keys
        self.state: dict = {}
        self.bundle: StoredDocument | None = None
        self.signers: StoredDocument | None = None

    # -- loading ---------------------------------------------------------------------------

    def load(self, now: float, cleanup: bool = True) -> None:
        """Read and re-verify everything stored; never raises for bad file contents.

        ``cleanup`` removes temporary files left by an interrupted write; read-only callers
        (``lockclient status`` while the daemon runs) pass False.
        """
        if cleanup:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temp_files()
        self.state = self._read_state()

        signers_candidates = self._verified_signers(now)
        self.signers = signers_candidates[0] if signers_candidates else None
        self.bundle = self._verified_bundle(signers_candidates, now)

        if self.bundle is not None:
            log.info(
                "loaded stored bundle version %d (sha256 %s, expires %s)",
                self.bundle.document.version, self.bundle.document.sha256[:16],
                bundle_mod.format_time(self.bundle.document.expires_at),
            )
        else:
            log.warning("no valid stored bundle for lock %s: every tap is denied until one is fetched", self.lock_name)

        self._raise_trusted("bundle", self.bundle)
        self._raise_trusted("signers", self.signers)

    def _remove_stale_temp_files(self) -> None:
        for leftover in self.directory.glob(".*.tmp"):
            log.info("removing unfinished write %s", leftover.name)
            leftover.unlink(missing_ok=True)

    def _read_state(self) -> dict:
        path = self.directory / STATE_FILE
        try:
            state = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            log.error("state file %s is unreadable (%s); rebuilding it from the stored bundles", path, error)
            return {}
        if not isinstance(state, dict):
            log.error("state file %s does not hold a JSON object; rebuilding it", path)
            return {}
        return state

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            log.error("cannot read %s: %s", name, error)
            return None

    def _verified_signers(self, now: float) -> list[StoredDocument]:
        candidates = []
        for name in (SIGNERS_FILE, PREVIOUS_SIGNERS_FILE):
            data = self._read(name)
            if data is None:
                continue
            try:
                signers = bundle_mod.verify_signers(data, self.root_keys, None, now, allow_expired=True)
            except BundleError as error:
                log.error("stored %s is invalid (%s: %s); ignoring it", name, error.reason, error)
                continue
            except Exception as error:  # e.g. RecursionError from absurdly nested JSON: never a crash loop
                log.error("stored %s cannot be verified (%s: %s); ignoring it", name, type(error).__name__, error)
                continue
            candidates.append(StoredDocument(data, signers))
        return candidates

    def _verified_bundle(self, signers_candidates: list[StoredDocument], now: float) -> StoredDocument | None:
        for name in (BUNDLE_FILE, PREVIOUS_BUNDLE_FILE):
            data = self._read(name)
            if data is None:
                continue
            problem = "no valid signers document is stored"
            for signers in signers_candidates:
                try:
                    verified = bundle_mod.verify_bundle(
                        data, signers.document, self.lock_name, None, now, allow_expired=True,
                    )
                except BundleError as error:
                    problem = f"{error.reason}: {error}"
                    continue
                except Exception as error:  # e.g. RecursionError from absurdly nested JSON
                    problem = f"{type(error).__name__}: {error}"
                    continue
                if name == PREVIOUS_BUNDLE_FILE:
                    log.warning("falling back to the previous bundle (version %d)", verified.version)
                return StoredDocument(data, verified)
            log.error("stored %s is invalid (%s); ignoring it", name, problem)
        return None

    def _raise_trusted(self, kind: str, stored: StoredDocument | None) -> None:
        """Keep the highest version ever accepted as the rollback reference."""
        if stored is None:
            return
        entry = self.state.setdefault(kind, {})
        if not isinstance(entry.get("version"), int) or stored.document.version > entry["version"]:
            entry["version"] = stored.document.version
            entry["sha256"] = stored.document.sha256
            entry.pop("etag", None)
            if isinstance(stored.document, Bundle):
                entry["signed_by"] = stored.document.signed_by

    # -- what the verifier needs -------------------------------------------------------------

    def trusted(self, kind: str) -> TrustedState | None:
        """Return the rollback reference for ``kind`` ("bundle" or "signers")."""
        entry = self.state.get(kind) or {}
        if isinstance(entry.get("version"), int) and isinstance(entry.get("sha256"), str):
            signed_by = entry.get("signed_by")
            return TrustedState(entry["version"], entry["sha256"], signed_by if isinstance(signed_by, str) else None)
        return None

    def etag(self, kind: str) -> str | None:
        value = (self.state.get(kind) or {}).get("etag")
        return value if isinstance(value, str) else None

    def set_etag(self, kind: str, etag: str | None) -> None:
        """Remember a new ETag; a 304 without one keeps the old (``etag`` None)."""
        if etag is not None:
            self.state.setdefault(kind, {})["etag"] = etag

    @property
    def clock_floor(self) -> float:
        """The system part of the clock floor saved by the last run; issue times are not in it."""
        value = self.state.get("clock_floor", 0)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

    @property
    def bundle_accepted_at(self) -> float | None:
        """The system part of the clock floor when the current bundle was accepted, if saved.

        None for a state file from an older lockclient, and when the bundle in use is not the one
        the state file describes (a fallback to the previous bundle).
        """
        entry = self.state.get("bundle") or {}
        if self.bundle is None or entry.get("sha256") != self.bundle.document.sha256:
            return None
        value = entry.get("accepted_system_time")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def stored_documents(self) -> tuple[Signers | None, Bundle | None]:
        """Return the verified signers document and bundle in force, for the clock floor at start."""
        signers = self.signers.document if self.signers is not None else None
        bundle = self.bundle.document if self.bundle is not None else None
        return signers, bundle

    # -- writing ---------------------------------------------------------------------------

    def store_signers(self, data: bytes, signers: Signers, etag: str | None) -> None:
        if self.signers is not None:
            atomic_write(self.directory / PREVIOUS_SIGNERS_FILE, self.signers.data)
        atomic_write(self.directory / SIGNERS_FILE, data)
        self.signers = StoredDocument(data, signers)
        self.state["signers"] = {"version": signers.version, "sha256": signers.sha256, "etag": etag}
        self.save_state()

    def store_bundle(self, data: bytes, bundle: Bundle, etag: str | None, accepted_at: float | None = None) -> None:
        """Store a verified bundle; ``accepted_at`` is the clock's system part at acceptance."""
        if self.bundle is not None:
            atomic_write(self.directory / PREVIOUS_BUNDLE_FILE, self.bundle.data)
        atomic_write(self.directory / BUNDLE_FILE, data)
        self.bundle = StoredDocument(data, bundle)
        self.state["bundle"] = {"version": bundle.version, "sha256": bundle.sha256, "etag": etag,
                                "signed_by": bundle.signed_by}
        if accepted_at is not None:
            self.state["bundle"]["accepted_system_time"] = accepted_at
        self.save_state()

    def save_state(self) -> None:
        encoded = json.dumps(self.state, indent=2, sort_keys=True).encode()
        atomic_write(self.directory / STATE_FILE, encoded)
