"""``doorlock compile``: one signed bundle per enabled lock, plus manifest and signers document."""

from __future__ import annotations

import gc
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from compiler import signing
from compiler.bundle_build import (
    DEFAULT_RESIGN_MARGIN,
    BuildError,
    check_commit_order,
    compile_repository,
    git_head,
    read_previous,
    write_build,
)
from lockclient.bundle import format_time


def parse_now(value: str | None) -> int:
    """Parse ``--now`` (ISO 8601 with a time zone) into Unix seconds; None means the current time."""
    if value is None:
        return int(time.time())
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time; use e.g. 2026-12-04T20:00:00Z",
                                 param_hint="--now") from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone; add Z for UTC, e.g. 2026-12-04T20:00:00Z",
                                 param_hint="--now")
    return int(parsed.timestamp())


def _load_access(access: Path, now: int):
    from compiler.loader import AccessInvalid, load_repository
    from compiler.problems import format_text

    try:
        return load_repository(access, now=datetime.fromtimestamp(now, timezone.utc))
    except AccessInvalid as error:
        errors = [problem for problem in error.problems if problem.is_error]
        click.echo(format_text(errors, prefix=str(access)), err=True)
        raise click.ClickException(
            f"{len(errors)} error(s) in {access}; run 'doorlock validate {access}' and fix them first"
        ) from None


@click.command("compile")
@click.argument("access", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Signing key file (NAME.key). Default: the PEM text in ${signing.SIGNING_KEY_ENV}.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Build directory to write (replaced as a whole when the build succeeds).")
@click.option("--signers", "signers_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Root-signed signers document. Default: ACCESS/signers.json.")
@click.option("--previous", "previous_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The published build: unchanged bundles are copied from it and versions continue from it.")
@click.option("--now", default=None, help="Issue time (ISO 8601 with time zone). Default: the current time.")
@click.option("--resign-margin", type=click.FloatRange(min=0), default=DEFAULT_RESIGN_MARGIN / 86400,
              show_default=True,
              help="Days: an unchanged bundle expiring sooner than this is signed again with a new version.")
@click.option("--allow-older-commit", is_flag=True,
              help="Publish even when the previous build's commit is not an ancestor of HEAD.")
def compile_command(access: Path, key_path: Path | None, out: Path, signers_path: Path | None,
                    previous_dir: Path | None, now: str | None, resign_margin: float,
                    allow_older_commit: bool) -> None:
    """Compile ACCESS into one signed bundle per enabled lock in --out."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # The command is one short run that builds millions of small objects without reference
    # cycles. Collecting them costs about a second per 10,000 people and frees nothing.
    gc.disable()
    issued_at = parse_now(now)
    signers_path = signers_path if signers_path is not None else access / "signers.json"

    try:
        signing_key = signing.load_private_key(key_path)
        try:
            signers_document = signers_path.read_bytes()
        except FileNotFoundError:
            raise BuildError(
                f"signers document {signers_path} not found; create it with 'doorlock signers sign' "
                "or pass --signers FILE (see docs/keys.md)"
            ) from None
        except OSError as error:
            raise BuildError(f"cannot read signers document {signers_path}: {error.strerror}") from None

        previous = read_previous(previous_dir) if previous_dir is not None else None
        source_commit = git_head(access)
        if previous is not None and not allow_older_commit:
            check_commit_order(access, previous.source_commit, source_commit)

        repository = _load_access(access, issued_at)
        build = compile_repository(
            repository, signing_key, signers_document, issued_at, previous=previous,
            source_commit=source_commit, resign_margin=int(resign_margin * 86400),
            signers_shown=str(signers_path),
        )
        write_build(build, out)
    except (signing.KeyFileError, BuildError) as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot write the build to {out}: {error}") from None

    for name, entry in sorted(build.bundles.items()):
        state = "changed" if entry.changed else "unchanged"
        click.echo(f"{name}: {_count(entry.keys, 'key')}, version {entry.version}, {state}, "
                   f"expires {format_time(entry.expires_at)}")
    changed = sum(entry.changed for entry in build.bundles.values())
    click.echo(f"{_count(len(build.bundles), 'bundle')} ({changed} changed) written to {out}")


def _count(count: int, word: str) -> str:
    """``1 key``, ``2 keys``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
