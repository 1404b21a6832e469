"""Canonical hardware ids (card UIDs and FeliCa IDm).

The canonical form is lowercase hex bytes joined by colons (``04:a2:3b:4c:5d:6e:7f``): the
form nfcpy's ``tag.identifier`` gives when formatted byte by byte, and the form doorlockd
stored. The compiler normalises what admins type; the lock formats what the reader returns
with :func:`format_hwid`, so both sides meet on the same string.
"""

from __future__ import annotations

import re

# ISO 14443-A UIDs are 4, 7 or 10 bytes; a FeliCa IDm is 8 bytes.
ACCEPTED_LENGTHS = (4, 7, 8, 10)

# A 4-byte UID whose first byte is 0x08 is a random ID (RID): the card makes up a new one
# for every tap, so it can never identify a person.
RANDOM_UID_FIRST_BYTE = 0x08

_SEPARATORS = re.compile(r"[\s:\-]")
_HEX = re.compile(r"^[0-9a-fA-F]*$")
# Separated spellings: two hex digits per byte and one kind of separator throughout, so that a
# misplaced separator ("0:4a:2b") is caught as a copying mistake rather than silently merged.
_SEPARATED = re.compile(r"^[0-9a-fA-F]{2}(?P<separator>[: -])[0-9a-fA-F]{2}(?:(?P=separator)[0-9a-fA-F]{2})*$")


class InvalidHardwareId(ValueError):
    """A hardware id that cannot be normalised; the message says why and what to do."""


def normalize_hwid(text: str) -> str:
    """Return the canonical form of ``text`` or raise :class:`InvalidHardwareId`.

    Accepts upper or lower case, with no separator at all or with one kind of separator (colon,
    dash or space) between every two hex digits.
    """
    if not isinstance(text, str):
        raise InvalidHardwareId(
            f"hardware id must be a string of hex bytes, got {type(text).__name__} {text!r}; "
            "quote it in YAML, e.g. hwid: \"04:a2:3b:4c\""
        )
    stripped = text.strip()
    digits = _SEPARATORS.sub("", stripped)
    if not digits:
        raise InvalidHardwareId("hardware id is empty; write the card UID as hex bytes, e.g. 04:a2:3b:4c")
    if not _HEX.match(digits):
        bad = next(ch for ch in digits if ch not in "0123456789abcdefABCDEF")
        raise InvalidHardwareId(
            f"hardware id {text!r} contains {bad!r}, which is not a hex digit; "
            "use only 0-9 and a-f, optionally separated by colons"
        )
    if len(digits) % 2:
        raise InvalidHardwareId(
            f"hardware id {text!r} has an odd number of hex digits ({len(digits)}); "
            "every byte needs two digits, e.g. 04 not 4"
        )
    if digits != stripped and not _SEPARATED.match(stripped):
        raise InvalidHardwareId(
            f"hardware id {text!r} has separators in the wrong places; write two hex digits per "
            "byte with the same separator between every byte, e.g. 04:a2:3b:4c, or no separator"
        )
    raw = bytes.fromhex(digits)
    check_hwid_bytes(raw, shown=text)
    return format_hwid(raw)


def check_hwid_bytes(raw: bytes, shown: str | None = None) -> None:
    """Raise :class:`InvalidHardwareId` unless ``raw`` is a usable card identifier."""
    shown = shown if shown is not None else raw.hex()
    if len(raw) not in ACCEPTED_LENGTHS:
        raise InvalidHardwareId(
            f"hardware id {shown!r} is {len(raw)} bytes long; card UIDs are 4, 7 or 10 bytes "
            "and FeliCa IDm 8 bytes: check that it was copied completely"
        )
    if len(raw) == 4 and raw[0] == RANDOM_UID_FIRST_BYTE:
        raise InvalidHardwareId(
            f"hardware id {shown!r} is a random UID (4 bytes starting with 08): the card sends "
            "a new one on every tap, so it cannot identify anyone; enrol another card"
        )


def format_hwid(raw: bytes) -> str:
    """Format identifier bytes in the canonical form, without checking them."""
    return ":".join(f"{byte:02x}" for byte in raw)


def is_random_uid(raw: bytes) -> bool:
    """Return True for a 4-byte random UID (first byte 0x08)."""
    return len(raw) == 4 and raw[0] == RANDOM_UID_FIRST_BYTE
