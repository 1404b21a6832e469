"""``doorlock keygen`` and ``doorlock signers``: key pairs and the root-signed signers document.

A root key (``keygen --root``) stays offline; locks pin its public key. It signs the signers
document, which lists the signing keys CI may use for bundles. See docs/keys.md.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import click

from compiler import signing
from lockclient.bundle import MAX_INTEGER, format_time
from lockclient.dsse import key_id
from lockclient.storage import atomic_write

DEFAULT_SIGNERS_DAYS = 365
MAX_SIGNERS_DAYS = 3650


@click.command("keygen")
@click.option("--out", "name", required=True, type=click.Path(dir_okay=False),
              help="Key name: writes NAME.key (private, mode 0600) and NAME.pub (public).")
@click.option("--root", is_flag=True,
              help="Generate a root key: it signs the signers document and is kept offline.")
def keygen(name: str, root: bool) -> None:
    """Generate an Ed25519 key pair and print its key id (the private key is never printed)."""
    try:
        paths = signing.generate_key_pair(name)
    except signing.KeyFileError as error:
        raise click.ClickException(str(error)) from None

    kind = "root key" if root else "signing key"
    click.echo(f"{kind} id {paths.key_id}")
    click.echo(f"private key: {paths.private} (mode 0600, keep it secret)")
    click.echo(f"public key:  {paths.public}")
    if root:
        click.echo("Pin the public key in every lock's configuration, then move the private key offline.")
    else:
        click.echo(f"Authorise it with: doorlock signers sign --root ROOT.key --signer {paths.public} ...")


@click.group("signers")
def signers() -> None:
    """Create, sign and inspect the signers document (the signing keys locks accept)."""



def _parse_now(value: str | None) -> int:
    if value is None:
        return int(time.time())
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time; use e.g. 2026-12-04T20:00:00Z") from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone; add Z for UTC, e.g. 2026-12-04T20:00:00Z")
    return int(parsed.timestamp())


def _choose_version(version: int | None, previous_file: Path | None) -> int:
    previous = None
    if previous_file is not None:
        try:
            data = previous_file.read_bytes()
        except OSError as error:
            raise click.ClickException(f"cannot read --previous-file {previous_file}: {error.strerror}") from None
        try:
            previous = signing.read_signers_document(data, str(previous_file)).version
        except signing.KeyFileError as error:
            raise click.ClickException(str(error)) from None

    if version is None:
        if previous is None:
            raise click.UsageError("give --version N, or --previous-file FILE to use the previous version + 1")
        version = previous + 1
    if version > MAX_INTEGER:
        raise click.BadParameter(f"version {version} is above 2**63-1, which locks reject", param_hint="--version")
    if previous is not None and version <= previous:
        raise click.ClickException(
            f"--version {version} is not higher than version {previous} in {previous_file}; "
            f"locks reject it as a rollback. Use --version {previous + 1} or higher"
        )
    if version < 1:
        raise click.BadParameter(f"version must be 1 or higher, got {version}", param_hint="--version")
    return version


@signers.command("sign")
@click.option("--root", "root_path", required=True, type=click.Path(dir_okay=False),
              help="Root private key file (ROOT.key).")
@click.option("--signer", "signer_paths", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Public key file (NAME.pub) of a signing key to authorise; repeat for several.")
@click.option("--version", type=int, default=None,
              help="Version of the document; must be higher than any published one. "
                   "Default: the version in --previous-file plus 1.")
@click.option("--previous-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The signers document currently published, to continue its version.")
@click.option("--expires-days", type=click.IntRange(min=1, max=MAX_SIGNERS_DAYS), default=DEFAULT_SIGNERS_DAYS,
              show_default=True,
              help="Days until the document expires; locks then accept no bundle until a new one arrives.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write, e.g. ACCESS/signers.json.")
@click.option("--now", default=None, help="Issue time (ISO 8601 with time zone); default: the current time.")
def sign(root_path: str, signer_paths: tuple[str, ...], version: int | None, previous_file: Path | None,
         expires_days: int, out_path: Path, now: str | None) -> None:
    """Sign a signers document listing the given signing keys with the root key."""
    issued_at = _parse_now(now)
    chosen_version = _choose_version(version, previous_file)
    try:
        root_key = signing.load_private_key(root_path)
        listed = [(signing.load_public_key_file(path), Path(path).stem) for path in signer_paths]
    except signing.KeyFileError as error:
        raise click.ClickException(str(error)) from None

    root_id = key_id(root_key.public_key())
    if any(key_id(public_key) == root_id for public_key, _ in listed):
        raise click.ClickException("the root key must not sign bundles itself; list separate signing keys")

    expires_at = issued_at + expires_days * 86400
    try:
        format_time(expires_at)
    except (ValueError, OverflowError):
        raise click.BadParameter(f"the document would expire after the year 9999; check --now {now}",
                                 param_hint="--now") from None
    document = signing.build_signers_document(root_key, listed, chosen_version, issued_at, expires_at)
    try:
        atomic_write(out_path, document)
    except OSError as error:
        raise click.ClickException(f"cannot write {out_path}: {error.strerror}") from None

    click.echo(f"signers document version {chosen_version}, expires {format_time(expires_at)}, root key {root_id}")
    for public_key, description in listed:
        click.echo(f"  signer {key_id(public_key)} ({description})")
    click.echo(f"written to {out_path}")


@signers.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def show(path: Path) -> None:
    """Print a signers document's version, expiry and signing keys."""
    try:
        summary = signing.read_signers_document(path.read_bytes(), str(path))
    except signing.KeyFileError as error:
        raise click.ClickException(str(error)) from None

    click.echo(f"version {summary.version}")
    click.echo(f"issued  {format_time(summary.issued_at)}")
    click.echo(f"expires {format_time(summary.expires_at)}")
    click.echo(f"root key {', '.join(summary.root_key_ids)} (signature not checked here; locks check it)")
    for keyid in summary.key_ids:
        click.echo(f"  signer {keyid} ({summary.descriptions[keyid]})")
