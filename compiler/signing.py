"""Ed25519 key files and DSSE signing for bundles and the signers document.

Key layout on disk, for a key called ``NAME``:

- ``NAME.key``: the private key, PKCS#8 PEM, created with mode 0600 and never overwritten;
- ``NAME.pub``: one line, base64 of the raw 32-byte public key (the form lock configs pin
  and the signers document lists).

A key id is the SHA-256 of the raw public key in lowercase hex (:func:`lockclient.dsse.key_id`).
CI may pass the signing key as PEM text in the environment variable ``DOORLOCK_SIGNING_KEY``
instead of a file. Private key material is never logged or printed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lockclient import dsse

log = logging.getLogger(__name__)

SIGNING_KEY_ENV = "DOORLOCK_SIGNING_KEY"
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


class KeyFileError(Exception):
    """A key file that cannot be created or loaded; the message names the file and the fix."""


@dataclass(frozen=True)
class KeyPairPaths:
    private: Path
    public: Path
    key_id: str


def key_pair_paths(name: str | Path) -> tuple[Path, Path]:
    """Return the ``.key`` and ``.pub`` paths for a key name (a trailing suffix is ignored)."""
    base = Path(name)
    if base.suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX):
        base = base.with_suffix("")
    return base.with_name(base.name + PRIVATE_SUFFIX), base.with_name(base.name + PUBLIC_SUFFIX)


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    """Return base64 of the raw 32-byte public key."""
    return base64.b64encode(public_key.public_bytes_raw()).decode("ascii")


def generate_key_pair(name: str | Path) -> KeyPairPaths:
    """Generate an Ed25519 key pair and write ``NAME.key`` (0600) and ``NAME.pub``.

    Raises :class:`KeyFileError` instead of overwriting either file, so that a typo cannot
    destroy a key in use.
    """
    private_path, public_path = key_pair_paths(name)
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} already exists; choose another --out name or move the old key away first")
    if not private_path.parent.is_dir():
        raise KeyFileError(f"directory {private_path.parent} does not exist; create it first")

    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL never follows or replaces an existing file. The mode is set at creation, so the
    # key is not readable by others even for a moment.
    try:
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{private_path} already exists; choose another --out name") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(private_path, 0o600)  # the umask may have removed bits, never added them

    public_key = private_key.public_key()
    with open(public_path, "x", encoding="ascii") as handle:
        handle.write(public_key_b64(public_key) + "\n")
    return KeyPairPaths(private_path, public_path, dsse.key_id(public_key))


def _parse_private_pem(pem: bytes, shown: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise KeyFileError(f"{shown} is encrypted with a passphrase; doorlock needs an unencrypted PKCS#8 key") from None
    except (ValueError, TypeError):
        # The parser's message may quote key material, so it is not passed on.
        raise KeyFileError(
            f"{shown} is not a PEM private key; give the NAME.key file written by 'doorlock keygen'"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{shown} contains a {type(key).__name__}, not an Ed25519 key; generate one with 'doorlock keygen'")
    return key


def load_private_key(path: str | Path | None = None) -> Ed25519PrivateKey:
    """Load a private key from ``path``, or from ``DOORLOCK_SIGNING_KEY`` when ``path`` is None."""
    if path is None:
        pem = os.environ.get(SIGNING_KEY_ENV)
        if not pem:
            raise KeyFileError(
                f"no signing key: pass --key FILE or put the PEM text of the key in {SIGNING_KEY_ENV}"
            )
        return _parse_private_pem(pem.encode("utf-8"), f"environment variable {SIGNING_KEY_ENV}")

    path = Path(path)
    if path.suffix == PUBLIC_SUFFIX:
        raise KeyFileError(f"{path} is a public key; sign with the matching {path.with_suffix(PRIVATE_SUFFIX).name}")
    try:
        mode = path.stat().st_mode
        pem = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} not found") from None
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s is accessible by other users (mode %o); run: chmod 600 %s", path, mode & 0o777, path)
    return _parse_private_pem(pem, f"key file {path}")


def load_public_key_file(path: str | Path) -> Ed25519PublicKey:
    """Load a ``NAME.pub`` file (one line of base64 of the raw public key)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"public key file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"cannot read public key file {path}: {error}") from None
    if text.startswith("-----BEGIN"):
        raise KeyFileError(f"{path} is a PEM file; give the NAME.pub file written by 'doorlock keygen'")
    try:
        return dsse.load_public_key(text)
    except dsse.EnvelopeError:
        raise KeyFileError(
            f"{path} does not contain a base64 Ed25519 public key (32 raw bytes); "
            "give the NAME.pub file written by 'doorlock keygen'"
        ) from None


