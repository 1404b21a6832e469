"""Load doorlockd's statistics (unknown keys, keys last seen) into the receiver's database.

The rows go through the receiver's own merge API (:mod:`receiver.store`), one batch per lock
and kind, exactly as if the lock had pushed them. Each batch id is fixed per lock and kind
(``doorlockd-import-unknown-keys``, ``doorlockd-import-last-seen``), because the receiver
stores a batch id once per lock:

- importing the same dump again is stored as a duplicate batch and changes nothing;
- importing a different dump later is rejected for that lock (the receiver would otherwise add
  doorlockd's cumulative counters a second time); the report says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from compiler.doorlockd_convert import ConvertedRepository
from compiler.doorlockd_dump import DoorlockdDump
from lockclient.hwid import format_hwid

__all__ = ["StatisticsImportError", "import_statistics", "UNKNOWN_KEYS_BATCH", "LAST_SEEN_BATCH"]

UNKNOWN_KEYS_BATCH = "doorlockd-import-unknown-keys"
LAST_SEEN_BATCH = "doorlockd-import-last-seen"


class StatisticsImportError(Exception):
    """The statistics database cannot be opened or written; the message names the reason."""


def _hwid(text: str) -> str | None:
    """Return the canonical form of a hwid doorlockd logged, or None when it is not hex bytes."""
    digits = text.strip().replace(":", "").replace("-", "")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return format_hwid(raw) if raw else None


def _seconds(instant: datetime | None, round_up: bool = False) -> int | None:
    if instant is None:
        return None
    value = instant.timestamp()
    return math.ceil(value) if round_up else math.floor(value)


def _digest(rows: list) -> str:
    document = [asdict(row) for row in rows]
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def import_statistics(dump: DoorlockdDump, converted: ConvertedRepository, db_path: Path) -> list[str]:
    """Store the dump's statistics in the receiver database at ``db_path``; return report lines."""
    from receiver.store import SeenWindow, SQLiteStore, UnknownKey

    unknown: dict[str, list[UnknownKey]] = {}
    seen: dict[str, list[SeenWindow]] = {}
    lines: list[str] = []
    skipped = 0

    for pk, row in sorted(dump.unknown_keys.items()):
        hwid = _hwid(row.hwid)
        first = _seconds(row.created_at) or _seconds(row.last_seen)
        last = _seconds(row.last_seen) or first
        if row.lock_pk is None or hwid is None or first is None:
            skipped += 1
            continue
        metadata = converted_metadata(dump, row.hwid)
        unknown.setdefault(converted.lock_names[row.lock_pk], []).append(UnknownKey(
            hwid=hwid, first_seen=min(first, last), last_seen=last, count=max(row.counter, 1),
            tag_type=metadata,
        ))

    for key_pk, row in sorted(dump.last_seen.items()):
        key = dump.keys[key_pk]
        start = _seconds(row.start)
        end = _seconds(row.end, round_up=True)
        if row.lock_pk is None or key.hwid is None or start is None or end is None or end <= start:
            skipped += 1
            continue
        seen.setdefault(converted.lock_names[row.lock_pk], []).append(SeenWindow(key.hwid, start, end))

    try:
        store = SQLiteStore(db_path)
    except (sqlite3.Error, OSError, RuntimeError) as error:
        raise StatisticsImportError(f"cannot open {db_path}: {error}") from None
    received_at = int(datetime.now(timezone.utc).timestamp())
    try:
        lines.extend(_store_batches(store, "unknown keys", unknown, UNKNOWN_KEYS_BATCH, received_at, db_path))
        lines.extend(_store_batches(store, "keys last seen", seen, LAST_SEEN_BATCH, received_at, db_path))
    except sqlite3.Error as error:
        raise StatisticsImportError(f"cannot write {db_path}: {error}") from None
    finally:
        store.close()
    if skipped:
        lines.append(f"statistics rows skipped: {skipped} (no lock, no time or an unreadable hwid)")
    return lines


def _store_batches(store, kind: str, per_lock: dict[str, list], batch_id: str, received_at: int,
                   db_path: Path) -> list[str]:
    from receiver.store import Batch, BatchConflict

    lines: list[str] = []
    stored = duplicates = 0
    for lock in sorted(per_lock):
        items = per_lock[lock]
        batch = Batch(lock=lock, batch_id=batch_id, content_sha256=_digest(items), received_at=received_at)
        try:
            if kind == "unknown keys":
                result = store.store_unknown_keys(batch, items)
            else:
                result = store.store_last_seen(batch, items, not_in_bundle=set(), bundle_version=None)
        except BatchConflict:
            lines.append(f"{kind} for lock {lock}: not loaded, because history from a different "
                         f"doorlockd dump was loaded before (batch {batch_id})")
            continue
        if result.duplicate:
            duplicates += len(items)
        else:
            stored += result.stored
    summary = f"{kind}: {stored} rows loaded into {db_path}"
    if duplicates:
        summary += f", {duplicates} already there from an earlier import"
    return [summary] + lines


def converted_metadata(dump: DoorlockdDump, hwid: str) -> str | None:
    """Return the card product doorlockd recorded for ``hwid`` (e.g. 'NXP NTAG215'), if any."""
    metadata = dump.key_metadata.get(hwid.strip().lower())
    if metadata is None:
        return None
    product = metadata.data.get("tag", {}).get("product") if isinstance(metadata.data.get("tag"), dict) else None
    return product if isinstance(product, str) else None
