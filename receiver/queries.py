"""Read-only queries over the receiver database, for reports, the importer and ``doorlock stats``.

Every function opens the database read-only, returns a list of plain dicts (JSON-ready:
timestamps are UTC strings like ``2026-12-04T20:00:00Z``) and closes it again.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from receiver.store import connect


class DatabaseNotFound(Exception):
    """The receiver database does not exist (yet)."""


def unknown_keys(db_path: str | Path) -> list[dict]:
    """Return every unknown key per lock, most recently seen first.

    Keys: ``lock``, ``hwid``, ``first_seen``, ``last_seen``, ``count``, ``tag_type``,
    ``atqa``, ``sak``.
    """
    rows = _select(db_path, """
        SELECT lock, hwid, first_seen, last_seen, count, tag_type, atqa, sak
        FROM unknown_keys ORDER BY last_seen DESC, lock, hwid""")
    return [
        {"lock": lock, "hwid": hwid, "first_seen": _time(first), "last_seen": _time(last),
         "count": count, "tag_type": tag_type, "atqa": atqa, "sak": sak}
        for lock, hwid, first, last, count, tag_type, atqa, sak in rows
    ]


def last_seen(db_path: str | Path) -> list[dict]:
    """Return the latest window in which each key was used at each lock, newest first.

    Keys: ``lock``, ``hwid``, ``window_start``, ``window_end``, and ``anomaly``: true when the
    lock's bundle did not contain the key when that window was pushed.
    """
    rows = _select(db_path, """
        SELECT s.lock, s.hwid, s.window_start, s.window_end,
               EXISTS (SELECT 1 FROM last_seen_anomalies a
                       WHERE a.lock = s.lock AND a.hwid = s.hwid
                         AND a.window_start = s.window_start AND a.window_end = s.window_end)
        FROM last_seen s ORDER BY s.window_start DESC, s.lock, s.hwid""")
    return [
        {"lock": lock, "hwid": hwid, "window_start": _time(start), "window_end": _time(end),
         "anomaly": bool(anomaly)}
        for lock, hwid, start, end, anomaly in rows
    ]


def anomalies(db_path: str | Path) -> list[dict]:
    """Return every key a lock reported as used although its bundle did not contain it.

    Keys: ``lock``, ``hwid``, ``window_start``, ``window_end``, ``bundle_version``,
    ``recorded_at``.
    """
    rows = _select(db_path, """
        SELECT lock, hwid, window_start, window_end, bundle_version, recorded_at
        FROM last_seen_anomalies ORDER BY window_start DESC, lock, hwid""")
    return [
        {"lock": lock, "hwid": hwid, "window_start": _time(start), "window_end": _time(end),
         "bundle_version": version, "recorded_at": _time(recorded)}
        for lock, hwid, start, end, version, recorded in rows
    ]


def locks(db_path: str | Path, manifest_path: str | Path | None = None) -> list[dict]:
    """Return one row per lock that made contact, and per published lock when a manifest is given.

    Keys: ``lock``, ``first_contact``, ``last_contact``, ``clock_offset_seconds`` (lock clock
    minus receiver clock at the last check, positive when the lock is ahead),
    ``clock_checked_at``, ``status_sent_at``, ``bundle_version`` and ``bundle_sha256`` (what the
    lock runs), ``status`` (the last status object as pushed, or None), ``uptime`` and
    ``counters`` from that status (exit button, door forced, door held open, taps granted and
    denied since the lock daemon started; None when the lock sends none). With ``manifest_path``
    also ``published_version``, ``published_sha256`` and ``up_to_date`` (None when unknown).
    """
    rows = _select(db_path, """
        SELECT l.lock, l.first_contact, l.last_contact, l.clock_offset_seconds, l.clock_checked_at,
               s.sent_at, s.bundle_version, s.bundle_sha256, s.status_json
        FROM locks l LEFT JOIN lock_status s ON s.lock = l.lock ORDER BY l.lock""")
    result = {}
    for lock, first, last, offset, checked, sent_at, version, digest, status_json in rows:
        status = json.loads(status_json) if status_json else None
        result[lock] = {
            "lock": lock, "first_contact": _time(first), "last_contact": _time(last),
            "clock_offset_seconds": offset, "clock_checked_at": _time(checked),
            "status_sent_at": _time(sent_at), "bundle_version": version, "bundle_sha256": digest,
            "status": status, "uptime": (status or {}).get("uptime"), "counters": (status or {}).get("counters"),
        }
    if manifest_path is not None:
        _add_published(result, Path(manifest_path))
    return [result[name] for name in sorted(result)]


def events(db_path: str | Path, lock: str | None = None, limit: int = 1000) -> list[dict]:
    """Return the newest status events (door forced, bundle rejected, …), newest first."""
    query = "SELECT lock, type, at, detail, batch_id FROM lock_events"
    parameters: tuple = ()
    if lock is not None:
        query += " WHERE lock = ?"
        parameters = (lock,)
    query += " ORDER BY at DESC, lock, batch_id, seq LIMIT ?"
    rows = _select(db_path, query, parameters + (limit,))
    return [{"lock": name, "type": kind, "at": _time(at), "detail": detail, "batch_id": batch_id}
            for name, kind, at, detail, batch_id in rows]


def _add_published(result: dict[str, dict], manifest_path: Path) -> None:
    from receiver.identity import load_manifest

    manifest = load_manifest(manifest_path)
    for name in set(result) | set(manifest.bundles):
        row = result.setdefault(name, {
            "lock": name, "first_contact": None, "last_contact": None, "clock_offset_seconds": None,
            "clock_checked_at": None, "status_sent_at": None, "bundle_version": None,
            "bundle_sha256": None, "status": None, "uptime": None, "counters": None})
        published = manifest.bundles.get(name)
        row["published_version"] = published.version if published else None
        row["published_sha256"] = published.sha256 if published else None
        if published is None or row["bundle_version"] is None:
            row["up_to_date"] = None
        else:
            row["up_to_date"] = row["bundle_version"] == published.version


def _select(db_path: str | Path, query: str, parameters: tuple = ()) -> list[tuple]:
    path = Path(db_path)
    if not path.exists():
        raise DatabaseNotFound(f"receiver database {path} not found; check --db or [data] database "
                               "in the receiver configuration")
    with closing(connect(path, read_only=True)) as connection:
        try:
            return connection.execute(query, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise


def _time(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
