"""Lock identity: the verified client certificate's SHA-256, looked up in the published manifest.

The manifest (``manifest.json`` of the published build) lists every enabled lock with the
fingerprint of its certificate. A certificate that is not listed belongs to an unknown or
disabled lock, and the receiver answers 403. The manifest is re-read when the file changes,
so a publish that disables a lock takes effect without a restart.

The lock's bundle is read too (the payload inside the DSSE envelope, without verifying the
signature: it is our own published file) for two facts the receiver checks pushes against:
the keys it contains and its last-seen precision.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_PRECISION = 3600


class ManifestError(Exception):
    """The manifest cannot be read or has the wrong structure."""


class CertificateError(ValueError):
    """A client certificate that cannot be decoded."""


@dataclass(frozen=True)
class PublishedLock:
    lock: str
    version: int | None
    sha256: str | None
    path: Path | None
    certificate_sha256: str | None


@dataclass(frozen=True)
class Manifest:
    bundles: dict[str, PublishedLock]
    by_certificate: dict[str, PublishedLock]


@dataclass(frozen=True)
class BundleFacts:
    version: int | None
    keys: frozenset[str]
    precision: int


def certificate_sha256_from_pem(pem: str) -> str:
    """Return the lowercase hex SHA-256 of the DER encoding of a PEM certificate."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.strip())
    except (ValueError, binascii.Error) as error:
        raise CertificateError(f"client certificate is not a PEM certificate: {error}") from None
    return hashlib.sha256(der).hexdigest()


def certificate_from_header(value: str) -> str:
    """Decode the identity header set by nginx (``$ssl_client_escaped_cert``: URL-encoded PEM)."""
    return urllib.parse.unquote(value)


def load_manifest(path: Path) -> Manifest:
    """Read ``manifest.json`` and index its locks by name and by certificate fingerprint."""
    try:
        document = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found; set [data] manifest to the manifest.json "
                            "of the published build") from None
    except (OSError, ValueError) as error:
        raise ManifestError(f"manifest {path} cannot be read: {error}") from None
    bundles = document.get("bundles") if isinstance(document, dict) else None
    if not isinstance(bundles, dict):
        raise ManifestError(f"manifest {path} has no 'bundles' object; is it a doorlock manifest.json?")

    by_name: dict[str, PublishedLock] = {}
    by_certificate: dict[str, PublishedLock] = {}
    sharing: dict[str, list[str]] = {}
    for name, entry in bundles.items():
        if not isinstance(entry, dict):
            raise ManifestError(f"manifest {path}: bundles.{name} must be an object")
        relative = entry.get("path")
        fingerprint = entry.get("certificate_sha256")
        published = PublishedLock(
            lock=name,
            version=entry.get("version") if isinstance(entry.get("version"), int) else None,
            sha256=entry.get("sha256") if isinstance(entry.get("sha256"), str) else None,
            path=(Path(path).parent / relative) if isinstance(relative, str) else None,
            certificate_sha256=fingerprint.lower() if isinstance(fingerprint, str) else None,
        )
        by_name[name] = published
        if published.certificate_sha256:
            fingerprint = published.certificate_sha256.replace(":", "")
            sharing.setdefault(fingerprint, []).append(name)
            by_certificate[fingerprint] = published

    # One certificate for two locks would let either lock write the other's rows, so neither
    # is accepted until the access repository gives each lock its own certificate.
    for fingerprint, names in sharing.items():
        if len(names) > 1:
            del by_certificate[fingerprint]
            log.error("manifest %s: locks %s have the same certificate (sha256 %s); pushes with it get "
                      "403 until each lock has its own certificate", path, ", ".join(sorted(names)), fingerprint)
    return Manifest(by_name, by_certificate)


def read_bundle_facts(published: PublishedLock) -> BundleFacts | None:
    """Read the key list and last-seen precision from a lock's published bundle, or None."""
    if published.path is None:
        return None
    try:
        envelope = json.loads(published.path.read_bytes())
        payload = json.loads(base64.b64decode(envelope["payload"], validate=True))
        keys = set(payload.get("keys", {}))
        keys.update(payload.get("office_mode", {}))
        keys.update(payload.get("break_glass", []))
        precision = payload.get("settings", {}).get("last_seen_precision", DEFAULT_PRECISION)
        return BundleFacts(version=payload.get("version"), keys=frozenset(keys), precision=int(precision))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
        log.error("cannot read the bundle of lock %s at %s: %s", published.lock, published.path, error)
        return None


class LockDirectory:
    """The locks the receiver accepts, kept in step with the manifest file on disk."""

    def __init__(self, manifest_path: Path):
        self.manifest_path = Path(manifest_path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._manifest = load_manifest(self.manifest_path)
        self._stamp = self._file_stamp()
        self._facts: dict[str, tuple[str | None, BundleFacts | None]] = {}
        log.info("manifest %s lists %d lock(s)", self.manifest_path, len(self._manifest.bundles))

    def identify(self, certificate_sha256: str) -> PublishedLock | None:
        """Return the published lock for a certificate fingerprint, or None for unknown/disabled."""
        return self._current().by_certificate.get(certificate_sha256.lower())

    def bundle_facts(self, lock: PublishedLock) -> BundleFacts | None:
        """Return the facts of the lock's current bundle, cached per bundle hash."""
        with self._lock:
            cached = self._facts.get(lock.lock)
            if cached is not None and cached[0] == lock.sha256:
                return cached[1]
        facts = read_bundle_facts(lock)
        with self._lock:
            self._facts[lock.lock] = (lock.sha256, facts)
        return facts

    def _current(self) -> Manifest:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return self._manifest
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._manifest = load_manifest(self.manifest_path)
                    log.info("reloaded manifest %s: %d lock(s)", self.manifest_path, len(self._manifest.bundles))
                except ManifestError as error:
                    # Keep the previous manifest: a broken publish must not lock everyone out.
                    log.error("%s; still using the previous manifest", error)
                self._stamp = stamp
            return self._manifest

    def _file_stamp(self) -> tuple | None:
        try:
            status = os.stat(self.manifest_path)
        except OSError:
            return None
        return (status.st_ino, status.st_mtime_ns, status.st_size)
