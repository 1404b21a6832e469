"""``doorlock pki``: the deployment's private CA and its lock and server certificates."""

from __future__ import annotations

from pathlib import Path

import click

from compiler import pki as pki_api

CA_OPTION = click.option(
    "--ca", "ca_dir", type=click.Path(file_okay=False, path_type=Path), default="pki",
    envvar="DOORLOCK_CA_DIR", show_default=True, show_envvar=True,
    help="Directory holding ca.crt and ca.key.")


def lock_yaml_lines(fingerprint: str, cert_path: Path) -> str:
    """Return the lines to paste into a lock's YAML entry for a certificate."""
    return (
        "certificate:\n"
        f'  sha256: "{fingerprint}"\n'
        f"  file: {cert_path.as_posix()}  # optional: lets 'doorlock validate' warn before it expires\n"
    )


@click.group(name="pki")
def pki_group() -> None:
    """Manage the deployment's private CA and its certificates (ECDSA P-256)."""


@pki_group.command(name="init")
@CA_OPTION
@click.option("--name", default="doorlock CA", show_default=True, help="Subject CN of the CA.")
@click.option("--days", type=click.IntRange(min=1), default=pki_api.DEFAULT_CA_DAYS, show_default=True,
              help="Validity of the CA certificate in days.")
def init_command(ca_dir: Path, name: str, days: int) -> None:
    """Create the deployment's CA. Keep ca.key offline or in the CI secret store."""
    cert_path = _run(pki_api.init_ca, ca_dir, name=name, days=days)
    click.echo(f"CA certificate: {cert_path}")
    click.echo(f"CA key:         {ca_dir / pki_api.CA_KEY_NAME} (mode 0600; never commit it)")
    click.echo("Give ca.crt to nginx (ssl_client_certificate) and to every lock (server trust).")


@pki_group.command(name="issue-server")
@click.argument("hostname")
@CA_OPTION
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="Directory for HOSTNAME.crt and HOSTNAME.key.")
@click.option("--san", "extra_sans", multiple=True, metavar="NAME",
              help="Another DNS name or IP address for the certificate (repeatable).")
@click.option("--days", type=click.IntRange(min=1), default=pki_api.DEFAULT_SERVER_DAYS, show_default=True,
              help="Validity in days.")
def issue_server_command(hostname: str, ca_dir: Path, out_dir: Path, extra_sans: tuple[str, ...], days: int) -> None:
    """Issue a TLS server certificate for the bundle host or the receiver."""
    cert_path, key_path = _run(pki_api.issue_server, ca_dir, hostname, out_dir, days=days, extra_sans=extra_sans)
    click.echo(f"certificate: {cert_path}")
    click.echo(f"key:         {key_path} (mode 0600)")


@pki_group.command(name="issue-lock")
@click.argument("lockname")
@CA_OPTION
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="Directory for LOCKNAME.crt (and LOCKNAME.key without --csr).")
@click.option("--csr", "csr_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Sign this request from 'doorlock pki request' instead of generating a key here.")
@click.option("--days", type=click.IntRange(min=1), default=pki_api.DEFAULT_LOCK_DAYS, show_default=True,
              help="Validity in days.")
def issue_lock_command(lockname: str, ca_dir: Path, out_dir: Path, csr_path: Path | None, days: int) -> None:
    """Issue a lock's client certificate (subject CN = LOCKNAME).

    Without --csr the key is generated here, written to --out only, and never sent anywhere:
    copy it to the lock and delete it here. With --csr the key never leaves the lock.
    """
    if csr_path is None:
        cert_path, key_path, fingerprint = _run(pki_api.issue_lock, ca_dir, lockname, out_dir, days=days)
    else:
        cert_path, fingerprint = _run(pki_api.sign_lock_request, ca_dir, lockname, csr_path, out_dir, days=days)
        key_path = None
    click.echo(f"certificate: {cert_path}")
    if key_path is not None:
        click.echo(f"key:         {key_path} (mode 0600; install it on the lock only)")
    click.echo(f"SHA-256:     {fingerprint}")
    click.echo(f"\nPaste into locks/{lockname}.yaml:\n")
    click.echo(lock_yaml_lines(fingerprint, cert_path))


@pki_group.command(name="request")
@click.argument("lockname")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="Directory for LOCKNAME.key and LOCKNAME.csr.")
def request_command(lockname: str, out_dir: Path) -> None:
    """On the lock: generate its key and a signing request for 'issue-lock --csr'."""
    csr_path, key_path = _run(pki_api.create_lock_request, lockname, out_dir)
    click.echo(f"key:     {key_path} (mode 0600; stays on this lock)")
    click.echo(f"request: {csr_path}")
    click.echo(f"Send the request to the CA holder: doorlock pki issue-lock {lockname} --csr {csr_path.name}")


@pki_group.command(name="renew")
@click.argument("certificates", nargs=-1, required=True,
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@CA_OPTION
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Validity in days [default: the lifetime of the old certificate].")
def renew_command(certificates: tuple[Path, ...], ca_dir: Path, days: int | None) -> None:
    """Re-issue certificates for the keys they already have (no key is needed or touched)."""
    for cert_path in certificates:
        new_path, fingerprint = _run(pki_api.renew, ca_dir, cert_path, days=days)
        not_after = pki_api.certificate_not_after(new_path)
        click.echo(f"{new_path}: renewed until {not_after:%Y-%m-%d}, SHA-256 {fingerprint} "
                   f"(previous kept as {new_path.name}.previous)")
        if _is_lock_certificate(new_path):
            click.echo("Update the lock's YAML entry and publish before installing the new certificate:\n")
            click.echo(lock_yaml_lines(fingerprint, new_path))


def _is_lock_certificate(cert_path: Path) -> bool:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certificate = pki_api.load_certificate(cert_path)
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


def _run(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except pki_api.PkiError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"{error.filename}: {error.strerror}") from None


# The command registry in compiler.cli looks the group up under this name.
pki = pki_group
