"""``doorlock stats``: read-only questions about what the locks pushed to the receiver."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import click

from receiver import queries
from receiver.config import ConfigError, load_config
from receiver.identity import ManifestError


def _source_options(function):
    function = click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
                            show_default=True, help="Output as an aligned table or as a JSON array.")(function)
    function = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                            help="Receiver configuration; its [data] database (and manifest) are used.")(function)
    function = click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
                            help="Receiver database file (SQLite).")(function)
    return function


@click.group(name="stats")
def stats() -> None:
    """Query the statistics the locks pushed (read-only)."""


@stats.command(name="unknown-keys")
@_source_options
@click.option("--lock", "lock_name", metavar="NAME", help="Only this lock.")
def unknown_keys_command(db_path: Path | None, config_path: Path | None, output_format: str,
                         lock_name: str | None) -> None:
    """Cards that were tapped but are not in the lock's bundle."""
    database, _ = _paths(db_path, config_path)
    rows = _query(queries.unknown_keys, database)
    if lock_name:
        rows = [row for row in rows if row["lock"] == lock_name]
    _emit(rows, output_format, ["lock", "hwid", "count", "first_seen", "last_seen", "tag_type", "atqa", "sak"])


@stats.command(name="last-seen")
@_source_options
@click.option("--access", "access_path", type=click.Path(file_okay=False, path_type=Path),
              help="Access repository, to show the person and key description for each hardware id.")
@click.option("--person", "username", metavar="USER",
              help="Only this person's keys (needs --access); keys never seen are listed too.")
@click.option("--lock", "lock_name", metavar="NAME", help="Only this lock.")
def last_seen_command(db_path: Path | None, config_path: Path | None, output_format: str,
                      access_path: Path | None, username: str | None, lock_name: str | None) -> None:
    """When each key was last used at each lock, at the lock's privacy precision."""
    if username and access_path is None:
        raise click.UsageError("--person needs --access PATH: the access repository maps people to keys")
    database, _ = _paths(db_path, config_path)
    rows = _query(queries.last_seen, database)
    if lock_name:
        rows = [row for row in rows if row["lock"] == lock_name]
    columns = ["lock", "hwid", "window_start", "window_end", "anomaly"]
    if access_path is not None:
        owners, people = _key_owners(access_path)
        for row in rows:
            username_for_key, description = owners.get(row["hwid"], (None, None))
            row["person"], row["key"] = username_for_key, description
        columns = ["person", "key"] + columns
        if username:
            if username not in people:
                raise click.ClickException(f"person {username!r} not found in the access repository {access_path}")
            rows = _rows_for_person(rows, owners, username, lock_name)
    _emit(rows, output_format, columns)


@stats.command(name="locks")
@_source_options
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Published manifest.json, to compare running and published bundle versions "
                   "(default: [data] manifest of --config).")
def locks_command(db_path: Path | None, config_path: Path | None, output_format: str,
                  manifest_path: Path | None) -> None:
    """Each lock's bundle version (running and published), last contact, clock offset and counters.

    The counters (taps granted and denied, exit-button presses, forced doors, doors held open)
    come from the lock's last status and count since its daemon started, uptime_s seconds ago.
    """
    database, configured_manifest = _paths(db_path, config_path)
    manifest_path = manifest_path or configured_manifest
    try:
        rows = _query(queries.locks, database, manifest_path)
    except ManifestError as error:
        raise click.ClickException(str(error)) from None
    if output_format == "json":
        _emit(rows, output_format, [])
        return

    table = []
    for row in rows:
        status = row["status"] or {}
        reader = status.get("reader") or {}
        counters = row.get("counters") or {}
        table.append({
            "lock": row["lock"],
            "running": row["bundle_version"],
            "published": row.get("published_version"),
            "up_to_date": row.get("up_to_date"),
            "last_contact": row["last_contact"],
            "clock_offset_s": row["clock_offset_seconds"],
            "uptime_s": _whole(row.get("uptime")),
            **{column: counters.get(name) for name, column in _COUNTER_COLUMNS.items()},
            "reader": {True: "ok", False: "FAULT"}.get(reader.get("healthy"), None),
            "last_error": reader.get("last_error"),
        })
    _emit(table, "text", ["lock", "running", "published", "up_to_date", "last_contact", "clock_offset_s",
                          "uptime_s", *_COUNTER_COLUMNS.values(), "reader", "last_error"])


# Status counter -> column of the text table; a lock that sends no counters shows "-".
_COUNTER_COLUMNS = {"granted": "granted", "denied": "denied", "exit_button": "exit_button",
                    "door_forced": "forced", "door_held_open": "held_open"}


def _whole(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _paths(db_path: Path | None, config_path: Path | None) -> tuple[Path, Path | None]:
    if db_path is not None:
        manifest = None
        if config_path is not None:
            manifest = _config(config_path).manifest
        return db_path, manifest
    if config_path is None:
        raise click.UsageError("give --db FILE (the receiver database) or --config FILE (the receiver configuration)")
    config = _config(config_path)
    return config.database, config.manifest


def _config(config_path: Path):
    try:
        return load_config(config_path)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


def _query(function, *arguments) -> list[dict]:
    database = arguments[0]
    try:
        return function(*arguments)
    except queries.DatabaseNotFound as error:
        raise click.ClickException(str(error)) from None
    except sqlite3.Error as error:
        raise click.ClickException(f"receiver database {database} cannot be read: {error}; check --db or "
                                   "[data] database: it must be the receiver's SQLite file") from None


def _key_owners(access_path: Path) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """Map each hardware id to (username, key description); also return all usernames."""
    from compiler.loader import AccessInvalid, load_repository

    try:
        repository = load_repository(access_path)
    except AccessInvalid as error:
        raise click.ClickException(f"{access_path}: {error}; run 'doorlock validate {access_path}' for the "
                                   "full list") from None
    owners = {}
    for person in repository.people.values():
        for key in person.keys:
            owners[key.hwid] = (person.username, key.description)
    return owners, set(repository.people)


def _rows_for_person(rows: list[dict], owners: dict, username: str, lock_name: str | None) -> list[dict]:
    own_keys = {hwid: description for hwid, (owner, description) in owners.items() if owner == username}
    selected = [row for row in rows if row["hwid"] in own_keys]
    seen = {row["hwid"] for row in selected}
    for hwid, description in sorted(own_keys.items()):
        if hwid not in seen:
            selected.append({"person": username, "key": description, "lock": lock_name, "hwid": hwid,
                             "window_start": None, "window_end": None, "anomaly": False})
    return selected


def _emit(rows: list[dict], output_format: str, columns: list[str]) -> None:
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("(no rows)")
        return
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[index]) for line in cells)) for index, column in enumerate(columns)]
    click.echo("  ".join(column.ljust(width) for column, width in zip(columns, widths)).rstrip())
    for line in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return str(value)
