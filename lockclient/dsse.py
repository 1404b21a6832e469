"""DSSE envelopes: the signed wrapper around bundles and the signers document.

An envelope is JSON ``{"payloadType": str, "payload": base64, "signatures": [{"keyid": hex,
"sig": base64}]}``. The signature covers the pre-authentication encoding (PAE) of the payload
type and the exact payload bytes, so nothing is canonicalised or re-serialised before
verification. Keys are Ed25519; a key id is the SHA-256 of the raw 32-byte public key, in hex.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


# Bundles carry one signature; a few more leave room for signing with two keys during a rotation.
MAX_SIGNATURES = 8


class EnvelopeError(ValueError):
    """The bytes are not a well-formed DSSE envelope."""


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, signature)


def pae(payload_type: str, payload: bytes) -> bytes:
    """Return the DSSE v1 pre-authentication encoding of ``payload_type`` and ``payload``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the key id: SHA-256 of the raw public key, lowercase hex."""
    raw = public_key.public_bytes_raw()
    return hashlib.sha256(raw).hexdigest()


def load_public_key(raw_b64: str) -> Ed25519PublicKey:
    """Load an Ed25519 public key from base64 of its 32 raw bytes."""
    try:
        raw = base64.b64decode(raw_b64, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as error:
        raise EnvelopeError(f"invalid Ed25519 public key {raw_b64!r}: {error}") from None


def _b64decode(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"envelope field {field} must be a base64 string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise EnvelopeError(f"envelope field {field} is not valid base64") from None
    # The decoder ignores the unused low bits of the last character, so several strings decode
    # to the same bytes. Only the canonical one is accepted: other bytes, other envelope.
    if base64.b64encode(decoded).decode("ascii") != value:
        raise EnvelopeError(f"envelope field {field} is not canonical base64")
    return decoded


def _reject_duplicate_fields(pairs: list[tuple[str, object]]) -> dict:
    document: dict = {}
    for name, value in pairs:
        if name in document:
            raise EnvelopeError(f"JSON object has the field {name!r} more than once")
        document[name] = value
    return document


def _reject_constant(name: str) -> object:
    raise EnvelopeError(f"JSON number {name} is not allowed")


def parse_strict_json(data: bytes, shown: str) -> object:
    """Parse UTF-8 JSON so that every parser would read the same document, or raise EnvelopeError.

    Python's :func:`json.loads` keeps the last of duplicate fields where some other parsers keep
    the first, accepts ``NaN`` and ``Infinity``, and guesses UTF-16 or UTF-32 from the bytes.
    Each of these would let one signed text mean two things, so each is rejected here. Numbers over 4,300
    digits and nesting deeper than the interpreter's recursion limit raise in the parser and
    are reported as malformed too.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EnvelopeError(f"{shown} is not UTF-8: {error}") from None
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_fields, parse_constant=_reject_constant)
    except EnvelopeError as error:
        raise EnvelopeError(f"{shown}: {error}") from None
    except json.JSONDecodeError as error:
        raise EnvelopeError(f"{shown} is not JSON: {error}") from None
    except ValueError:  # int() refuses integers of more than 4,300 digits (sys.get_int_max_str_digits)
        raise EnvelopeError(f"{shown} holds an integer with too many digits") from None
    except RecursionError:
        raise EnvelopeError(f"{shown} nests JSON arrays or objects too deeply") from None


def parse_envelope(data: bytes) -> Envelope:
    """Parse envelope bytes strictly: exactly the DSSE fields, each of the right type."""
    document = parse_strict_json(data, "envelope")
    if not isinstance(document, dict):
        raise EnvelopeError("envelope must be a JSON object")
    unexpected = set(document) - {"payloadType", "payload", "signatures"}
    if unexpected:
        shown = ", ".join(repr(name[:40]) for name in sorted(unexpected)[:5])
        raise EnvelopeError(f"envelope has {len(unexpected)} unexpected field(s): {shown}")

    payload_type = document.get("payloadType")
    if not isinstance(payload_type, str):
        raise EnvelopeError("envelope field payloadType must be a string")
    payload = _b64decode(document.get("payload"), "payload")

    raw_signatures = document.get("signatures")
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise EnvelopeError("envelope field signatures must be a non-empty list")
    if len(raw_signatures) > MAX_SIGNATURES:
        # Each signature under a trusted key id costs a verification: cap the work an
        # unauthenticated envelope can cause.
        raise EnvelopeError(f"envelope has {len(raw_signatures)} signatures, more than the {MAX_SIGNATURES} accepted")
    signatures = []
    for entry in raw_signatures:
        if not isinstance(entry, dict) or set(entry) - {"keyid", "sig"}:
            raise EnvelopeError("each signature must be an object with keyid and sig")
        keyid = entry.get("keyid")
        if not isinstance(keyid, str):
            raise EnvelopeError("signature keyid must be a string")
        signatures.append((keyid, _b64decode(entry.get("sig"), "sig")))
    return Envelope(payload_type, payload, tuple(signatures))


def verify_envelope_signature(envelope: Envelope, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Return the key id of a trusted key whose signature over the envelope is valid.

    Raises :class:`UnknownSignerError` when no signature carries a trusted key id and
    :class:`BadSignatureError` when trusted key ids are present but none verifies.
    """
    message = pae(envelope.payload_type, envelope.payload)
    known = [(keyid, sig) for keyid, sig in envelope.signatures if keyid in trusted]
    if not known:
        listed = ", ".join(keyid[:16] for keyid, _ in envelope.signatures)
        raise UnknownSignerError(f"signed only by keys that are not trusted here ({listed})")
    for keyid, sig in known:
        try:
            trusted[keyid].verify(sig, message)
        except InvalidSignature:
            continue
        return keyid
    raise BadSignatureError(
        f"signature by key {known[0][0][:16]} does not match the payload: tampered or corrupt"
    )


class SignatureError(ValueError):
    """Base for signature failures."""


class UnknownSignerError(SignatureError):
    """No signature was made by a trusted key."""


class BadSignatureError(SignatureError):
    """A signature by a trusted key does not verify."""
