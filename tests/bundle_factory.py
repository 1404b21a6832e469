"""Build and sign test bundles and signers documents directly, without the compiler.

The lock defines what it accepts, so its tests produce envelopes with ``cryptography`` and
:mod:`lockclient.dsse` alone: whatever the compiler does, these documents are what the format
page describes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockclient import dsse
from lockclient.bundle import BUNDLE_PAYLOAD_TYPE, SIGNERS_PAYLOAD_TYPE, format_time

# 2026-12-04T00:00:00Z: the day the tests pretend it is.
NOW = 1_796_342_400
HOUR = 3600
DAY = 86_400
FOREVER = [0, 4_102_444_800]  # 1970 .. 2100


@dataclass
class KeyPair:
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.private.public_key().public_bytes_raw()).decode()

    @property
    def keyid(self) -> str:
        return dsse.key_id(self.private.public_key())


def sign_envelope(payload: bytes, payload_type: str, *keys: KeyPair) -> bytes:
    """Return DSSE envelope bytes over ``payload`` signed by every key in ``keys``."""
    signatures = [
        {"keyid": key.keyid, "sig": base64.b64encode(key.private.sign(dsse.pae(payload_type, payload))).decode()}
        for key in keys
    ]
    envelope = {"payloadType": payload_type, "payload": base64.b64encode(payload).decode(), "signatures": signatures}
    return json.dumps(envelope).encode()


@dataclass
class Trust:
    """A root key, a signing key, and the signers document that links them."""

    root: KeyPair = field(default_factory=KeyPair.generate)
    signing: KeyPair = field(default_factory=KeyPair.generate)

    def signers(self, version: int = 1, issued_at: int = NOW - DAY, expires_at: int = NOW + 365 * DAY,
                signing_keys: list[KeyPair] | None = None, root: KeyPair | None = None) -> bytes:
        keys = signing_keys if signing_keys is not None else [self.signing]
        payload = {
            "format": 1, "version": version,
            "issued_at": format_time(issued_at), "expires_at": format_time(expires_at),
            "signers": [{"keyid": key.keyid, "public_key": key.public_b64, "description": "test"} for key in keys],
        }
        return sign_envelope(json.dumps(payload).encode(), SIGNERS_PAYLOAD_TYPE, root or self.root)

    def bundle(self, lock: str = "front-door", version: int = 1, keys: dict[str, list[int]] | None = None,
               issued_at: int = NOW - HOUR, expires_at: int = NOW + 7 * DAY, break_glass: tuple[str, ...] = (),
               office_mode: dict[str, list[int]] | None = None, settings: dict | None = None,
               signing: KeyPair | None = None) -> bytes:
        return sign_envelope(
            bundle_payload(lock, version, keys, issued_at, expires_at, break_glass, office_mode, settings),
            BUNDLE_PAYLOAD_TYPE, signing or self.signing,
        )


def bundle_payload(lock: str = "front-door", version: int = 1, keys: dict[str, list[int]] | None = None,
                   issued_at: int = NOW - HOUR, expires_at: int = NOW + 7 * DAY, break_glass: tuple[str, ...] = (),
                   office_mode: dict[str, list[int]] | None = None, settings: dict | None = None) -> bytes:
    """Return payload bytes; keys with equal interval lists share one list, as the bundle format requires."""
    intervals: list[list[int]] = []
    index_of: dict[tuple[int, ...], int] = {}

    def index(bounds: list[int]) -> int:
        key = tuple(bounds)
        if key not in index_of:
            index_of[key] = len(intervals)
            intervals.append(list(bounds))
        return index_of[key]

    key_map = {hwid: index(bounds) for hwid, bounds in (keys or {}).items()}
    office_map = {hwid: index(bounds) for hwid, bounds in (office_mode or {}).items()}
    payload = {
        "format": 1, "lock": lock, "version": version,
        "issued_at": format_time(issued_at), "expires_at": format_time(expires_at),
        "source_commit": "0123456789abcdef0123456789abcdef01234567",
        "settings": {"timezone": "Europe/Berlin", "unlock_seconds": 5, "last_seen_precision": 3600,
                     "lockdown": False, **(settings or {})},
        "intervals": intervals, "keys": key_map, "office_mode": office_map,
        "break_glass": list(break_glass),
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def synthetic_keys(count: int, seed: int = 1) -> dict[str, list[int]]:
    """Return ``count`` distinct 7-byte hardware ids with a few shared weekly-like schedules."""
    schedules = []
    for variant in range(8):
        bounds = []
        start = NOW - DAY + variant * HOUR
        for day in range(60):
            bounds += [start + day * DAY, start + day * DAY + 9 * HOUR]
        schedules.append(bounds)
    keys = {}
    for number in range(count):
        value = (seed << 40) ^ (number * 2_654_435_761) & 0xFFFFFFFFFFFF
        raw = bytes([0x04]) + value.to_bytes(6, "big")
        keys[":".join(f"{byte:02x}" for byte in raw)] = schedules[number % len(schedules)]
    return keys
