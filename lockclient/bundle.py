"""Verify bundles and signers documents, and decide a tap from a verified bundle.

The lock trusts nothing it downloads until these steps pass, in this order, each with its
own exception (one per attack the lock must withstand):

1. size cap (endless data)                                 -> :class:`OversizedError`
2. strict DSSE envelope parsing                            -> :class:`MalformedError`
3. payload type                                            -> :class:`WrongPayloadTypeError`
4. Ed25519 signature by a key the root authorised          -> :class:`UnknownSignerError`,
                                                              :class:`BadSignatureError`
5. payload parsing and structure (only after the signature) -> :class:`MalformedError`
6. lock name (another lock's bundle)                       -> :class:`WrongLockError`
7. validity span, when a limit is given (freeze with a     -> :class:`ValidityTooLongError`
   stolen signing key)
8. version against the stored one (rollback)               -> :class:`RollbackError`
9. expiry (freeze)                                         -> :class:`ExpiredError`

The signers document goes through the same steps against the pinned root keys, without step 7.
Step 7 bounds ``expires_at - issued_at``. Without it, an attacker with a stolen signing key could
sign a bundle that expires in ten years and keep it working by withholding every update. Verification
functions return the verified object or raise; there is no boolean path around them.

JSON is parsed strictly (:func:`lockclient.dsse.parse_strict_json`): no duplicate fields, no
``NaN``, UTF-8 only, versions and instants within a signed 64-bit integer. The stored version
of step 7 stops counting once the key that signed it is no longer listed, so a huge version
signed with a stolen key cannot block genuine bundles after the key is revoked.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lockclient import dsse

__all__ = [
    "BUNDLE_PAYLOAD_TYPE", "SIGNERS_PAYLOAD_TYPE", "MAX_ENVELOPE_BYTES",
    "BundleError", "OversizedError", "MalformedError", "WrongPayloadTypeError",
    "UnknownSignerError", "BadSignatureError", "WrongLockError", "RollbackError",
    "ExpiredError", "ValidityTooLongError", "Bundle", "Signers", "TrustedState", "Decision",
    "verify_signers", "verify_bundle", "decide", "parse_time", "format_time",
]

BUNDLE_PAYLOAD_TYPE = "application/vnd.doorlock.bundle+json; version=1"
SIGNERS_PAYLOAD_TYPE = "application/vnd.doorlock.signers+json; version=1"
BUNDLE_FORMAT = 1
SIGNERS_FORMAT = 1

# About 200 bytes per key and interval list in the worst case, so 32 MiB is room for well over
# 100,000 keys. Anything larger is rejected before it is parsed.
MAX_ENVELOPE_BYTES = 32 * 1024 * 1024

# Versions and instants must fit a signed 64-bit integer, so that a lock written in another
# language reads the same number as this one.
MAX_INTEGER = 2**63 - 1


class BundleError(Exception):
    """Base of every reason to reject a bundle or signers document."""

    reason = "rejected"


class OversizedError(BundleError):
    reason = "oversized"


class MalformedError(BundleError):
    reason = "malformed"


class WrongPayloadTypeError(BundleError):
    reason = "wrong payload type"


class WrongLockError(BundleError):
    reason = "wrong lock"


class RollbackError(BundleError):
    reason = "rollback"


class ExpiredError(BundleError):
    reason = "expired"


class ValidityTooLongError(BundleError):
    reason = "validity too long"


class UnknownSignerError(BundleError):
    reason = "unknown signer"


class BadSignatureError(BundleError):
    reason = "bad signature"


def parse_time(value: object, field_name: str) -> int:
    """Parse an RFC 3339 UTC timestamp ending in ``Z`` into Unix seconds."""
    if not isinstance(value, str) or not value.endswith("Z"):
        raise MalformedError(f"{field_name} must be a UTC timestamp like 2026-01-31T12:00:00Z, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        raise MalformedError(f"{field_name} is not a valid timestamp: {value!r}") from None
    return int(parsed.timestamp())


def format_time(seconds: int | float) -> str:
    """Format Unix seconds as an RFC 3339 UTC timestamp with a ``Z`` suffix."""
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TrustedState:
    """The version and hash of the last document the lock accepted, the reference against rollback.

    ``signed_by`` is the key id that signed the remembered bundle (None when unknown, and for a
    signers document). :func:`verify_bundle` ignores the reference once that key is no longer listed.
    """

    version: int
    sha256: str
    signed_by: str | None = None


@dataclass(frozen=True)
class Signers:
    """A verified signers document: the signing keys the root currently authorises."""

    version: int
    issued_at: int
    expires_at: int
    keys: dict[str, Ed25519PublicKey]
    sha256: str


@dataclass
class Bundle:
    """A verified bundle payload, prepared for lookups."""

    lock: str
    version: int
    issued_at: int
    expires_at: int
    source_commit: str | None
    settings: dict
    intervals: list[list[int]]
    keys: dict[str, int]
    office_mode: dict[str, int]
    break_glass: frozenset[str]
    sha256: str
    signed_by: str = ""
    payload: dict = field(default_factory=dict, repr=False)

    @property
    def unlock_seconds(self) -> float:
        return float(self.settings.get("unlock_seconds", 5))

    @property
    def last_seen_precision(self) -> int:
        return int(self.settings.get("last_seen_precision", 3600))

    @property
    def lockdown(self) -> bool:
        return bool(self.settings.get("lockdown", False))

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at


def _open_envelope(data: bytes, payload_type: str, trusted: dict[str, Ed25519PublicKey]):
    if len(data) > MAX_ENVELOPE_BYTES:
        raise OversizedError(f"{len(data)} bytes is over the limit of {MAX_ENVELOPE_BYTES} bytes")
    try:
        envelope = dsse.parse_envelope(data)
    except dsse.EnvelopeError as error:
        raise MalformedError(str(error)) from None
    if envelope.payload_type != payload_type:
        # Cut to 100 characters: the field is unauthenticated and ends up in the log.
        raise WrongPayloadTypeError(f"payload type is {envelope.payload_type[:100]!r}, expected {payload_type!r}")
    try:
        signed_by = dsse.verify_envelope_signature(envelope, trusted)
    except dsse.UnknownSignerError as error:
        raise UnknownSignerError(str(error)) from None
    except dsse.BadSignatureError as error:
        raise BadSignatureError(str(error)) from None
    try:
        payload = dsse.parse_strict_json(envelope.payload, "signed payload")
    except dsse.EnvelopeError as error:
        raise MalformedError(str(error)) from None
    if not isinstance(payload, dict):
        raise MalformedError("signed payload must be a JSON object")
    return payload, signed_by


def _check_rollback(kind: str, version: int, digest: str, previous: TrustedState | None) -> None:
    if previous is None:
        return
    if version < previous.version:
        raise RollbackError(f"{kind} version {version} is lower than the stored version {previous.version}")
    if version == previous.version and digest != previous.sha256:
        raise RollbackError(
            f"{kind} version {version} equals the stored version but its bytes differ "
            f"(sha256 {digest[:16]} vs stored {previous.sha256[:16]})"
        )


def _require(payload: dict, name: str, kind: type | tuple[type, ...]):
    value = payload.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise MalformedError(f"payload field {name} is missing or has the wrong type")
    return value


def _require_version(payload: dict) -> int:
    version = _require(payload, "version", int)
    if not 0 <= version <= MAX_INTEGER:
        raise MalformedError(f"payload field version {version} is outside 0 to 2**63-1")
    return version


def _validity(payload: dict) -> tuple[int, int]:
    issued_at = parse_time(payload.get("issued_at"), "issued_at")
    expires_at = parse_time(payload.get("expires_at"), "expires_at")
    if expires_at <= issued_at:
        raise MalformedError(
            f"expires_at {format_time(expires_at)} is not after issued_at {format_time(issued_at)}"
        )
    return issued_at, expires_at


def _check_validity_span(version: int, issued_at: int, expires_at: int, max_validity: int | None) -> None:
    if max_validity is None or expires_at - issued_at <= max_validity:
        return
    raise ValidityTooLongError(
        f"bundle version {version} is valid for {_days(expires_at - issued_at)} "
        f"({format_time(issued_at)} to {format_time(expires_at)}), more than the {_days(max_validity)} "
        "this lock accepts (max_bundle_validity_days); a bundle signed with a stolen key looks like "
        "this. If the lock's bundle.valid_days in the access repository is meant to be that long, "
        "raise max_bundle_validity_days in the lock's configuration"
    )


def _days(seconds: int) -> str:
    if seconds == 86400:
        return "1 day"
    days = seconds / 86400
    return f"{days:.0f} days" if seconds % 86400 == 0 else f"{days:.2f} days"


def verify_signers(
    data: bytes,
    root_keys: dict[str, Ed25519PublicKey],
    previous: TrustedState | None,
    now: float,
    allow_expired: bool = False,
) -> Signers:
    """Verify a signers document against the pinned root keys and return it.

    ``allow_expired`` is for re-loading the stored document at start, so that a stored expired
    bundle can still be verified and its break-glass keys keep working.
    """
    digest = hashlib.sha256(data).hexdigest()
    payload, _ = _open_envelope(data, SIGNERS_PAYLOAD_TYPE, root_keys)

    if payload.get("format") != SIGNERS_FORMAT:
        raise MalformedError(f"signers format {payload.get('format')!r} is not supported (expected {SIGNERS_FORMAT})")
    version = _require_version(payload)
    issued_at, expires_at = _validity(payload)
    entries = _require(payload, "signers", list)
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
            raise MalformedError("each signer needs a public_key (base64 of the raw Ed25519 key)")
        try:
            public_key = dsse.load_public_key(entry["public_key"])
        except dsse.EnvelopeError as error:
            raise MalformedError(str(error)) from None
        keyid = dsse.key_id(public_key)
        if entry.get("keyid", keyid) != keyid:
            raise MalformedError(f"signer keyid {entry.get('keyid')!r} does not match its public key")
        keys[keyid] = public_key

    _check_rollback("signers document", version, digest, previous)
    if not allow_expired and now >= expires_at:
        raise ExpiredError(f"signers document version {version} expired at {format_time(expires_at)}")
    return Signers(version, issued_at, expires_at, keys, digest)


def _parse_intervals(raw: object) -> list[list[int]]:
    if not isinstance(raw, list):
        raise MalformedError("payload field intervals must be a list of interval lists")
    lists = []
    for position, bounds in enumerate(raw):
        if not isinstance(bounds, list) or len(bounds) % 2:
            raise MalformedError(f"interval list {position} must contain an even number of instants")
        previous = None
        for instant in bounds:
            if not isinstance(instant, int) or isinstance(instant, bool) or not 0 <= instant <= MAX_INTEGER:
                raise MalformedError(f"interval list {position} contains {instant!r}, not an instant in Unix seconds")
            if previous is not None and instant <= previous:
                raise MalformedError(f"interval list {position} is not strictly increasing")
            previous = instant
        lists.append(bounds)
    return lists


def _parse_settings(raw: object) -> dict:
    """Check the types of the settings the lock reads. Absent settings take their defaults."""
    if not isinstance(raw, dict):
        raise MalformedError("payload field settings must be an object")
    zone = raw.get("timezone")
    if zone is not None and not isinstance(zone, str):
        raise MalformedError(f"settings.timezone must be a string, got {zone!r}")
    unlock = raw.get("unlock_seconds", 5)
    # The comparison also rejects NaN and infinity, should they ever get past the JSON parser.
    if isinstance(unlock, bool) or not isinstance(unlock, (int, float)) or not 0 < unlock <= 3600:
        raise MalformedError(f"settings.unlock_seconds must be above 0 and at most 3600 seconds, got {unlock!r}")
    precision = raw.get("last_seen_precision", 3600)
    if isinstance(precision, bool) or not isinstance(precision, int) or not 0 < precision <= MAX_INTEGER:
        raise MalformedError(f"settings.last_seen_precision must be a positive number of seconds, got {precision!r}")
    lockdown = raw.get("lockdown", False)
    if not isinstance(lockdown, bool):
        raise MalformedError(f"settings.lockdown must be true or false, got {lockdown!r}")
    return raw


def _parse_key_map(raw: object, name: str, list_count: int) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise MalformedError(f"payload field {name} must map hardware ids to interval list numbers")
    for hwid, index in raw.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < list_count:
            raise MalformedError(f"{name}[{hwid}] points to interval list {index!r}, which does not exist")
    return raw


def verify_bundle(
    data: bytes,
    signers: Signers,
    lock_name: str,
    previous: TrustedState | None,
    now: float,
    allow_expired: bool = False,
    *,
    max_validity: int | None = None,
) -> Bundle:
    """Verify bundle envelope bytes for ``lock_name`` and return the bundle.

    ``signers`` is an already verified signers document (see :func:`verify_signers`).
    ``allow_expired`` is for re-loading the stored bundle at start: an expired bundle still
    carries the break-glass keys, and :func:`decide` applies the expiry rule itself.
    ``max_validity`` (seconds) rejects a bundle whose ``expires_at - issued_at`` is longer; the
    updater passes the lock's ``max_bundle_validity_days``, None checks nothing.
    """
    digest = hashlib.sha256(data).hexdigest()
    payload, signed_by = _open_envelope(data, BUNDLE_PAYLOAD_TYPE, signers.keys)

    if payload.get("format") != BUNDLE_FORMAT:
        raise MalformedError(f"bundle format {payload.get('format')!r} is not supported (expected {BUNDLE_FORMAT})")
    lock = _require(payload, "lock", str)
    version = _require_version(payload)
    issued_at, expires_at = _validity(payload)
    source_commit = payload.get("source_commit")
    if source_commit is not None and not isinstance(source_commit, str):
        raise MalformedError("payload field source_commit must be a string or null")
    settings = _parse_settings(payload.get("settings"))
    intervals = _parse_intervals(payload.get("intervals"))
    keys = _parse_key_map(payload.get("keys"), "keys", len(intervals))
    office_mode = _parse_key_map(payload.get("office_mode", {}), "office_mode", len(intervals))
    break_glass = payload.get("break_glass", [])
    if not isinstance(break_glass, list) or not all(isinstance(h, str) for h in break_glass):
        raise MalformedError("payload field break_glass must be a list of hardware ids")

    if lock != lock_name:
        raise WrongLockError(f"bundle is for lock {lock!r}, this lock is {lock_name!r}")
    # The lock counts this span from acceptance (lockclient.clock), so a forged issued_at in the
    # future does not stretch how long the bundle lasts there.
    _check_validity_span(version, issued_at, expires_at, max_validity)
    # A stored version set by a bundle whose signing key the root has since removed from the
    # signers document does not bind. Whoever stole that key may have signed a huge version so
    # that every genuine bundle looks like a rollback. A bundle by a listed key replaces it.
    if previous is not None and previous.signed_by is not None and previous.signed_by not in signers.keys:
        previous = None
    _check_rollback("bundle", version, digest, previous)
    # issued_at is not compared with ``now``. The clock floor it raises is tied to ``signed_by``
    # (lockclient.clock), so a future issue time forged with a stolen key ends with the key.
    # The lock also moves that floor on from acceptance, so the bundle expires after its span anyway.
    if not allow_expired and now >= expires_at:
        raise ExpiredError(f"bundle version {version} expired at {format_time(expires_at)}")

    return Bundle(
        lock=lock, version=version, issued_at=issued_at, expires_at=expires_at,
        source_commit=source_commit, settings=settings, intervals=intervals, keys=keys,
        office_mode=office_mode, break_glass=frozenset(break_glass), sha256=digest,
        signed_by=signed_by, payload=payload,
    )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    # One of: granted, break-glass, unknown-key, outside-schedule, expired, lockdown.
    code: str


def _inside(bounds: list[int], instant: float) -> bool:
    # Bounds are start0, end0, start1, end1, ... of half-open intervals: an instant is
    # inside exactly when an odd number of bounds lie at or before it.
    return bisect.bisect_right(bounds, instant) % 2 == 1


def decide(bundle: Bundle, hwid: str, instant: float, keep_expired: bool = False) -> Decision:
    """Decide whether ``hwid`` (canonical form) may open at ``instant`` (Unix seconds).

    After expiry only break-glass keys open, unless ``keep_expired`` is set by the operator.
    In lockdown, too, only break-glass keys open.
    """
    if hwid in bundle.break_glass:
        return Decision(True, "break-glass key", "break-glass")
    if bundle.lockdown:
        return Decision(False, "lock is in lockdown: only break-glass keys open", "lockdown")
    if bundle.is_expired(instant) and not keep_expired:
        return Decision(
            False, f"bundle version {bundle.version} expired at {format_time(bundle.expires_at)}: "
            "only break-glass keys open", "expired",
        )
    index = bundle.keys.get(hwid)
    if index is None:
        return Decision(False, "key is not in this lock's bundle", "unknown-key")
    if _inside(bundle.intervals[index], instant):
        return Decision(True, "key is allowed at this time", "granted")
    return Decision(False, "key is known but not allowed at this time", "outside-schedule")


def office_mode_until(bundle: Bundle, hwid: str, instant: float) -> int | None:
    """Return the end of the office-mode interval containing ``instant``, or None if not allowed."""
    index = bundle.office_mode.get(hwid)
    if index is None:
        return None
    bounds = bundle.intervals[index]
    position = bisect.bisect_right(bounds, instant)
    if position % 2 == 0:
        return None
    return bounds[position]
