"""Statistics spool: SQLite in the state directory, so a crash or a receiver outage loses nothing.

Three kinds of records wait here until the receiver has them:

- ``unknown-keys``: one row per unknown hardware id with first/last seen, count and tag data;
- ``last-seen``: one row per (known key, precision window); a window is pushed only after it
  has ended, so neither the content nor the push time says more than the precision;
- ``status``: events (exit button, bundle rejected, clock behind floor, ...) that travel with
  the next status record.

Pushing is two-phase. :meth:`Spool.next_batch` moves up to ``batch_size`` rows into an outbox
row with a fresh idempotency id in one transaction; the outbox row stays, and is sent again
unchanged, until :meth:`Spool.acknowledge` deletes it after the receiver's 200. A batch that
was stored but whose answer was lost is therefore retried with the same id, and the receiver
counts it once.

A batch the receiver finds too large goes back into the tables by :meth:`Spool.split`, and
later batches are half the size. A batch the receiver rejects for good (see
:mod:`lockclient.push`) is moved from the outbox to ``rejected_batches`` by
:meth:`Spool.quarantine`: its items count as lost, a ``statistics-rejected`` event names it in
the next status record, and the newest :data:`KEEP_REJECTED` of them stay in the file for an
operator to read.

The spool is bounded to ``max_items`` pending rows. Beyond that the oldest rows are dropped,
last-seen windows first (they are the least valuable), then events, then unknown keys; every
dropped row is counted and the total is reported in the status record.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lockclient.bundle import format_time, parse_time

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.sqlite3"
KINDS = ("unknown-keys", "last-seen", "status")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS unknown_keys (
    hwid TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    count INTEGER NOT NULL, tag_type TEXT, atqa TEXT, sak TEXT);
CREATE TABLE IF NOT EXISTS last_seen (
    hwid TEXT NOT NULL, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
    PRIMARY KEY (hwid, window_start));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, type TEXT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS outbox (
    kind TEXT PRIMARY KEY, batch_id TEXT NOT NULL, body TEXT NOT NULL, items INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejected_batches (
    batch_id TEXT PRIMARY KEY, kind TEXT NOT NULL, items INTEGER NOT NULL, status INTEGER NOT NULL,
    error TEXT NOT NULL, at INTEGER NOT NULL, body TEXT NOT NULL);
"""

# Quarantined batches kept for inspection; older ones are deleted (their loss stays counted).
KEEP_REJECTED = 10

# The receiver accepts event details and error texts up to this length.
MAX_DETAIL = 2000

# Tables in the order their oldest rows are dropped when the spool is full.
_DROP_ORDER = (
    ("last_seen", "window_start"),
    ("events", "at"),
    ("unknown_keys", "last_seen"),
)


@dataclass(frozen=True)
class Batch:
    kind: str
    batch_id: str
    body: bytes
    items: int


