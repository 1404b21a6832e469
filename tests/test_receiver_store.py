"""The receiver's SQLite storage: settings, versioned migrations, refusal of a newer schema."""

from __future__ import annotations

import sqlite3

import pytest

from receiver import store
from receiver.store import Batch, SQLiteStore, StoreError, UnknownKey

T0 = 1_796_400_000  # 2026-12-04T16:00:00Z


def pragma(path, name: str):
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        connection.close()


def store_one_key(path) -> None:
    statistics = SQLiteStore(path)
    try:
        statistics.store_unknown_keys(Batch("front-door", "batch-0000000001", "d1", T0),
                                      [UnknownKey("04:00:00:01", T0 - 60, T0 - 30, 2)])
    finally:
        statistics.close()


def test_new_database_has_current_schema_in_wal_mode(tmp_path):
    path = tmp_path / "receiver.sqlite"

    store_one_key(path)

    assert pragma(path, "user_version") == len(store.MIGRATIONS)
    assert pragma(path, "journal_mode") == "wal"


def test_new_migration_applied_to_existing_data(tmp_path, monkeypatch):
    path = tmp_path / "receiver.sqlite"
    store_one_key(path)
    added = "ALTER TABLE unknown_keys ADD COLUMN note TEXT; UPDATE unknown_keys SET note = 'migrated'"
    monkeypatch.setattr(store, "MIGRATIONS", store.MIGRATIONS + (added,))

    SQLiteStore(path).close()

    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT hwid, count, note FROM unknown_keys").fetchall()
    finally:
        connection.close()
    assert rows == [("04:00:00:01", 2, "migrated")]
    assert pragma(path, "user_version") == len(store.MIGRATIONS)


def test_failing_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "receiver.sqlite"
    store_one_key(path)
    version = pragma(path, "user_version")
    broken = "ALTER TABLE unknown_keys ADD COLUMN note TEXT; SELECT * FROM no_such_table"
    monkeypatch.setattr(store, "MIGRATIONS", store.MIGRATIONS + (broken,))

    with pytest.raises(StoreError, match="no such table"):
        SQLiteStore(path)

    assert pragma(path, "user_version") == version
    connection = sqlite3.connect(path)
    try:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(unknown_keys)")]
    finally:
        connection.close()
    assert "note" not in columns


def test_database_from_newer_receiver_refused(tmp_path):
    path = tmp_path / "receiver.sqlite"
    store_one_key(path)
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {len(store.MIGRATIONS) + 1}")
    connection.close()

    with pytest.raises(StoreError) as raised:
        SQLiteStore(path)

    assert str(path) in str(raised.value)
    assert "newer than this receiver" in str(raised.value)
    assert "upgrade doorlock" in str(raised.value)
