"""Storage of pushed statistics: SQLite in WAL mode, each batch applied atomically.

Every write goes through :class:`SQLiteStore`, whose public methods are the whole storage
interface (:class:`StatisticsStore`): a PostgreSQL backend implements the same methods.

Merge rules, chosen so that the stored state does not depend on the order in which batches
arrive or on how often a batch is retried:

- a batch id is stored per lock; a batch whose id is already stored changes nothing;
- unknown keys: earliest first seen, latest last seen, summed count (saturating at 2**63 - 1),
  and the tag metadata of the sighting with the latest last seen. Ties go to the larger
  metadata, so that the result is still order-independent;
- keys last seen: the later window (compared as ``(window_start, window_end)``);
- status: the status with the later ``(sent_at, batch_id)``; every event is kept.

The importer of doorlockd history calls the same ``store_*`` methods with its own batch ids.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

log = logging.getLogger(__name__)

MAX_COUNT = 2**63 - 1

# Each migration moves the schema from version N-1 to N (PRAGMA user_version). Append new
# migrations; never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE locks (
        lock TEXT PRIMARY KEY,
        certificate_sha256 TEXT,
        first_contact INTEGER NOT NULL,
        last_contact INTEGER NOT NULL,
        clock_offset_seconds INTEGER,
        clock_checked_at INTEGER
    );
    CREATE TABLE batches (
        lock TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        content_sha256 TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        stored INTEGER NOT NULL,
        PRIMARY KEY (lock, batch_id)
    ) WITHOUT ROWID;
    CREATE TABLE unknown_keys (
        lock TEXT NOT NULL,
        hwid TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        count INTEGER NOT NULL,
        tag_type TEXT,
        atqa TEXT,
        sak TEXT,
        PRIMARY KEY (lock, hwid)
    ) WITHOUT ROWID;
    CREATE TABLE last_seen (
        lock TEXT NOT NULL,
        hwid TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        window_end INTEGER NOT NULL,
        PRIMARY KEY (lock, hwid)
    ) WITHOUT ROWID;
    CREATE TABLE last_seen_anomalies (
        lock TEXT NOT NULL,
        hwid TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        window_end INTEGER NOT NULL,
        bundle_version INTEGER,
        recorded_at INTEGER NOT NULL,
        PRIMARY KEY (lock, hwid, window_start, window_end)
    ) WITHOUT ROWID;
    CREATE TABLE lock_status (
        lock TEXT PRIMARY KEY,
        batch_id TEXT NOT NULL,
        sent_at INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        bundle_version INTEGER,
        bundle_sha256 TEXT,
        status_json TEXT NOT NULL
    );
    CREATE TABLE lock_events (
        lock TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        at INTEGER NOT NULL,
        detail TEXT,
        PRIMARY KEY (lock, batch_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX lock_events_by_time ON lock_events (at);
    """,
)


class BatchConflict(Exception):
    """A batch id that this lock already used for different content."""


class StoreError(RuntimeError):
    """The database cannot be opened, or its schema is newer than this receiver."""


@dataclass(frozen=True)
class UnknownKey:
    hwid: str
    first_seen: int
    last_seen: int
    count: int
    tag_type: str | None = None
    atqa: str | None = None
    sak: str | None = None


@dataclass(frozen=True)
class SeenWindow:
    hwid: str
    window_start: int
    window_end: int


@dataclass(frozen=True)
class LockEvent:
    type: str
    at: int
    detail: str | None = None


@dataclass(frozen=True)
class Batch:
    """The part of a push every kind shares: who sent it, its id and a digest of its content."""

    lock: str
    batch_id: str
    content_sha256: str
    received_at: int


@dataclass(frozen=True)
class Contact:
    """One authenticated request from a lock, stored even when its batch is rejected."""

    lock: str
    certificate_sha256: str | None
    at: int
    clock_offset_seconds: int | None = None


@dataclass(frozen=True)
class BatchResult:
    batch_id: str
    stored: int
    duplicate: bool


