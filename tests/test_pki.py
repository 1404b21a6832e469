"""The deployment CA: what the certificates contain, file modes, renewal and the CLI output."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
import stat
import threading
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from compiler import pki
from compiler.cli import main


@pytest.fixture
def ca(tmp_path):
    return pki.init_ca(tmp_path / "ca")


def _load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_key_is_private(ca):
    assert ca.name == "ca.crt"
    assert _mode(ca.parent / "ca.key") == 0o600


def test_ca_is_p256_and_signs_leaves_only(ca):
    certificate = _load(ca)
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value

    assert isinstance(certificate.public_key().curve, ec.SECP256R1)
    assert constraints.ca is True
    assert constraints.path_length == 0


def test_ca_init_refuses_to_replace(ca):
    with pytest.raises(pki.PkiError, match="already"):
        pki.init_ca(ca.parent)


def test_lock_certificate_contents(ca, tmp_path):
    cert_path, key_path, fingerprint = pki.issue_lock(ca.parent, "front-door", tmp_path / "locks")
    certificate = _load(cert_path)
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "front-door"
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(certificate.public_key().curve, ec.SECP256R1)
    assert certificate.issuer == _load(ca).subject
    assert _mode(key_path) == 0o600


def test_lock_certificate_valid_one_year(ca, tmp_path):
    cert_path, _, _ = pki.issue_lock(ca, "front-door", tmp_path)
    certificate = _load(cert_path)
    lifetime = certificate.not_valid_after_utc - datetime.now(timezone.utc)

    assert timedelta(days=364) < lifetime <= timedelta(days=365)


def test_lock_fingerprint_is_sha256_of_der(ca, tmp_path):
    cert_path, _, fingerprint = pki.issue_lock(ca, "front-door", tmp_path)
    der = _load(cert_path).public_bytes(serialization.Encoding.DER)

    assert fingerprint == hashlib.sha256(der).hexdigest()
    assert pki.certificate_sha256(cert_path) == fingerprint
    assert pki.certificate_sha256(cert_path.read_bytes()) == fingerprint
    assert pki.certificate_sha256(der) == fingerprint


@pytest.mark.parametrize("name", ["Front Door", "../etc", "", "front/door", "a" * 64])
def test_lock_name_rejected(ca, tmp_path, name):
    with pytest.raises(pki.PkiError, match="invalid lock name"):
        pki.issue_lock(ca, name, tmp_path)


def test_issue_refuses_to_overwrite_key(ca, tmp_path):
    pki.issue_lock(ca, "front-door", tmp_path)
    key_before = (tmp_path / "front-door.key").read_bytes()

    with pytest.raises(pki.PkiError, match="already exists"):
        pki.issue_lock(ca, "front-door", tmp_path)
    assert (tmp_path / "front-door.key").read_bytes() == key_before


def test_server_certificate_localhost_sans(ca, tmp_path):
    cert_path, key_path = pki.issue_server(ca, "localhost", tmp_path)
    certificate = _load(cert_path)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _mode(key_path) == 0o600


def test_server_certificate_extra_sans(ca, tmp_path):
    cert_path, _ = pki.issue_server(ca, "bundles.example.org", tmp_path, extra_sans=("stats.example.org", "10.0.0.5"))
    names = _load(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert names.get_values_for_type(x509.DNSName) == ["bundles.example.org", "stats.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]


def test_server_name_rejected(ca, tmp_path):
    with pytest.raises(pki.PkiError, match="invalid host name"):
        pki.issue_server(ca, "bad host;name", tmp_path)


def test_leaf_cannot_outlive_ca(tmp_path):
    ca = pki.init_ca(tmp_path / "ca", days=30)

    with pytest.raises(pki.PkiError, match="outlive the CA"):
        pki.issue_lock(ca, "front-door", tmp_path)


def test_renew_keeps_key_and_subject(ca, tmp_path):
    cert_path, key_path, old_fingerprint = pki.issue_lock(ca, "front-door", tmp_path)
    old = _load(cert_path)
    key_before = key_path.read_bytes()

    new_path, new_fingerprint = pki.renew(ca, cert_path, days=400)
    new = _load(new_path)

    assert new_fingerprint != old_fingerprint
    assert new.subject == old.subject
    assert new.public_key().public_numbers() == old.public_key().public_numbers()
    assert new.not_valid_after_utc > old.not_valid_after_utc
    assert key_path.read_bytes() == key_before
    assert pki.certificate_sha256(cert_path.with_name("front-door.crt.previous")) == old_fingerprint


def test_renew_keeps_server_names(ca, tmp_path):
    cert_path, _ = pki.issue_server(ca, "localhost", tmp_path)
    old_names = _load(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    pki.renew(ca, cert_path)
    new = _load(cert_path)

    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == old_names
    assert list(new.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]


def test_renew_rejects_foreign_certificate(ca, tmp_path):
    other_ca = pki.init_ca(tmp_path / "other")
    cert_path, _, _ = pki.issue_lock(other_ca, "front-door", tmp_path / "certs")

    with pytest.raises(pki.PkiError, match="not issued by the CA"):
        pki.renew(ca, cert_path)


def test_mutual_tls_handshake(ca, tmp_path):
    """A real TLS 1.3 handshake: server and lock certificates from the CA verify both ways."""
    server_cert, server_key = pki.issue_server(ca, "localhost", tmp_path / "server")
    lock_cert, lock_key, _ = pki.issue_lock(ca, "front-door", tmp_path / "lock")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server_cert, server_key)
    server_context.load_verify_locations(ca)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_context = ssl.create_default_context(cafile=str(ca))
    client_context.load_cert_chain(lock_cert, lock_key)

    listener = socket.create_server(("127.0.0.1", 0))
    peer_subjects = []

    def serve():
        connection, _ = listener.accept()
        with server_context.wrap_socket(connection, server_side=True) as tls:
            peer_subjects.append(tls.getpeercert()["subject"])
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(listener.getsockname()) as raw:
        with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"x")
    thread.join(5)
    listener.close()

    assert peer_subjects == [((("commonName", "front-door"),),)]


def test_cli_issue_lock_prints_yaml(tmp_path):
    runner = CliRunner()
    init = runner.invoke(main, ["pki", "init", "--ca", str(tmp_path / "ca")])
    issued = runner.invoke(main, ["pki", "issue-lock", "front-door", "--ca", str(tmp_path / "ca"),
                                  "--out", str(tmp_path / "certs")])
    fingerprint = pki.certificate_sha256(tmp_path / "certs" / "front-door.crt")

    assert init.exit_code == 0, init.output
    assert issued.exit_code == 0, issued.output
    assert f"SHA-256:     {fingerprint}" in issued.output
    assert f'certificate:\n  sha256: "{fingerprint}"\n' in issued.output


def test_cli_error_without_ca(tmp_path):
    result = CliRunner().invoke(main, ["pki", "issue-lock", "front-door", "--ca", str(tmp_path / "none"),
                                       "--out", str(tmp_path)])

    assert result.exit_code == 1
    assert "ca.crt not found" in result.output
    assert "Traceback" not in result.output


def test_cli_renew_prints_new_fingerprint(tmp_path):
    runner = CliRunner()
    runner.invoke(main, ["pki", "init", "--ca", str(tmp_path / "ca")])
    runner.invoke(main, ["pki", "issue-lock", "front-door", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path)])

    renewed = runner.invoke(main, ["pki", "renew", str(tmp_path / "front-door.crt"), "--ca", str(tmp_path / "ca")])

    assert renewed.exit_code == 0, renewed.output
    assert pki.certificate_sha256(tmp_path / "front-door.crt") in renewed.output


def test_csr_flow_key_stays_on_lock(ca, tmp_path):
    csr_path, key_path = pki.create_lock_request("front-door", tmp_path / "lock")
    cert_path, fingerprint = pki.sign_lock_request(ca, "front-door", csr_path, tmp_path / "ca-side")
    certificate = _load(cert_path)
    private_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)

    assert not (tmp_path / "ca-side" / "front-door.key").exists()
    assert certificate.public_key().public_numbers() == private_key.public_key().public_numbers()
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "front-door"
    assert pki.certificate_sha256(cert_path) == fingerprint
    assert _mode(key_path) == 0o600


def test_csr_subject_replaced_by_lock_name(ca, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "back-door")]))
               .sign(key, hashes.SHA256()))
    csr_path = tmp_path / "request.csr"
    csr_path.write_bytes(request.public_bytes(serialization.Encoding.PEM))

    cert_path, _ = pki.sign_lock_request(ca, "front-door", csr_path, tmp_path)

    assert _load(cert_path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "front-door"


def test_csr_with_other_curve_rejected(ca, tmp_path):
    key = ec.generate_private_key(ec.SECP384R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-door")]))
               .sign(key, hashes.SHA256()))
    csr_path = tmp_path / "request.csr"
    csr_path.write_bytes(request.public_bytes(serialization.Encoding.PEM))

    with pytest.raises(pki.PkiError, match="not ECDSA P-256"):
        pki.sign_lock_request(ca, "front-door", csr_path, tmp_path)


def test_cli_request_and_issue_with_csr(tmp_path):
    runner = CliRunner()
    runner.invoke(main, ["pki", "init", "--ca", str(tmp_path / "ca")])
    requested = runner.invoke(main, ["pki", "request", "front-door", "--out", str(tmp_path / "lock")])
    issued = runner.invoke(main, ["pki", "issue-lock", "front-door", "--ca", str(tmp_path / "ca"),
                                  "--csr", str(tmp_path / "lock" / "front-door.csr"), "--out", str(tmp_path / "lock")])

    assert requested.exit_code == 0, requested.output
    assert issued.exit_code == 0, issued.output
    assert "key:" not in issued.output
    assert pki.certificate_sha256(tmp_path / "lock" / "front-door.crt") in issued.output


def test_renew_ca_certificate_rejected(ca):
    with pytest.raises(pki.PkiError, match="no extended key usage"):
        pki.renew(ca, ca)


def _pasted_block(output: str) -> str:
    """The 'certificate:' lines issue-lock and renew print for the lock's YAML."""
    start = output.index("certificate:\n  sha256:")
    return output[start:output.index("\n\n", start) + 1]