def encode_json(document: object) -> bytes:
    """Encode JSON deterministically: sorted keys, compact separators, ASCII only."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_envelope(payload_type: str, payload: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Sign ``payload`` and return the DSSE envelope bytes.

    Ed25519 signatures are deterministic, so the same key and payload give the same bytes.
    """
    signature = private_key.sign(dsse.pae(payload_type, payload))
    envelope = {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {"keyid": dsse.key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}
        ],
    }
    return encode_json(envelope)


@dataclass(frozen=True)
class SignersSummary:
    """The fields of a signers document, read without checking the root signature."""

    version: int
    issued_at: int
    expires_at: int
    key_ids: tuple[str, ...]
    descriptions: dict[str, str]
    root_key_ids: tuple[str, ...]


def build_signers_document(
    root_key: Ed25519PrivateKey,
    signers: list[tuple[Ed25519PublicKey, str]],
    version: int,
    issued_at: int,
    expires_at: int,
) -> bytes:
    """Return a root-signed signers document listing ``signers`` (public key, description)."""
    from lockclient.bundle import SIGNERS_PAYLOAD_TYPE, format_time

    entries = {}
    for public_key, description in signers:
        keyid = dsse.key_id(public_key)
        entries[keyid] = {"keyid": keyid, "public_key": public_key_b64(public_key), "description": description}
    payload = {
        "format": 1,
        "version": version,
        "issued_at": format_time(issued_at),
        "expires_at": format_time(expires_at),
        "signers": [entries[keyid] for keyid in sorted(entries)],
    }
    return sign_envelope(SIGNERS_PAYLOAD_TYPE, encode_json(payload), root_key)


def read_signers_document(data: bytes, shown: str) -> SignersSummary:
    """Read a signers document's fields without checking the root signature.

    The lock checks that signature, because the compiler has no root public key (locks pin it).
    This function only checks the structure.
    """
    from lockclient import bundle

    try:
        envelope = dsse.parse_envelope(data)
    except dsse.EnvelopeError as error:
        raise KeyFileError(f"{shown} is not a DSSE envelope: {error}") from None
    if envelope.payload_type != bundle.SIGNERS_PAYLOAD_TYPE:
        raise KeyFileError(f"{shown} has payload type {envelope.payload_type!r}, not a signers document")
    try:
        payload = dsse.parse_strict_json(envelope.payload, "signed payload")
        version = payload["version"]
        issued_at = bundle.parse_time(payload["issued_at"], "issued_at")
        expires_at = bundle.parse_time(payload["expires_at"], "expires_at")
        key_ids = []
        descriptions = {}
        for entry in payload["signers"]:
            keyid = dsse.key_id(dsse.load_public_key(entry["public_key"]))
            key_ids.append(keyid)
            descriptions[keyid] = str(entry.get("description", ""))
    except (ValueError, KeyError, TypeError, bundle.BundleError, dsse.EnvelopeError) as error:
        raise KeyFileError(f"{shown} is not a valid signers document: {error}") from None
    if not isinstance(version, int) or isinstance(version, bool):
        raise KeyFileError(f"{shown}: version must be an integer, got {version!r}")
    return SignersSummary(
        version, issued_at, expires_at, tuple(key_ids), descriptions,
        tuple(keyid for keyid, _ in envelope.signatures),
    )