class StatisticsStore(Protocol):
    def store_unknown_keys(self, batch: Batch, items: Sequence[UnknownKey],
                           contact: Contact | None = None) -> BatchResult: ...

    def store_last_seen(self, batch: Batch, items: Sequence[SeenWindow], not_in_bundle: set[str],
                        bundle_version: int | None, contact: Contact | None = None) -> BatchResult: ...

    def store_status(self, batch: Batch, sent_at: int, status_json: str, bundle_version: int | None,
                     bundle_sha256: str | None, events: Sequence[LockEvent],
                     contact: Contact | None = None) -> BatchResult: ...

    def record_contact(self, contact: Contact) -> None: ...

    def close(self) -> None: ...


def connect(path: str | Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open the database with the settings every connection needs."""
    if read_only:
        connection = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False)
    else:
        connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 10000")
    if not read_only:
        connection.execute("PRAGMA journal_mode = WAL")
        # FULL: a batch answered with 200 survives a power loss, because the lock deletes it
        # from its spool on that answer.
        connection.execute("PRAGMA synchronous = FULL")
    return connection


def migrate(connection: sqlite3.Connection) -> int:
    """Apply the migrations the database lacks; return the resulting schema version."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"database schema version {version} is newer than this receiver "
                             f"({len(MIGRATIONS)}); upgrade doorlock")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in _statements(MIGRATIONS[number - 1]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number}")
            log.info("migrated receiver database to schema version %d", number)
        connection.execute("COMMIT")
        return len(MIGRATIONS)
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _open_for_writing(path: Path) -> sqlite3.Connection:
    """Open (or create) the database and bring its schema up to date."""
    connection = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = connect(path)
        migrate(connection)
        return connection
    except (OSError, sqlite3.Error, StoreError) as error:
        if connection is not None:
            connection.close()
        if isinstance(error, StoreError):
            raise StoreError(f"receiver database {path}: {error}") from None
        raise StoreError(f"receiver database {path}: {error}; check [data] database: the file must be "
                         "a receiver database (or absent) in a directory the receiver can write") from None


def _statements(script: str) -> list[str]:
    # executescript() would commit the open transaction first, so the statements are run one
    # by one inside it. The migrations contain no semicolons except as separators.
    return [part.strip() for part in script.split(";") if part.strip()]