def _paste(lock_file, block: str) -> None:
    """Replace the lock's 'certificate:' block with ``block``, as an admin does in an editor."""
    lines = lock_file.read_text().splitlines(keepends=True)
    start = next(index for index, line in enumerate(lines) if line.startswith("certificate:"))
    end = start + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    lock_file.write_text("".join(lines[:start]) + block + "".join(lines[end:]))


def _example_access(tmp_path):
    import shutil

    from compiler.demo import EXAMPLE_ACCESS

    access = tmp_path / "access"
    shutil.copytree(EXAMPLE_ACCESS, access)
    return access


def test_cli_issue_lock_refuses_key_in_access_repository(tmp_path):
    access = _example_access(tmp_path)
    runner = CliRunner()
    runner.invoke(main, ["pki", "init", "--ca", str(tmp_path / "ca")])

    result = runner.invoke(main, ["pki", "issue-lock", "front-door", "--ca", str(tmp_path / "ca"),
                                  "--out", str(access / "certs")])

    assert result.exit_code == 1
    assert "inside the access repository" in result.output
    assert "Traceback" not in result.output
    assert not (access / "certs").exists()


def test_cli_issue_lock_yaml_pastes_into_valid_lock(tmp_path):
    """The printed lines, pasted as printed and with the copy done as told, validate cleanly."""
    access = _example_access(tmp_path)
    runner = CliRunner()
    runner.invoke(main, ["pki", "init", "--ca", str(tmp_path / "ca")])

    issued = runner.invoke(main, ["pki", "issue-lock", "front-door", "--ca", str(tmp_path / "ca"),
                                  "--out", str(tmp_path / "keys"), "--access", str(access), "--days", "20"])
    assert issued.exit_code == 0, issued.output
    assert f"Copy {tmp_path / 'keys' / 'front-door.crt'} to {access / 'certs' / 'front-door.crt'}" in issued.output
    (access / "certs").mkdir()
    (access / "certs" / "front-door.crt").write_bytes((tmp_path / "keys" / "front-door.crt").read_bytes())
    _paste(access / "locks" / "front-door.yaml", _pasted_block(issued.output))
    validated = runner.invoke(main, ["validate", str(access)])

    assert "  file: certs/front-door.crt  #" in issued.output
    assert validated.exit_code == 0, validated.output
    assert "0 errors" in validated.output
    assert "certificate 'certs/front-door.crt' of lock 'front-door' expires on" in validated.output
    assert "doorlock pki renew certs/front-door.crt" in validated.output