def window_start(instant: float, precision: int) -> int:
    """Return floor(t / p) * p: the start of the precision window holding ``instant``."""
    return int(instant // precision) * precision


def new_batch_id() -> str:
    return secrets.token_urlsafe(18)  # 24 characters of [A-Za-z0-9_-]


class Spool:
    """The SQLite spool; safe to use from several threads."""

    def __init__(self, path: Path, max_items: int = 100_000, batch_size: int = 500):
        self.path = Path(path)
        self.max_items = max_items
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- recording -------------------------------------------------------------------------

    def record_unknown(self, hwid: str, at: float, tag_type: str | None, atqa: str | None, sak: str | None) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "UPDATE unknown_keys SET last_seen = max(last_seen, ?), first_seen = min(first_seen, ?), "
                "count = count + 1, tag_type = coalesce(?, tag_type), atqa = coalesce(?, atqa), "
                "sak = coalesce(?, sak) WHERE hwid = ?",
                (int(at), int(at), tag_type, atqa, sak, hwid),
            )
            if cursor.rowcount == 0:
                self._db.execute(
                    "INSERT INTO unknown_keys VALUES (?, ?, ?, 1, ?, ?, ?)",
                    (hwid, int(at), int(at), tag_type, atqa, sak),
                )
                self._enforce_bound()

    def record_last_seen(self, hwid: str, at: float, precision: int) -> None:
        start = window_start(at, precision)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO last_seen VALUES (?, ?, ?)", (hwid, start, start + precision),
            )
            if cursor.rowcount:
                self._enforce_bound()

    def record_event(self, kind: str, at: float, detail: str | None = None) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._insert_event(kind, at, detail)

    def _insert_event(self, kind: str, at: float, detail: str | None) -> None:
        if detail is not None and len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL - 1] + "…"
        self._db.execute("INSERT INTO events (at, type, detail) VALUES (?, ?, ?)", (int(at), kind, detail))
        self._enforce_bound()

    def _pending_count(self) -> int:
        row = self._db.execute(
            "SELECT (SELECT count(*) FROM unknown_keys) + (SELECT count(*) FROM last_seen) "
            "+ (SELECT count(*) FROM events)"
        ).fetchone()
        return row[0]

    def _enforce_bound(self) -> None:
        excess = self._pending_count() - self.max_items
        dropped = 0
        for table, column in _DROP_ORDER:
            if excess <= 0:
                break
            cursor = self._db.execute(
                f"DELETE FROM {table} WHERE rowid IN "
                f"(SELECT rowid FROM {table} ORDER BY {column} LIMIT ?)", (excess,),
            )
            excess -= cursor.rowcount
            dropped += cursor.rowcount
        if dropped:
            self._add_counter("dropped", dropped)
            log.warning("statistics spool is full (%d items): dropped the %d oldest", self.max_items, dropped)

    def _add_counter(self, name: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    # -- reading ---------------------------------------------------------------------------

    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return row[0] if row else 0

    def rejected(self) -> int:
        """Return how many items were lost because the receiver rejected their batch for good."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'rejected'").fetchone()
        return row[0] if row else 0

    def rejected_batches(self) -> list[dict]:
        """Return the quarantined batches still kept, newest first (without their bodies)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT batch_id, kind, items, status, error, at FROM rejected_batches ORDER BY at DESC, rowid DESC"
            ).fetchall()
        return [
            {"batch_id": batch_id, "kind": kind, "items": items, "status": status, "error": error,
             "at": format_time(at)}
            for batch_id, kind, items, status, error, at in rows
        ]

    def sizes(self) -> dict[str, int]:
        """Return pending rows per table and the items waiting in the outbox."""
        with self._lock:
            return {
                "unknown_keys": self._db.execute("SELECT count(*) FROM unknown_keys").fetchone()[0],
                "last_seen": self._db.execute("SELECT count(*) FROM last_seen").fetchone()[0],
                "events": self._db.execute("SELECT count(*) FROM events").fetchone()[0],
                "outbox": self._db.execute("SELECT coalesce(sum(items), 0) FROM outbox").fetchone()[0],
            }

    # -- batches ---------------------------------------------------------------------------

    def next_batch(self, kind: str, now: float, status: Callable[[], dict] | None = None) -> Batch | None:
        """Return the outbox batch of ``kind``, creating it from pending rows if there is none.

        Returns None when nothing is due. For ``status`` a batch is always created, from the
        snapshot ``status()`` returns plus the pending events.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown batch kind {kind!r}")
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT batch_id, body, items FROM outbox WHERE kind = ?", (kind,)).fetchone()
            if row is not None:
                return Batch(kind, row[0], row[1].encode(), row[2])

            batch_id = new_batch_id()
            if kind == "unknown-keys":
                document, items = self._take_unknown(batch_id, now)
            elif kind == "last-seen":
                document, items = self._take_last_seen(batch_id, now)
            else:
                document, items = self._take_status(batch_id, now, status)
            if document is None:
                return None
            body = json.dumps(document, separators=(",", ":"), sort_keys=True)
            self._db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?)", (kind, batch_id, body, items))
            return Batch(kind, batch_id, body.encode(), items)

    def refresh_sent_at(self, batch: Batch, now: float) -> Batch:
        """Set the outbox batch's ``sent_at`` to ``now`` and return it; id and items stay the same.

        For a batch made while the clock ran ahead: the receiver refuses a ``sent_at`` in its
        future, and does not compare ``sent_at`` when it recognises a retried batch.
        """
        document = json.loads(batch.body)
        document["sent_at"] = format_time(now)
        body = json.dumps(document, separators=(",", ":"), sort_keys=True)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE outbox SET body = ? WHERE kind = ? AND batch_id = ?", (body, batch.kind, batch.batch_id),
            )
        return Batch(batch.kind, batch.batch_id, body.encode(), batch.items)

    def quarantine(self, batch: Batch, status: int, error: str, at: float) -> None:
        """Move a batch the receiver will never accept out of the outbox; count its items as lost."""
        summary = f"{batch.kind} batch {batch.batch_id} ({batch.items} items) rejected with {status}: {error}"
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM outbox WHERE kind = ? AND batch_id = ?", (batch.kind, batch.batch_id))
            self._db.execute(
                "INSERT OR REPLACE INTO rejected_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (batch.batch_id, batch.kind, batch.items, status, error[:MAX_DETAIL], int(at), batch.body.decode()),
            )
            self._db.execute(
                "DELETE FROM rejected_batches WHERE rowid NOT IN "
                "(SELECT rowid FROM rejected_batches ORDER BY at DESC, rowid DESC LIMIT ?)", (KEEP_REJECTED,),
            )
            self._add_counter("dropped", batch.items)
            self._add_counter("rejected", batch.items)
            self._insert_event("statistics-rejected", at, summary)

    def split(self, batch: Batch) -> int:
        """Put the items of an outbox batch back, to be sent in batches half the size; return that size.

        For a batch the receiver finds too large. The status snapshot of a status batch is not
        kept (the next one is fresh), its events are.
        """
        document = json.loads(batch.body)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM outbox WHERE kind = ? AND batch_id = ?", (batch.kind, batch.batch_id))
            if batch.kind == "unknown-keys":
                self._db.executemany(
                    "INSERT INTO unknown_keys VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hwid) DO UPDATE SET "
                    "first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen), "
                    "count = count + excluded.count, tag_type = coalesce(tag_type, excluded.tag_type), "
                    "atqa = coalesce(atqa, excluded.atqa), sak = coalesce(sak, excluded.sak)",
                    [(item["hwid"], parse_time(item["first_seen"], "first_seen"),
                      parse_time(item["last_seen"], "last_seen"), item["count"], item.get("tag_type"),
                      item.get("atqa"), item.get("sak")) for item in document["items"]],
                )
            elif batch.kind == "last-seen":
                self._db.executemany(
                    "INSERT OR IGNORE INTO last_seen VALUES (?, ?, ?)",
                    [(item["hwid"], parse_time(item["window_start"], "window_start"),
                      parse_time(item["window_end"], "window_end")) for item in document["items"]],
                )
            else:
                self._db.executemany(
                    "INSERT INTO events (at, type, detail) VALUES (?, ?, ?)",
                    [(parse_time(event["at"], "at"), event["type"], event["detail"])
                     for event in document["status"]["events"]],
                )
            self._enforce_bound()
        self.batch_size = max(1, min(self.batch_size, batch.items) // 2)
        return self.batch_size

    def acknowledge(self, batch: Batch) -> None:
        """Delete an outbox batch after the receiver confirmed it."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM outbox WHERE kind = ? AND batch_id = ?", (batch.kind, batch.batch_id))

    def _take_unknown(self, batch_id: str, now: float):
        rows = self._db.execute(
            "SELECT hwid, first_seen, last_seen, count, tag_type, atqa, sak FROM unknown_keys "
            "ORDER BY first_seen LIMIT ?", (self.batch_size,),
        ).fetchall()
        if not rows:
            return None, 0
        self._db.executemany("DELETE FROM unknown_keys WHERE hwid = ?", [(row[0],) for row in rows])
        items = [
            {"hwid": hwid, "first_seen": format_time(first), "last_seen": format_time(last), "count": count,
             "tag_type": tag_type, "atqa": atqa, "sak": sak}
            for hwid, first, last, count, tag_type, atqa, sak in rows
        ]
        return {"batch_id": batch_id, "sent_at": format_time(now), "items": items}, len(items)

    def _take_last_seen(self, batch_id: str, now: float):
        # One precision per batch: the receiver API carries it once per request.
        first = self._db.execute(
            "SELECT window_end - window_start FROM last_seen WHERE window_end <= ? ORDER BY window_start LIMIT 1",
            (int(now),),
        ).fetchone()
        if first is None:
            return None, 0
        precision = first[0]
        rows = self._db.execute(
            "SELECT hwid, window_start, window_end FROM last_seen "
            "WHERE window_end <= ? AND window_end - window_start = ? ORDER BY window_start LIMIT ?",
            (int(now), precision, self.batch_size),
        ).fetchall()
        self._db.executemany(
            "DELETE FROM last_seen WHERE hwid = ? AND window_start = ?", [(row[0], row[1]) for row in rows],
        )
        items = [
            {"hwid": hwid, "window_start": format_time(start), "window_end": format_time(end)}
            for hwid, start, end in rows
        ]
        document = {"batch_id": batch_id, "sent_at": format_time(now), "precision": precision, "items": items}
        return document, len(items)

    def _take_status(self, batch_id: str, now: float, status: Callable[[], dict] | None):
        if status is None:
            raise ValueError("a status batch needs a status snapshot")
        rows = self._db.execute(
            "SELECT id, at, type, detail FROM events ORDER BY id LIMIT ?", (self.batch_size,),
        ).fetchall()
        if rows:
            self._db.execute("DELETE FROM events WHERE id <= ?", (rows[-1][0],))
        record = dict(status())
        dropped = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        record["spool_dropped"] = dropped[0] if dropped else 0
        record["events"] = [{"type": kind, "at": format_time(at), "detail": detail} for _, at, kind, detail in rows]
        return {"batch_id": batch_id, "sent_at": format_time(now), "status": record}, len(rows)
