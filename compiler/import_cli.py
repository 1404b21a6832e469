"""``doorlock import``: bring data over from other access-control systems.

``doorlock import doorlockd DUMP.json --out DIR`` reads a doorlockd export, writes a complete
access repository to DIR and prints a migration report. The repository is written to a
temporary directory next to DIR and renamed into place only when everything succeeded, so an
error leaves DIR as it was.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from compiler.doorlockd_convert import DEFAULT_TIMEZONE, ConvertedRepository, convert_dump
from compiler.doorlockd_dump import DumpInvalid, load_dump
from compiler.doorlockd_report import format_report

__all__ = ["import_group", "check_target", "write_repository", "ImportTargetError"]


class ImportTargetError(Exception):
    """The output directory cannot be used; the message names the reason and the fix."""


@click.group(name="import")
def import_group() -> None:
    """Import data from another access-control system."""


@import_group.command(name="doorlockd")
@click.argument("dump_path", metavar="DUMP.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, metavar="DIR", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the access repository to; must not exist or be empty "
                   "(see --force).")
@click.option("--timezone", "timezone_name", default=DEFAULT_TIMEZONE, show_default=True,
              help="IANA time zone of the locks; doorlockd rule times are read in this zone.")
@click.option("--keep-doorlockd-behaviour", is_flag=True,
              help="Leave out overnight windows (start after end), which doorlockd never matched, "
                   "instead of importing them as written.")
@click.option("--stats-db", type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite database of the statistics receiver to load unknown keys and keys "
                   "last seen into.")
@click.option("--now", "now_text", metavar="ISO",
              help="Treat this UTC time (e.g. 2026-12-04T20:00:00Z) as now when deciding which "
                   "rules have expired. Default: the current time.")
@click.option("--force", is_flag=True, help="Replace DIR if it already contains files.")
def doorlockd(dump_path: Path, out_dir: Path, timezone_name: str, keep_doorlockd_behaviour: bool,
              stats_db: Path | None, now_text: str | None, force: bool) -> None:
    """Convert the doorlockd export DUMP.json (`manage.py dumpdata doorlockdb`) to an access repository."""
    try:
        ZoneInfo(timezone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"{timezone_name!r} is not an IANA time zone name such as Europe/Amsterdam",
                                 param_hint="--timezone") from None
    now = _parse_now(now_text)

    try:
        dump = load_dump(dump_path)
    except DumpInvalid as error:
        click.echo(f"error: {error}", err=True)
        click.echo("nothing was written", err=True)
        sys.exit(1)

    converted = convert_dump(dump, timezone_name, keep_doorlockd_behaviour, now)
    if stats_db is None:
        _report_statistics_left_out(dump, converted)
    stats_lines: list[str] = []
    try:
        check_target(out_dir, force)
        # Statistics go first: a database error then leaves no repository behind, and the
        # repository write after it only renames a finished directory into place.
        stats_lines = _import_statistics(dump, converted, stats_db) if stats_db is not None else []
        write_repository(converted, out_dir, force=force)
    except ImportTargetError as error:
        click.echo(f"error: {error}", err=True)
        click.echo("nothing was written", err=True)
        sys.exit(1)
    except OSError as error:
        click.echo(f"error: cannot write {out_dir}: {error.strerror or error}", err=True)
        click.echo(f"{out_dir} was left as it was", err=True)
        if stats_lines:
            click.echo(f"the statistics were loaded into {stats_db} already; importing the same dump "
                       "again does not load them twice", err=True)
        sys.exit(1)

    click.echo(format_report(converted.report, dump_path, out_dir, timezone_name, stats_lines))


def _import_statistics(dump, converted: ConvertedRepository, stats_db: Path) -> list[str]:
    from compiler.doorlockd_stats import StatisticsImportError, import_statistics

    try:
        return import_statistics(dump, converted, stats_db)
    except StatisticsImportError as error:
        raise ImportTargetError(f"statistics not loaded: {error}") from None


def _report_statistics_left_out(dump, converted: ConvertedRepository) -> None:
    from compiler.doorlockd_report import SKIPPED

    for model, rows in (("doorlockdb.logunknownkey", dump.unknown_keys), ("doorlockdb.logkeylastseen", dump.last_seen)):
        if rows:
            converted.report.add(SKIPPED, "statistics-not-loaded", model,
                                 f"{len(rows)} row(s) not loaded: pass --stats-db FILE to load them into "
                                 "the statistics receiver's database")


def _parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(timezone.utc)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time such as 2026-12-04T20:00:00Z",
                                 param_hint="--now") from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone; end it with Z for UTC", param_hint="--now")
    return parsed


def check_target(out_dir: Path, force: bool = False) -> None:
    """Raise :class:`ImportTargetError` unless the repository can be written to ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ImportTargetError(f"{out_dir} exists and is not a directory; choose another --out")
    replace = out_dir.is_dir() and any(out_dir.iterdir())
    if replace and not force:
        raise ImportTargetError(
            f"{out_dir} already contains files; choose an empty or new directory, or pass --force to replace it"
        )
    parent = out_dir.absolute().parent
    if not parent.is_dir():
        raise ImportTargetError(f"the parent directory {parent} does not exist; create it first")


def write_repository(converted: ConvertedRepository, out_dir: Path, force: bool = False) -> None:
    """Write all files to ``out_dir`` atomically: a temporary sibling directory, then a rename."""
    out_dir = Path(out_dir)
    check_target(out_dir, force)
    parent = out_dir.absolute().parent
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.import-", dir=parent))
    try:
        for relative, data in converted.files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(staging, 0o755)
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    # The old directory moves aside first, so that at every moment out_dir is either the old
    # repository or the complete new one.
    previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.previous-", dir=staging.parent))
    os.rmdir(previous)
    os.rename(out_dir, previous)
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(previous, out_dir)
        raise
    shutil.rmtree(previous, ignore_errors=True)