def test_cli_renew_in_repository_yaml_validates(tmp_path):
    """Renewing a certificate kept in the repository prints lines that make validate pass again."""
    access = _example_access(tmp_path)
    runner = CliRunner()
    runner.invoke(main, ["pki", "init", "--ca", str(tmp_path / "ca")])
    runner.invoke(main, ["pki", "request", "front-door", "--out", str(tmp_path / "lock")])
    issued = runner.invoke(main, ["pki", "issue-lock", "front-door", "--ca", str(tmp_path / "ca"),
                                  "--csr", str(tmp_path / "lock" / "front-door.csr"), "--out", str(access / "certs")])
    assert issued.exit_code == 0, issued.output
    assert "Copy " not in issued.output
    _paste(access / "locks" / "front-door.yaml", _pasted_block(issued.output))

    renewed = runner.invoke(main, ["pki", "renew", str(access / "certs" / "front-door.crt"), "--ca", str(tmp_path / "ca")])
    stale = runner.invoke(main, ["validate", str(access)])
    _paste(access / "locks" / "front-door.yaml", _pasted_block(renewed.output))
    fixed = runner.invoke(main, ["validate", str(access)])

    assert renewed.exit_code == 0, renewed.output
    assert stale.exit_code == 1
    assert "does not match 'certs/front-door.crt'" in stale.output
    assert fixed.exit_code == 0, fixed.output
    assert "0 errors, 0 warnings" in fixed.output
