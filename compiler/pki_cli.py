"""``doorlock pki``: the deployment's private CA and its lock and server certificates."""

from __future__ import annotations

from pathlib import Path

import click

from compiler import pki as pki_api

CA_OPTION = click.option(
    "--ca", "ca_dir", type=click.Path(file_okay=False, path_type=Path), default="pki",
    envvar="DOORLOCK_CA_DIR", show_default=True, show_envvar=True,
    help="Directory holding ca.crt and ca.key.")


ACCESS_OPTION = click.option(
    "--access", "access_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
    help="The access repository, for the 'file:' line [default: the one around the certificate or the "
         "current directory, recognised by its locks/ folder].")


def find_access_repository(path: Path) -> Path | None:
    """Return the nearest directory at or above ``path`` with a ``locks/`` folder, or None."""
    path = path.expanduser().resolve()
    for directory in (path, *path.parents):
        if (directory / "locks").is_dir():
            return directory
    return None


def certificate_file_entry(cert_path: Path, repository: Path | None) -> tuple[str, str | None]:
    """Return the lock YAML's ``file:`` value and, when the file is not in the repository, what to copy.

    ``file:`` is relative to the repository root, which is where 'doorlock validate' reads it.
    """
    resolved = cert_path.expanduser().resolve()
    if repository is not None and resolved.is_relative_to(repository.resolve()):
        return resolved.relative_to(repository.resolve()).as_posix(), None
    suggested = f"certs/{cert_path.name}"
    target = repository / suggested if repository is not None else f"{suggested} in the access repository"
    return suggested, f"Copy {cert_path} to {target} (the certificate only, never the key)."


def lock_yaml_lines(fingerprint: str, file_entry: str) -> str:
    """Return the lines to paste into a lock's YAML entry for a certificate."""
    return (
        "certificate:\n"
        f'  sha256: "{fingerprint}"\n'
        f"  file: {file_entry}  # optional: lets 'doorlock validate' warn before it expires\n"
    )


def echo_lock_yaml(lockname: str, fingerprint: str, cert_path: Path, access_dir: Path | None) -> None:
    """Print where to paste the certificate lines, the lines, and what to copy into the repository."""
    repository = access_dir or find_access_repository(cert_path.parent) or find_access_repository(Path.cwd())
    file_entry, copy_note = certificate_file_entry(cert_path, repository)
    where = repository / "locks" if repository is not None else Path("locks")
    click.echo(f"\nPaste into {where / f'{lockname}.yaml'}, replacing any 'certificate:' block:\n")
    click.echo(lock_yaml_lines(fingerprint, file_entry))
    if copy_note is not None:
        click.echo(copy_note)


def reject_key_in_repository(out_dir: Path, access_dir: Path | None) -> None:
    """Raise a usage error when ``out_dir`` is inside an access repository, so no lock key reaches git."""
    resolved = out_dir.expanduser().resolve()
    repository = find_access_repository(resolved)
    if access_dir is not None and resolved.is_relative_to(access_dir.resolve()):
        repository = access_dir.resolve()
    if repository is not None:
        raise click.ClickException(
            f"--out {out_dir} is inside the access repository {repository}: the lock's private key must "
            f"never be written there, because it would end up in git. Pass a directory outside it "
            f"(e.g. --out ~/doorlock-locks), or create the key on the lock with 'doorlock pki request "
            f"LOCKNAME' and sign the request here with --csr.")


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
              show_default=True, help="Directory for LOCKNAME.crt (and LOCKNAME.key without --csr); "
                                      "outside the access repository when it receives a key.")
@ACCESS_OPTION
@click.option("--csr", "csr_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Sign this request from 'doorlock pki request' instead of generating a key here.")
@click.option("--days", type=click.IntRange(min=1), default=pki_api.DEFAULT_LOCK_DAYS, show_default=True,
              help="Validity in days.")
def issue_lock_command(lockname: str, ca_dir: Path, out_dir: Path, access_dir: Path | None,
                       csr_path: Path | None, days: int) -> None:
    """Issue a lock's client certificate (subject CN = LOCKNAME).

    Without --csr the key is generated here, written to --out only (never into the access
    repository), and never sent anywhere: copy it to the lock and delete it here. With --csr
    the key never leaves the lock. Prints the lines for the lock's YAML entry.
    """
    if csr_path is None:
        reject_key_in_repository(out_dir, access_dir)
        cert_path, key_path, fingerprint = _run(pki_api.issue_lock, ca_dir, lockname, out_dir, days=days)
    else:
        cert_path, fingerprint = _run(pki_api.sign_lock_request, ca_dir, lockname, csr_path, out_dir, days=days)
        key_path = None
    click.echo(f"certificate: {cert_path}")
    if key_path is not None:
        click.echo(f"key:         {key_path} (mode 0600; install it on the lock only)")
    click.echo(f"SHA-256:     {fingerprint}")
    echo_lock_yaml(lockname, fingerprint, cert_path, access_dir)


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
@ACCESS_OPTION
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Validity in days [default: the lifetime of the old certificate].")
def renew_command(certificates: tuple[Path, ...], ca_dir: Path, access_dir: Path | None, days: int | None) -> None:
    """Re-issue certificates for the keys they already have (no key is needed or touched)."""
    for cert_path in certificates:
        new_path, fingerprint = _run(pki_api.renew, ca_dir, cert_path, days=days)
        not_after = pki_api.certificate_not_after(new_path)
        click.echo(f"{new_path}: renewed until {not_after:%Y-%m-%d}, SHA-256 {fingerprint} "
                   f"(previous kept as {new_path.name}.previous)")
        if _is_lock_certificate(new_path):
            lockname = pki_api.certificate_common_name(new_path) or new_path.stem
            click.echo("Update the lock's YAML entry and publish, then install the new certificate on the "
                       "lock (docs/hosting.md, 'Renewing a lock certificate without downtime').")
            echo_lock_yaml(lockname, fingerprint, new_path, access_dir)


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
