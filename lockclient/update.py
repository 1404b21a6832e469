"""One update round: download the signers document and the bundle, verify them, store them.

Order matters: the signers document is fetched first because it lists the signing keys that
may sign the bundle. A bundle valid for longer than ``max_bundle_validity_days`` is rejected like
a forged one, because its span, counted from acceptance (:mod:`lockclient.clock`), is all
that ends it while updates are withheld.
A rejected download is logged with its reason, remembered for the next status push, and never
replaces what is stored; the current bundle stays in force. The ETag of a rejected document is
not kept, so it is downloaded and judged again on the next round.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lockclient import bundle as bundle_mod
from lockclient import dsse
from lockclient.bundle import BundleError
from lockclient.clock import Clock
from lockclient.config import DEFAULT_MAX_BUNDLE_VALIDITY_DAYS
from lockclient.fetch import Fetcher, FetchResult
from lockclient.storage import Storage

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Rejection:
    kind: str  # "bundle" or "signers"
    at: float
    reason: str
    message: str
    version: int | None


@dataclass(frozen=True)
class UpdateOutcome:
    """Outcome of one round: whether the bundle and the signers document changed, and any rejections."""

    bundle_updated: bool
    signers_updated: bool
    rejections: tuple[Rejection, ...]


def _as_malformed(error: Exception) -> BundleError:
    """Wrap a parser failure the verifier does not name (such as absurdly deep JSON nesting)."""
    return bundle_mod.MalformedError(f"{type(error).__name__}: {error}")


def signed_version(data: bytes) -> int | None:
    """Return the ``version`` of an envelope's payload, for reports about a rejected download.

    Only for logging: called after the verifier has rejected the document, never used to decide.
    """
    try:
        payload = json.loads(dsse.parse_envelope(data).payload)
    except (dsse.EnvelopeError, ValueError, RecursionError):
        return None
    version = payload.get("version") if isinstance(payload, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


class Updater:
    def __init__(self, fetcher: Fetcher, storage: Storage, clock: Clock, root_keys: dict[str, Ed25519PublicKey],
                 lock_name: str, bundle_url: str, signers_url: str,
                 on_reject: Callable[[Rejection], None] | None = None,
                 max_validity_days: int = DEFAULT_MAX_BUNDLE_VALIDITY_DAYS):
        self.fetcher = fetcher
        self.storage = storage
        self.clock = clock
        self.root_keys = root_keys
        self.lock_name = lock_name
        self.bundle_url = bundle_url
        self.signers_url = signers_url
        self.on_reject = on_reject
        self.max_validity_days = max_validity_days

    def run_once(self) -> UpdateOutcome:
        """Fetch, verify and store both documents.

        Raises :class:`lockclient.fetch.FetchError` when a download fails.
        """
        rejections: list[Rejection] = []
        signers_updated = self._update_signers(rejections)
        bundle_updated = self._update_bundle(rejections)
        self.storage.save_state()
        return UpdateOutcome(bundle_updated, signers_updated, tuple(rejections))

    def _fetch_if_changed(self, kind: str, url: str) -> FetchResult | None:
        """Download the ``kind`` document from ``url``; return None when it is unchanged.

        A not-modified response, or a body with the same SHA-256 as the stored document, only
        updates the stored ETag.
        """
        result = self.fetcher.get(url, self.storage.etag(kind))
        if result.not_modified:
            self.storage.set_etag(kind, result.etag)
            return None
        current = self.storage.signers if kind == "signers" else self.storage.bundle
        if current is not None and hashlib.sha256(result.data).hexdigest() == current.document.sha256:
            self.storage.set_etag(kind, result.etag)
            return None
        return result

    def _update_signers(self, rejections: list[Rejection]) -> bool:
        result = self._fetch_if_changed("signers", self.signers_url)
        if result is None:
            return False
        try:
            # Judged without issue times vouched for by signing keys: one of them may be the
            # stolen key that this document revokes.
            signers = bundle_mod.verify_signers(
                result.data, self.root_keys, self.storage.trusted("signers"), self.clock.now_for_signers(),
            )
        except BundleError as error:
            rejections.append(self._reject("signers", result.data, error))
            return False
        except (RecursionError, MemoryError, ValueError) as error:
            rejections.append(self._reject("signers", result.data, _as_malformed(error)))
            return False
        self.storage.store_signers(result.data, signers, result.etag)
        self.clock.observe_signers(signers)
        log.info("accepted signers document version %d (%d signing keys)", signers.version, len(signers.keys))
        return True

    def _update_bundle(self, rejections: list[Rejection]) -> bool:
        signers = self.storage.signers
        result = self._fetch_if_changed("bundle", self.bundle_url)
        if result is None:
            return False
        if signers is None:
            rejections.append(self._reject(
                "bundle", result.data, BundleError("no verified signers document, so no signing key is trusted"),
            ))
            return False
        if signers.document.expires_at <= self.clock.now():
            # A withheld signers update (freeze) must not keep a revoked signing key usable.
            rejections.append(self._reject("bundle", result.data, bundle_mod.ExpiredError(
                f"signers document version {signers.document.version} expired at "
                f"{bundle_mod.format_time(signers.document.expires_at)}; new bundles are accepted "
                "again once a current signers document is published",
            )))
            return False
        try:
            bundle = bundle_mod.verify_bundle(
                result.data, signers.document, self.lock_name, self.storage.trusted("bundle"), self.clock.now(),
                max_validity=self.max_validity_days * SECONDS_PER_DAY,
            )
        except BundleError as error:
            rejections.append(self._reject("bundle", result.data, error))
            return False
        except (RecursionError, MemoryError, ValueError) as error:
            rejections.append(self._reject("bundle", result.data, _as_malformed(error)))
            return False
        # From here the bundle lasts at most its span of elapsed time (lockclient.clock).
        accepted_at = self.clock.system_part()
        self.storage.store_bundle(result.data, bundle, result.etag, accepted_at)
        self.clock.observe_bundle(bundle, accepted_at)
        log.info(
            "accepted bundle version %d for %s: %d keys, expires %s",
            bundle.version, bundle.lock, len(bundle.keys), bundle_mod.format_time(bundle.expires_at),
        )
        return True

    def _reject(self, kind: str, data: bytes, error: BundleError) -> Rejection:
        version = signed_version(data)
        rejection = Rejection(kind, self.clock.now(), error.reason, str(error), version)
        log.error(
            "rejected downloaded %s (version %s): %s: %s; keeping the current one",
            kind, version if version is not None else "unknown", error.reason, error,
        )
        if self.on_reject is not None:
            self.on_reject(rejection)
        return rejection
