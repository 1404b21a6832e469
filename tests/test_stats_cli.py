"""``doorlock stats``: the admin's read-only view of what the locks pushed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler.cli import main
from receiver.store import Batch, Contact, SeenWindow, SQLiteStore, UnknownKey
from tests.receiver_harness import ReceiverSite

ACCESS = Path(__file__).resolve().parent.parent / "access"
ANNA_KEY = "04:fb:04:b4:2a:68:58"  # anna.devries's key fob in the example access repository
BRAM_KEY = "04:33:68:be:5a:ab:0a"  # bram.jansen's key fob
HOUR = 3600
T0 = 1_796_400_000  # 2026-12-04T16:00:00Z


@pytest.fixture()
def database(tmp_path) -> Path:
    path = tmp_path / "receiver.sqlite"
    store = SQLiteStore(path)
    try:
        store.store_unknown_keys(Batch("front-door", "batch-unknown-0001", "d1", T0),
                                 [UnknownKey("04:de:ad:be:ef:00:01", T0 - 600, T0 - 60, 3, "Type2Tag", "0044", "00")],
                                 Contact("front-door", "ab" * 32, T0, 0))
        store.store_last_seen(Batch("front-door", "batch-seen-000001", "d2", T0),
                              [SeenWindow(ANNA_KEY, T0 - 2 * HOUR, T0 - HOUR),
                               SeenWindow("04:aa:aa:aa", T0 - 2 * HOUR, T0 - HOUR)],
                              not_in_bundle={"04:aa:aa:aa"}, bundle_version=5)
        store.store_status(Batch("front-door", "batch-status-0001", "d3", T0), T0,
                           json.dumps({"reader": {"healthy": False, "last_error": "no reader on usb"}}), 4, "ab" * 32,
                           [], Contact("front-door", "ab" * 32, T0, -420))
    finally:
        store.close()
    return path


def run(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["stats", *arguments])
    return result.exit_code, result.output


def test_unknown_keys_json(database):
    code, output = run("unknown-keys", "--db", str(database), "--format", "json")

    assert code == 0, output
    [row] = json.loads(output)
    assert row["hwid"] == "04:de:ad:be:ef:00:01"
    assert row["count"] == 3
    assert row["last_seen"] == "2026-12-04T15:59:00Z"


def test_unknown_keys_text_table(database):
    code, output = run("unknown-keys", "--db", str(database))

    assert code == 0, output
    header, row = output.splitlines()
    assert header.split()[:3] == ["lock", "hwid", "count"]
    assert row.split()[:3] == ["front-door", "04:de:ad:be:ef:00:01", "3"]


def test_last_seen_names_people(database):
    code, output = run("last-seen", "--db", str(database), "--access", str(ACCESS), "--format", "json")

    assert code == 0, output
    rows = {row["hwid"]: row for row in json.loads(output)}
    assert rows[ANNA_KEY]["person"] == "anna.devries"
    assert rows[ANNA_KEY]["window_start"] == "2026-12-04T14:00:00Z"
    assert rows["04:aa:aa:aa"]["person"] is None
    assert rows["04:aa:aa:aa"]["anomaly"] is True


def test_last_seen_for_one_person_lists_unseen_keys(database):
    code, output = run("last-seen", "--db", str(database), "--access", str(ACCESS), "--person", "bram.jansen",
                       "--format", "json")

    assert code == 0, output
    [row] = json.loads(output)
    assert row["hwid"] == BRAM_KEY
    assert row["window_start"] is None


def test_last_seen_person_needs_access(database):
    code, output = run("last-seen", "--db", str(database), "--person", "anna.devries")

    assert code != 0
    assert "--person needs --access" in output


def test_last_seen_unknown_person_named(database):
    code, output = run("last-seen", "--db", str(database), "--access", str(ACCESS), "--person", "nobody")

    assert code == 1
    assert "person 'nobody' not found" in output


def test_locks_shows_versions_and_clock_offset(database, tmp_path):
    site = ReceiverSite(tmp_path / "site", {"front-door": [], "workshop": []})

    code, output = run("locks", "--db", str(database), "--manifest", str(site.publish_dir / "manifest.json"),
                       "--format", "json")

    assert code == 0, output
    rows = {row["lock"]: row for row in json.loads(output)}
    assert rows["front-door"]["bundle_version"] == 4
    assert rows["front-door"]["published_version"] == 1
    assert rows["front-door"]["up_to_date"] is False
    assert rows["front-door"]["clock_offset_seconds"] == -420
    assert rows["workshop"]["last_contact"] is None


def test_locks_text_marks_reader_fault(database):
    code, output = run("locks", "--db", str(database))

    assert code == 0, output
    assert "FAULT" in output
    assert "no reader on usb" in output


COUNTERS = {"exit_button": 12, "door_forced": 1, "door_held_open": 2, "granted": 340, "denied": 9}


def store_counting_status(database: Path) -> None:
    """A second lock whose status carries counters, 3 days after its daemon started."""
    store = SQLiteStore(database)
    try:
        store.store_status(Batch("workshop", "batch-status-0002", "d4", T0), T0,
                           json.dumps({"reader": {"healthy": True, "last_error": None}, "uptime": 259_200.4,
                                       "counters": COUNTERS}), 6, "cd" * 32, [],
                           Contact("workshop", "cd" * 32, T0, 2))
    finally:
        store.close()


def test_locks_json_shows_counters(database):
    store_counting_status(database)

    code, output = run("locks", "--db", str(database), "--format", "json")

    assert code == 0, output
    rows = {row["lock"]: row for row in json.loads(output)}
    assert rows["workshop"]["counters"] == COUNTERS
    assert rows["workshop"]["uptime"] == 259_200.4
    assert rows["front-door"]["counters"] is None  # its lockclient sends none


def test_locks_text_shows_counters(database):
    store_counting_status(database)

    code, output = run("locks", "--db", str(database))

    assert code == 0, output
    header, *lines = output.splitlines()
    columns = header.split()
    rows = {line.split()[0]: dict(zip(columns, line.split())) for line in lines}
    assert columns[columns.index("uptime_s"):columns.index("reader")] == [
        "uptime_s", "granted", "denied", "exit_button", "forced", "held_open"]
    assert [rows["workshop"][name] for name in ("uptime_s", "granted", "denied", "exit_button", "forced",
                                                  "held_open")] == ["259200", "340", "9", "12", "1", "2"]
    assert rows["front-door"]["exit_button"] == "-"


def test_database_from_config(database, tmp_path):
    config = tmp_path / "receiver.toml"
    config.write_text(f'[server]\nmode = "proxy"\n[data]\nmanifest = "missing.json"\ndatabase = "{database}"\n')

    code, output = run("unknown-keys", "--config", str(config), "--format", "json")

    assert code == 0, output
    assert len(json.loads(output)) == 1


def test_missing_database_named(tmp_path):
    code, output = run("unknown-keys", "--db", str(tmp_path / "nothing.sqlite"))

    assert code == 1
    assert "nothing.sqlite not found" in output
    assert "Traceback" not in output


def test_no_source_is_usage_error():
    code, output = run("locks")

    assert code == 2
    assert "--db FILE" in output


def test_file_that_is_no_database_named(tmp_path):
    not_a_database = tmp_path / "notes.sqlite"
    not_a_database.write_text("these are notes, not a database")

    code, output = run("unknown-keys", "--db", str(not_a_database))

    assert code == 1
    assert "notes.sqlite cannot be read" in output
    assert "Traceback" not in output
