"""The deployment's private certificate authority: lock and server certificates for mutual TLS.

One small CA per deployment signs two kinds of leaf certificates, all ECDSA P-256:

- server certificates (bundle hosting, receiver): serverAuth, with the host name and, for
  ``localhost``, ``127.0.0.1`` and ``::1`` in the subjectAltName;
- lock certificates: clientAuth, subject CN = the lock's name. nginx maps the verified CN to
  the one bundle the lock may read. The receiver and the manifest identify a lock by the
  SHA-256 of its certificate (:func:`certificate_sha256`).

Private keys are written with mode 0600 and never leave the directory they are generated
in. A lock's key can be generated on the lock itself (:func:`create_lock_request`) so that
only a signing request travels to the CA (:func:`sign_lock_request`). :func:`renew`
re-issues a certificate for the key it already has, so renewing needs only the certificate.

Files: ``ca.crt`` and ``ca.key`` in the CA directory; ``<name>.crt`` and ``<name>.key`` for
every issued certificate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lockclient.storage import atomic_write

__all__ = [
    "PkiError", "init_ca", "issue_server", "issue_lock", "create_lock_request", "sign_lock_request",
    "renew", "certificate_sha256",
    "certificate_not_after", "certificate_common_name", "load_certificate",
    "CA_CERT_NAME", "CA_KEY_NAME", "DEFAULT_LOCK_DAYS", "DEFAULT_SERVER_DAYS",
]

log = logging.getLogger(__name__)

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
DEFAULT_CA_DAYS = 3650
# 825 days is the longest server certificate lifetime that Apple platforms accept.
DEFAULT_SERVER_DAYS = 825
DEFAULT_LOCK_DAYS = 365

# Certificates become valid a little before they are issued so that a peer whose clock is a
# few minutes behind does not reject a fresh certificate.
BACKDATE = timedelta(minutes=5)

# Lock names become file names and nginx map keys, so they are restricted to the id syntax
# of the access repository.
_LOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class PkiError(Exception):
    """A certificate operation that cannot be done as requested; the message explains why."""


# --- public API --------------------------------------------------------------------------


def init_ca(directory: str | os.PathLike, name: str = "doorlock CA", days: int = DEFAULT_CA_DAYS) -> Path:
    """Create a new CA in ``directory`` and return the path of its certificate (``ca.crt``).

    Raises :class:`PkiError` when the directory already contains a CA: replacing it would lock
    every lock out of the bundle hosting.
    """
    directory = Path(directory)
    _check_days(days)
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    for existing in (cert_path, key_path):
        if existing.exists():
            raise PkiError(f"{existing} already exists: a CA is already set up in {directory}. "
                           f"Use it, or choose another directory for a new CA.")

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        # path_length=0: the CA signs leaf certificates only, so a verifier needs depth 1.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    _write_private_key(key_path, key)
    _write_certificate(cert_path, certificate)
    log.info("created CA %r in %s, valid until %s", name, directory, certificate.not_valid_after_utc.date())
    return cert_path


def issue_server(ca_dir: str | os.PathLike, hostname: str, out_dir: str | os.PathLike,
                 days: int = DEFAULT_SERVER_DAYS, extra_sans=()) -> tuple[Path, Path]:
    """Issue a serverAuth certificate for ``hostname``; return ``(cert_path, key_path)``.

    The subjectAltName contains ``hostname`` (as an IP address when it is one) and every entry of
    ``extra_sans``. A certificate for ``localhost`` also covers ``127.0.0.1`` and ``::1``.
    """
    _check_days(days)
    names = [hostname, *extra_sans]
    if hostname == "localhost":
        names += ["127.0.0.1", "::1"]
    san = x509.SubjectAlternativeName(_unique(_general_name(name) for name in names))

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    certificate = _sign_leaf(ca_dir, subject, key.public_key(), days, ExtendedKeyUsageOID.SERVER_AUTH, san)
    cert_path, key_path = _write_leaf(Path(out_dir), _file_stem(hostname), key, certificate)
    log.info("issued server certificate for %s, valid until %s", hostname, certificate.not_valid_after_utc.date())
    return cert_path, key_path


def issue_lock(ca_dir: str | os.PathLike, lock_name: str, out_dir: str | os.PathLike,
               days: int = DEFAULT_LOCK_DAYS) -> tuple[Path, Path, str]:
    """Issue a clientAuth certificate with CN = ``lock_name``; return ``(cert, key, sha256_hex)``.

    The key pair is generated here and written to ``out_dir`` only.
    """
    _check_days(days)
    _check_lock_name(lock_name)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, lock_name)])
    certificate = _sign_leaf(ca_dir, subject, key.public_key(), days, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    cert_path, key_path = _write_leaf(Path(out_dir), lock_name, key, certificate)
    fingerprint = _der_sha256(certificate)
    log.info("issued lock certificate for %s, sha256 %s, valid until %s",
             lock_name, fingerprint, certificate.not_valid_after_utc.date())
    return cert_path, key_path, fingerprint


def create_lock_request(lock_name: str, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Generate a lock's key pair and a certificate signing request; return ``(csr, key)``.

    Run on the lock itself: the private key stays there, and only the CSR (public) goes to
    the holder of the CA key, for :func:`sign_lock_request`.
    """
    _check_lock_name(lock_name)
    out_dir = Path(out_dir)
    csr_path, key_path = out_dir / f"{lock_name}.csr", out_dir / f"{lock_name}.key"
    for existing in (csr_path, key_path):
        if existing.exists():
            raise PkiError(f"{existing} already exists: remove it first if you really want a new key")

    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, lock_name)]))
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_private_key(key_path, key)
    atomic_write(csr_path, request.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("created key and certificate signing request for lock %s in %s", lock_name, out_dir)
    return csr_path, key_path


def sign_lock_request(ca_dir: str | os.PathLike, lock_name: str, csr: str | os.PathLike,
                      out_dir: str | os.PathLike, days: int = DEFAULT_LOCK_DAYS) -> tuple[Path, str]:
    """Issue a lock certificate for the public key in a CSR; return ``(cert_path, sha256_hex)``.

    Only the CSR's key is used: the subject is always ``CN=<lock_name>`` and the usage
    clientAuth, whatever the request contains. The request's self-signature must verify and
    its key must be P-256.
    """
    _check_days(days)
    _check_lock_name(lock_name)
    csr_path = Path(csr)
    try:
        request = x509.load_pem_x509_csr(csr_path.read_bytes())
    except OSError as error:
        raise PkiError(f"cannot read certificate signing request {csr_path}: {error.strerror}") from None
    except ValueError as error:
        raise PkiError(f"{csr_path} is not a PEM certificate signing request: {error}") from None
    if not request.is_signature_valid:
        raise PkiError(f"{csr_path}: the request's signature is invalid; create the request again")
    public_key = request.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise PkiError(f"{csr_path}: the request's key is not ECDSA P-256; create it with "
                       f"'doorlock pki request {lock_name}'")

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, lock_name)])
    certificate = _sign_leaf(ca_dir, subject, public_key, days, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    out_dir = Path(out_dir)
    cert_path = out_dir / f"{lock_name}.crt"
    if cert_path.exists():
        raise PkiError(f"{cert_path} already exists: renew it with 'doorlock pki renew {cert_path}' or remove it first")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_certificate(cert_path, certificate)
    fingerprint = _der_sha256(certificate)
    log.info("issued lock certificate for %s from %s, sha256 %s", lock_name, csr_path, fingerprint)
    return cert_path, fingerprint


def renew(ca_dir: str | os.PathLike, cert_path: str | os.PathLike, days: int | None = None) -> tuple[Path, str]:
    """Re-issue the certificate at ``cert_path`` for the same key, subject and names.

    The new certificate replaces the file atomically and the previous one is kept next to it
    as ``<name>.crt.previous``. ``days`` defaults to the lifetime of the old certificate.
    Returns ``(cert_path, sha256_hex)`` of the new certificate. The fingerprint changes with
    every renewal, so the lock's ``certificate.sha256`` in the access repository must be
    updated too.
    """
    cert_path = Path(cert_path)
    old = load_certificate(cert_path)
    ca_cert, _ = _load_ca(ca_dir)
    try:
        old.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{cert_path} was not issued by the CA in {_ca_directory(ca_dir)} "
                       f"(issuer {old.issuer.rfc4514_string()}): renew it with the CA that issued it") from None
    if days is None:
        days = max(1, round((old.not_valid_after_utc - old.not_valid_before_utc - BACKDATE) / timedelta(days=1)))
    _check_days(days)

    try:
        eku = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise PkiError(f"{cert_path} has no extended key usage, so it is not a lock or server certificate "
                       f"from 'doorlock pki' (the CA certificate itself is not renewed: create a new CA "
                       f"before it expires and append its ca.crt to the CA files that nginx and the locks trust)") from None
    usage = ExtendedKeyUsageOID.SERVER_AUTH if ExtendedKeyUsageOID.SERVER_AUTH in eku else ExtendedKeyUsageOID.CLIENT_AUTH
    try:
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None

    certificate = _sign_leaf(ca_dir, old.subject, old.public_key(), days, usage, san)
    previous = cert_path.with_name(cert_path.name + ".previous")
    atomic_write(previous, cert_path.read_bytes(), 0o644)
    _write_certificate(cert_path, certificate)
    fingerprint = _der_sha256(certificate)
    log.info("renewed %s (%s), sha256 %s, valid until %s", cert_path,
             old.subject.rfc4514_string(), fingerprint, certificate.not_valid_after_utc.date())
    return cert_path, fingerprint