class SQLiteStore:
    """The SQLite implementation of :class:`StatisticsStore`; safe to share between threads.

    All writes go through one connection with group commit. A request adds its batch to the
    pending list and waits for the commit lock. The thread that gets the lock takes every
    pending batch, its own and those that arrived while the previous commit was running,
    applies each inside its own savepoint and commits them together. A batch is thus stored
    whole or not at all, and a failing batch does not affect the others. One fsync covers the
    whole group: a commit with its fsync took about 5 ms in a profile on the development
    machine, so one commit per batch would cap the receiver near 200 batches per second. The threads whose batches
    were in the group find them done and return.
    """

    MAX_GROUP = 256

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._connection = _open_for_writing(self.path)
        self._pending: list[_Job] = []
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._commit_lock:
            if not self._closed:
                self._closed = True
                self._connection.close()

    # --- writes --------------------------------------------------------------------------

    def store_unknown_keys(self, batch: Batch, items: Sequence[UnknownKey],
                           contact: Contact | None = None) -> BatchResult:
        rows = [(batch.lock, item.hwid, item.first_seen, item.last_seen, item.count,
                 item.tag_type, item.atqa, item.sak) for item in items]

        def write(cursor: sqlite3.Cursor) -> None:
            cursor.executemany(_UPSERT_UNKNOWN_KEY, rows)

        return self._apply(batch, "unknown-keys", len(rows), write, contact)

    def store_last_seen(self, batch: Batch, items: Sequence[SeenWindow], not_in_bundle: set[str],
                        bundle_version: int | None, contact: Contact | None = None) -> BatchResult:
        rows = [(batch.lock, item.hwid, item.window_start, item.window_end) for item in items]
        anomalies = [(batch.lock, item.hwid, item.window_start, item.window_end, bundle_version,
                      batch.received_at) for item in items if item.hwid in not_in_bundle]

        def write(cursor: sqlite3.Cursor) -> None:
            cursor.executemany(_UPSERT_LAST_SEEN, rows)
            cursor.executemany(_INSERT_ANOMALY, anomalies)

        result = self._apply(batch, "last-seen", len(rows), write, contact)
        if anomalies and not result.duplicate:
            log.warning("lock %s reported %d key(s) last seen that its bundle (version %s) does not "
                        "contain; batch %s", batch.lock, len(anomalies), bundle_version, batch.batch_id)
        return result

    def store_status(self, batch: Batch, sent_at: int, status_json: str, bundle_version: int | None,
                     bundle_sha256: str | None, events: Sequence[LockEvent],
                     contact: Contact | None = None) -> BatchResult:
        event_rows = [(batch.lock, batch.batch_id, seq, event.type, event.at, event.detail)
                      for seq, event in enumerate(events)]

        def write(cursor: sqlite3.Cursor) -> None:
            cursor.execute(_UPSERT_STATUS, (batch.lock, batch.batch_id, sent_at, batch.received_at,
                                            bundle_version, bundle_sha256, status_json))
            cursor.executemany(_INSERT_EVENT, event_rows)

        return self._apply(batch, "status", 1 + len(event_rows), write, contact)

    def record_contact(self, contact: Contact) -> None:
        """Store that a lock made contact (and its clock offset) without storing a batch."""
        self._submit(lambda cursor: _upsert_contact(cursor, contact))

    def _apply(self, batch: Batch, kind: str, stored: int, write, contact: Contact | None) -> BatchResult:
        def apply(cursor: sqlite3.Cursor) -> BatchResult:
            if contact is not None:
                _upsert_contact(cursor, contact)
            previous = cursor.execute(
                "SELECT kind, content_sha256, stored FROM batches WHERE lock = ? AND batch_id = ?",
                (batch.lock, batch.batch_id)).fetchone()
            if previous is not None:
                return _duplicate(batch, kind, previous)
            write(cursor)
            cursor.execute("INSERT INTO batches (lock, batch_id, kind, content_sha256, received_at, stored) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (batch.lock, batch.batch_id, kind, batch.content_sha256, batch.received_at, stored))
            return BatchResult(batch.batch_id, stored, False)

        return self._submit(apply)

    # --- group commit ----------------------------------------------------------------------

    def _submit(self, run):
        job = _Job(run)
        with self._pending_lock:
            self._pending.append(job)
        # Usually one pass: either an earlier lock holder committed this batch, or this thread
        # commits it. A group has at most MAX_GROUP batches, so a batch may need a later one.
        while not job.done.is_set():
            with self._commit_lock:
                if job.done.is_set():
                    break
                if self._closed:
                    raise RuntimeError(f"the receiver store {self.path} is closed")
                with self._pending_lock:
                    group = self._pending[:self.MAX_GROUP]
                    del self._pending[:self.MAX_GROUP]
                self._commit_group(group)
        if job.error is not None:
            raise job.error
        return job.result

    def _commit_group(self, group: list[_Job]) -> None:
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            cursor = connection.cursor()
            for job in group:
                cursor.execute("SAVEPOINT batch")
                try:
                    job.result = job.run(cursor)
                except Exception as error:
                    job.error = error
                    cursor.execute("ROLLBACK TO batch")
                cursor.execute("RELEASE batch")
            connection.execute("COMMIT")
        except BaseException as error:
            # Nothing of the group is stored, so every request of it fails.
            log.error("commit of %d batch(es) failed: %s", len(group), error)
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            for job in group:
                job.result, job.error = None, job.error or error
        finally:
            for job in group:
                job.done.set()


@dataclass
class _Job:
    run: Callable[[sqlite3.Cursor], object]
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


def _duplicate(batch: Batch, kind: str, previous: tuple) -> BatchResult:
    previous_kind, previous_digest, previous_stored = previous
    if previous_kind != kind or previous_digest != batch.content_sha256:
        raise BatchConflict(f"batch_id {batch.batch_id!r} was already used by lock {batch.lock} for "
                            f"different content ({previous_kind}); give every new batch a new id")
    log.info("lock %s retried batch %s; nothing changed", batch.lock, batch.batch_id)
    return BatchResult(batch.batch_id, previous_stored, True)


def _upsert_contact(cursor: sqlite3.Cursor, contact: Contact) -> None:
    cursor.execute(
        """
        INSERT INTO locks (lock, certificate_sha256, first_contact, last_contact,
                           clock_offset_seconds, clock_checked_at)
        VALUES (?1, ?2, ?3, ?3, ?4, CASE WHEN ?4 IS NULL THEN NULL ELSE ?3 END)
        ON CONFLICT (lock) DO UPDATE SET
            certificate_sha256 = coalesce(excluded.certificate_sha256, certificate_sha256),
            first_contact = min(first_contact, excluded.first_contact),
            last_contact = max(last_contact, excluded.last_contact),
            clock_offset_seconds = coalesce(excluded.clock_offset_seconds, clock_offset_seconds),
            clock_checked_at = coalesce(excluded.clock_checked_at, clock_checked_at)
        """,
        (contact.lock, contact.certificate_sha256, contact.at, contact.clock_offset_seconds))


_UPSERT_UNKNOWN_KEY = f"""
INSERT INTO unknown_keys (lock, hwid, first_seen, last_seen, count, tag_type, atqa, sak)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (lock, hwid) DO UPDATE SET
    first_seen = min(first_seen, excluded.first_seen),
    count = CASE WHEN count > {MAX_COUNT} - excluded.count THEN {MAX_COUNT}
                 ELSE count + excluded.count END,
    tag_type = CASE WHEN {{newer}} THEN excluded.tag_type ELSE tag_type END,
    atqa = CASE WHEN {{newer}} THEN excluded.atqa ELSE atqa END,
    sak = CASE WHEN {{newer}} THEN excluded.sak ELSE sak END,
    last_seen = max(last_seen, excluded.last_seen)
""".replace("{newer}", (
    "(excluded.last_seen, coalesce(excluded.tag_type, ''), coalesce(excluded.atqa, ''), "
    "coalesce(excluded.sak, '')) > (last_seen, coalesce(tag_type, ''), coalesce(atqa, ''), coalesce(sak, ''))"))

_UPSERT_LAST_SEEN = """
INSERT INTO last_seen (lock, hwid, window_start, window_end) VALUES (?, ?, ?, ?)
ON CONFLICT (lock, hwid) DO UPDATE SET
    window_start = excluded.window_start,
    window_end = excluded.window_end
WHERE (excluded.window_start, excluded.window_end) > (window_start, window_end)
"""

_INSERT_ANOMALY = """
INSERT OR IGNORE INTO last_seen_anomalies (lock, hwid, window_start, window_end, bundle_version, recorded_at)
VALUES (?, ?, ?, ?, ?, ?)
"""

_UPSERT_STATUS = """
INSERT INTO lock_status (lock, batch_id, sent_at, received_at, bundle_version, bundle_sha256, status_json)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (lock) DO UPDATE SET
    batch_id = excluded.batch_id,
    sent_at = excluded.sent_at,
    received_at = excluded.received_at,
    bundle_version = excluded.bundle_version,
    bundle_sha256 = excluded.bundle_sha256,
    status_json = excluded.status_json
WHERE (excluded.sent_at, excluded.batch_id) > (sent_at, batch_id)
"""

_INSERT_EVENT = """
INSERT OR IGNORE INTO lock_events (lock, batch_id, seq, type, at, detail) VALUES (?, ?, ?, ?, ?, ?)
"""

