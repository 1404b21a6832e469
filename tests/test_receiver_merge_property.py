"""Property: retries and reordering of pushes never change what the receiver stores.

Any delivery sequence that contains every distinct batch at least once, in any order and
with any number of retries, must leave the database in the same state as delivering each
batch exactly once in the order it was made. Requests go through the real WSGI application
(parsing, validation, identity from the client certificate) and a real SQLite database; only
the TLS layer is left out, and the receiver's clock is fixed.
"""

from __future__ import annotations

import io
import json
import sqlite3
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.app import ReceiverApp
from receiver.config import load_config
from receiver.identity import LockDirectory
from receiver.store import MAX_COUNT, SQLiteStore
from tests.receiver_harness import ReceiverSite

NOW = 1_796_414_400  # 2026-12-04T20:00:00Z
PRECISION = 3600
LOCKS = ("front-door", "back-door")
KEYS = ("04:00:00:01", "04:00:00:02", "04:00:00:03")


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> ReceiverSite:
    # Only the certificates, the manifest and the configuration are used; nothing is started.
    return ReceiverSite(tmp_path_factory.mktemp("merge"), {"front-door": [KEYS[0]], "back-door": [KEYS[1]]})


unknown_items = st.builds(
    lambda hwid, age, span, count, tag, atqa, sak: {
        "hwid": hwid, "first_seen": iso(NOW - age - span), "last_seen": iso(NOW - age), "count": count,
        "tag_type": tag, "atqa": atqa, "sak": sak},
    st.sampled_from(KEYS), st.integers(0, 5000), st.integers(0, 5000),
    st.one_of(st.integers(1, 5), st.just(MAX_COUNT // 2)),
    st.sampled_from(["Type2Tag", "Type4Tag", None]), st.sampled_from(["0044", None]), st.sampled_from(["00", "08"]))

window_items = st.builds(
    lambda hwid, windows_ago, precision: (hwid, (NOW // precision - windows_ago) * precision, precision),
    st.sampled_from(KEYS), st.integers(1, 6), st.sampled_from([PRECISION, 2 * PRECISION]))

events = st.builds(lambda kind, age: {"type": kind, "at": iso(NOW - age), "detail": None},
                   st.sampled_from(["door-forced", "exit-button"]), st.integers(0, 100))


def unknown_keys_batch(items):
    return ("unknown-keys", {"sent_at": iso(NOW), "items": items})


def last_seen_batch(windows):
    precision = windows[0][2]
    items = [{"hwid": hwid, "window_start": iso(start), "window_end": iso(start + precision)}
             for hwid, start, item_precision in windows if item_precision == precision]
    return ("last-seen", {"sent_at": iso(NOW), "precision": precision, "items": items})


def status_batch(age, version, batch_events):
    return ("status", {"sent_at": iso(NOW - age), "status": {
        "bundle_version": version, "bundle_sha256": None, "bundle_expires_at": None, "clock": iso(NOW - age),
        "clock_behind_floor": False, "uptime": 1.0, "reader": {"healthy": True, "last_error": None},
        "last_rejected_bundle": None, "spool_dropped": 0, "events": batch_events}})


batch_contents = st.one_of(
    st.lists(unknown_items, min_size=1, max_size=4).map(unknown_keys_batch),
    st.lists(window_items, min_size=1, max_size=4).map(last_seen_batch),
    st.builds(status_batch, st.integers(0, 3), st.integers(1, 4), st.lists(events, max_size=2)),
)


@st.composite
def batches_and_delivery(draw):
    contents = draw(st.lists(st.tuples(st.sampled_from(LOCKS), batch_contents), min_size=1, max_size=10))
    batches = []
    for index, (lock, (endpoint, body)) in enumerate(contents):
        batches.append((lock, endpoint, dict(body, batch_id=f"batch-{index:012d}")))
    retries = draw(st.lists(st.integers(0, len(batches) - 1), max_size=10))
    delivery = draw(st.permutations(list(range(len(batches))) + retries))
    return batches, delivery


def deliver(site: ReceiverSite, database: Path, batches, order) -> dict:
    config = load_config(site.config_path)
    store = SQLiteStore(database)
    app = ReceiverApp(config, store, LockDirectory(config.manifest), clock=lambda: NOW)
    try:
        for index in order:
            lock, endpoint, body = batches[index]
            status, answer = call(app, site, lock, endpoint, body)
            assert status == 200, answer
    finally:
        store.close()
    return state(database)


def call(app: ReceiverApp, site: ReceiverSite, lock: str, endpoint: str, body: dict):
    data = json.dumps(body).encode()
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": f"/v1/{endpoint}", "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data),
        "SSL_CLIENT_CERT": site.locks[lock].certificate.read_text(),
    }
    captured = {}
    payload = b"".join(app(environ, lambda status, headers: captured.update(status=status)))
    return int(captured["status"].split()[0]), json.loads(payload)


def state(database: Path) -> dict:
    connection = sqlite3.connect(database)
    try:
        tables = {
            "batches": "SELECT lock, batch_id, kind, content_sha256, stored FROM batches",
            "unknown_keys": "SELECT * FROM unknown_keys",
            "last_seen": "SELECT * FROM last_seen",
            "anomalies": "SELECT lock, hwid, window_start, window_end, bundle_version FROM last_seen_anomalies",
            "status": "SELECT lock, batch_id, sent_at, bundle_version, status_json FROM lock_status",
            "events": "SELECT * FROM lock_events",
            # The clock offset is the latest measurement by design, so it is left out.
            "locks": "SELECT lock, certificate_sha256, first_contact, last_contact FROM locks",
        }
        return {name: sorted(connection.execute(query).fetchall()) for name, query in tables.items()}
    finally:
        connection.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=batches_and_delivery())
def test_retries_and_reordering_change_nothing(site, scenario):
    batches, delivery = scenario
    with tempfile.TemporaryDirectory() as directory:
        once_in_order = deliver(site, Path(directory) / "reference.sqlite", batches, range(len(batches)))
        shuffled_with_retries = deliver(site, Path(directory) / "delivered.sqlite", batches, delivery)

    assert shuffled_with_retries == once_in_order


def test_counts_saturate_at_64_bits(site, tmp_path):
    item = {"hwid": KEYS[2], "first_seen": iso(NOW - 10), "last_seen": iso(NOW - 5), "count": MAX_COUNT - 1,
            "tag_type": None, "atqa": None, "sak": None}
    batches = [("front-door", "unknown-keys", {"batch_id": f"saturate-{n:08d}", "sent_at": iso(NOW), "items": [item]})
               for n in range(3)]

    result = deliver(site, tmp_path / "saturate.sqlite", batches, range(3))

    [row] = result["unknown_keys"]
    assert row[4] == MAX_COUNT
