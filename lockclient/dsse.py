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


def parse_envelope(data: bytes) -> Envelope:
    """Parse envelope bytes strictly: exactly the DSSE fields, each of the right type."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnvelopeError(f"envelope is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise EnvelopeError("envelope must be a JSON object")
    unexpected = set(document) - {"payloadType", "payload", "signatures"}
    if unexpected:
        raise EnvelopeError(f"envelope has unexpected fields: {sorted(unexpected)}")

    payload_type = document.get("payloadType")
    if not isinstance(payload_type, str):
        raise EnvelopeError("envelope field payloadType must be a string")
    payload = _b64decode(document.get("payload"), "payload")

    raw_signatures = document.get("signatures")
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise EnvelopeError("envelope field signatures must be a non-empty list")
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
