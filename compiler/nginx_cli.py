"""``doorlock nginx-config``: write the nginx server block that serves bundles over mutual TLS."""

from __future__ import annotations

from pathlib import Path

import click

from compiler.nginx import NginxConfigError, NginxSettings, render_server_block
from lockclient.storage import atomic_write


def _absolute(path: Path | None) -> Path | None:
    # nginx resolves relative paths against its prefix, not the directory the admin was in.
    return None if path is None else path.expanduser().resolve()


@click.command(name="nginx-config")
@click.argument("access", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--publish-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory 'doorlock publish --to' writes; nginx serves its 'current' release.")
@click.option("--certificate", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Server certificate (PEM), e.g. from 'doorlock pki issue-server'.")
@click.option("--certificate-key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Private key of the server certificate.")
@click.option("--client-ca", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The deployment CA (ca.crt) that issued the lock certificates.")
@click.option("--server-name", default="_", show_default=True, help="nginx server_name.")
@click.option("--listen", "listen", multiple=True, default=("443",), show_default=True,
              help="nginx listen address: PORT, ADDRESS:PORT or [IPv6]:PORT (repeatable).")
@click.option("--receiver", default=None,
              help="Upstream of the statistics receiver in proxy mode: http://127.0.0.1:PORT or "
                   "http://unix:/path/receiver.sock. Without it /v1/ is 403.")
@click.option("--crl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Certificate revocation list (PEM) for revoked lock certificates.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (include it in nginx's http block) [default: standard output].")
def nginx_config(access: Path, publish_dir: Path, certificate: Path, certificate_key: Path, client_ca: Path,
                 server_name: str, listen: tuple[str, ...], receiver: str | None, crl: Path | None,
                 out: Path | None) -> None:
    """Write the nginx map and server block for ACCESS (an access repository).

    Each enabled lock's certificate (CN = lock name, issued by CLIENT_CA) can read only
    /bundles/<lock>.json and /signers.json. The output goes into nginx's http context.
    """
    from compiler.loader import AccessInvalid, load_repository
    from compiler.problems import format_text, sort_problems

    try:
        repository = load_repository(access)
    except AccessInvalid as error:
        problems = format_text(sort_problems(error.problems), prefix=str(access))
        raise click.ClickException(f"{access} has errors; fix them first:\n{problems}") from None

    locks = [lock.name for lock in repository.locks.values() if lock.enabled]
    settings = NginxSettings(
        publish_dir=_absolute(publish_dir), certificate=_absolute(certificate),
        certificate_key=_absolute(certificate_key), client_ca=_absolute(client_ca),
        server_name=server_name, listen=listen, receiver=receiver, crl=_absolute(crl),
        extra_comment=(f"Access repository: {access.resolve()}; enabled locks: {len(locks)}.",),
    )
    try:
        text = render_server_block(locks, settings)
    except NginxConfigError as error:
        raise click.ClickException(str(error)) from None

    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text.encode())
    click.echo(f"wrote {out} for {len(locks)} lock(s); check it with 'nginx -t', then 'nginx -s reload'",
               err=True)