def load_certificate(source: bytes | str | os.PathLike) -> x509.Certificate:
    """Load a certificate from PEM or DER bytes, or from a file containing either."""
    if isinstance(source, (bytes, bytearray)):
        data, origin = bytes(source), "certificate data"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise PkiError(f"cannot read certificate {path}: {error.strerror}") from None
        origin = str(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise PkiError(f"{origin} is not a valid X.509 certificate: {error}") from None


def certificate_sha256(source: bytes | str | os.PathLike) -> str:
    """Return the SHA-256 fingerprint of a certificate's DER encoding: lowercase hex, no colons."""
    return _der_sha256(load_certificate(source))


def certificate_not_after(source: bytes | str | os.PathLike) -> datetime:
    """Return the end of a certificate's validity as an aware UTC datetime."""
    return load_certificate(source).not_valid_after_utc


def certificate_common_name(source: bytes | str | os.PathLike) -> str | None:
    """Return the subject CN of a certificate, or None when it has none."""
    attributes = load_certificate(source).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else None


# --- signing -----------------------------------------------------------------------------


def _sign_leaf(ca_dir, subject: x509.Name, public_key, days: int, usage,
               san: x509.SubjectAlternativeName | None) -> x509.Certificate:
    ca_cert, ca_key = _load_ca(ca_dir)
    now = _now()
    not_after = now + timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        raise PkiError(f"the certificate would outlive the CA (valid until "
                       f"{ca_cert.not_valid_after_utc.date()}): pass fewer days or set up a new CA")

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _ca_directory(ca_dir) -> Path:
    # Accept the CA directory or the path of its ca.crt (what init_ca returns).
    path = Path(ca_dir)
    return path.parent if path.is_file() else path


def _load_ca(ca_dir):
    directory = _ca_directory(ca_dir)
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    for required in (cert_path, key_path):
        if not required.is_file():
            raise PkiError(f"{required} not found: run 'doorlock pki init --ca {directory}' first, "
                           f"or pass the directory that contains the CA with --ca")
    ca_cert = load_certificate(cert_path)
    try:
        ca_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise PkiError(f"{key_path} is not an unencrypted PEM private key: {error}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC private key")
    return ca_cert, ca_key


# --- names -------------------------------------------------------------------------------


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _DNS_NAME.match(name):
        raise PkiError(f"invalid host name {name!r}: give a DNS name (bundles.example.org) "
                       f"or an IP address (127.0.0.1)")
    return x509.DNSName(name.lower())


def _unique(items) -> list:
    result = []
    for item in items:
        if item not in result:
            result.append(item)
    return result


def _file_stem(hostname: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", hostname)


# --- files -------------------------------------------------------------------------------


def _write_leaf(out_dir: Path, stem: str, key, certificate: x509.Certificate) -> tuple[Path, Path]:
    cert_path, key_path = out_dir / f"{stem}.crt", out_dir / f"{stem}.key"
    for existing in (cert_path, key_path):
        if existing.exists():
            raise PkiError(f"{existing} already exists: renew it with 'doorlock pki renew {cert_path}', "
                           f"or remove it first if you really want a new key")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_private_key(key_path, key)
    _write_certificate(cert_path, certificate)
    return cert_path, key_path


def _write_private_key(path: Path, key) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(path, pem, 0o600)


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    atomic_write(path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)



def _der_sha256(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _check_lock_name(lock_name: str) -> None:
    if not _LOCK_NAME.match(lock_name):
        raise PkiError(f"invalid lock name {lock_name!r}: use lowercase letters, digits, '.', '_' "
                       f"and '-' (at most 63 characters, starting with a letter or digit), "
                       f"as in the lock's 'name:' field")


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise PkiError(f"invalid validity of {days!r} days: give a whole number of days, at least 1")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)
