"""Statistics spool and push: nothing lost through outages and crashes, nothing counted twice.

The receiver is the real one (``python -m receiver serve`` with mutual TLS, via
``tests/receiver_harness.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lockclient.fetch import make_session
from lockclient.push import Pusher, PushError
from lockclient.spool import KEEP_REJECTED, Spool, window_start
from receiver import queries
from tests.receiver_harness import ReceiverSite
from tests.tls_fixtures import Request, ScriptedServer, make_pki, send

ROOT = Path(__file__).resolve().parent.parent
PRECISION = 3600
KNOWN = [f"04:00:00:00:00:{index // 256:02x}:{index % 256:02x}" for index in range(30)]
UNKNOWN = [f"04:ff:00:00:00:{index // 256:02x}:{index % 256:02x}" for index in range(40)]


def status() -> dict:
    return {
        "bundle_version": 1, "bundle_sha256": "ab" * 32, "bundle_expires_at": "2030-01-01T00:00:00Z",
        "clock": "2026-12-04T00:00:00Z", "clock_behind_floor": False, "uptime": 5,
        "reader": {"healthy": True, "last_error": None}, "last_rejected_bundle": None,
    }


@pytest.fixture
def site(tmp_path):
    receiver = ReceiverSite(tmp_path / "receiver", {"front-door": KNOWN}, precision=PRECISION)
    yield receiver
    receiver.stop()


def pusher_for(site: ReceiverSite, spool: Spool, url: str) -> Pusher:
    lock = site.locks["front-door"]
    session = make_session(site.ca_certificate, lock.certificate, lock.private_key)
    return Pusher(session, url, spool, timeout=(2.0, 10.0))


def fill(spool: Spool, now: float) -> None:
    """Three taps per unknown key and one past-window tap per known key."""
    for repeat in range(3):
        for hwid in UNKNOWN:
            spool.record_unknown(hwid, now - 100 + repeat, "Type2Tag", "4400", "00")
    for hwid in KNOWN:
        spool.record_last_seen(hwid, now - 2 * PRECISION, PRECISION)
    spool.record_event("exit-button", now - 50, None)


def test_receiver_down_then_back_drains_exactly(site, tmp_path):
    now = time.time()
    spool = Spool(tmp_path / "spool.sqlite3", batch_size=7)
    fill(spool, now)
    pusher = pusher_for(site, spool, "https://127.0.0.1:9")  # nothing listens there

    with pytest.raises(PushError):
        pusher.push_all(time.time, status)
    pending = spool.sizes()

    pusher.base_url = site.start()
    report = pusher.push_all(time.time, status)

    assert pending["unknown_keys"] + pending["outbox"] == len(UNKNOWN)
    assert report.sent["unknown-keys"] == len(UNKNOWN)
    assert report.sent["last-seen"] == len(KNOWN)
    assert spool.sizes() == {"unknown_keys": 0, "last_seen": 0, "events": 0, "outbox": 0}
    unknown = queries.unknown_keys(site.database)
    assert sorted(row["hwid"] for row in unknown) == sorted(UNKNOWN)
    assert {row["count"] for row in unknown} == {3}
    seen = queries.last_seen(site.database)
    assert sorted(row["hwid"] for row in seen) == sorted(KNOWN)
    assert [event["type"] for event in queries.events(site.database)] == ["exit-button"]


def test_lost_acknowledgement_not_counted_twice(site, tmp_path):
    now = time.time()
    spool = Spool(tmp_path / "spool.sqlite3")
    for _ in range(4):
        spool.record_unknown(UNKNOWN[0], now - 10, "Type2Tag", "4400", "00")
    pusher = pusher_for(site, spool, site.start())
    batch = spool.next_batch("unknown-keys", now)
    # The receiver stores the batch, but the lock never receives the response.
    pusher.session.post(pusher.base_url + "/v1/unknown-keys", data=batch.body,
                        headers={"Content-Type": "application/json"}, timeout=10).raise_for_status()

    report = pusher.push_all(time.time, status)

    assert report.sent["unknown-keys"] == 1
    assert [row["count"] for row in queries.unknown_keys(site.database)] == [4]


def test_receiver_killed_midway_loses_nothing(site, tmp_path):
    now = time.time()
    spool = Spool(tmp_path / "spool.sqlite3", batch_size=5)
    fill(spool, now)
    pusher = pusher_for(site, spool, site.start())
    first = spool.next_batch("unknown-keys", now)
    pusher._deliver(first, type("Report", (), {"sent": {}, "rejected": {}})())
    site.kill()

    with pytest.raises(PushError):
        pusher.push_all(time.time, status)
    pusher.base_url = site.start()
    pusher.push_all(time.time, status)

    unknown = queries.unknown_keys(site.database)
    assert len(unknown) == len(UNKNOWN)
    assert sum(row["count"] for row in unknown) == 3 * len(UNKNOWN)


def test_rejected_batch_quarantined_not_blocking(site, tmp_path, caplog):
    now = time.time()
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.record_last_seen(KNOWN[0], now - 300, 60)  # finer than the lock's 3600 s: always 422
    spool.record_unknown(UNKNOWN[0], now - 100, "Type2Tag", "4400", "00")
    pusher = pusher_for(site, spool, site.start())
    doomed = spool.next_batch("last-seen", now)

    with caplog.at_level("WARNING", logger="lockclient.push"):
        first = pusher.push_all(time.time, status)
    spool.record_last_seen(KNOWN[1], now - 2 * PRECISION, PRECISION)
    second = pusher.push_all(time.time, status)

    assert first.rejected == {"last-seen": 1}
    assert first.sent["unknown-keys"] == 1
    assert second.sent["last-seen"] == 1  # the queue behind the rejected batch moves on
    assert spool.sizes() == {"unknown_keys": 0, "last_seen": 0, "events": 0, "outbox": 0}
    assert spool.dropped() == 1
    assert spool.rejected() == 1
    kept = spool.rejected_batches()
    assert [(entry["batch_id"], entry["status"]) for entry in kept] == [(doomed.batch_id, 422)]
    assert "precision" in kept[0]["error"]
    assert any(doomed.batch_id in record.getMessage() for record in caplog.records
               if record.levelname == "WARNING")
    events = [event for event in queries.events(site.database) if event["type"] == "statistics-rejected"]
    assert len(events) == 1
    assert doomed.batch_id in events[0]["detail"]
    assert [row["hwid"] for row in queries.last_seen(site.database)] == [KNOWN[1]]


def test_batch_from_clock_ahead_sent_later(site, tmp_path):
    now = time.time()
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.record_unknown(UNKNOWN[0], now - 100, "Type2Tag", "4400", "00")
    pusher = pusher_for(site, spool, site.start())

    with pytest.raises(PushError, match="ahead"):
        pusher.push_all(lambda: time.time() + 86400, status)  # the lock's clock is a day ahead
    waiting = spool.next_batch("unknown-keys", time.time())
    report = pusher.push_all(time.time, status)  # NTP put the clock right

    assert json.loads(waiting.body)["sent_at"] > json.loads(waiting.body)["items"][0]["last_seen"]
    assert report.sent["unknown-keys"] == 1
    assert report.rejected == {}
    assert spool.dropped() == 0
    assert [row["hwid"] for row in queries.unknown_keys(site.database)] == [UNKNOWN[0]]


def test_proxy_error_page_keeps_batch(tmp_path):
    pki = make_pki(tmp_path / "pki")
    page = b"<html><body>400 The SSL certificate error</body></html>"  # nginx refusing a certificate
    server = ScriptedServer(pki).start()
    server.routes["/v1/unknown-keys"] = lambda handler, request: send(handler, 400, page, {"Content-Type": "text/html"})
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.record_unknown(UNKNOWN[0], time.time() - 100, None, None, None)
    pusher = Pusher(make_session(pki.ca_cert, pki.client_cert, pki.client_key), server.url(""), spool)
    try:
        with pytest.raises(PushError, match="400"):
            pusher.push_all(time.time, status)
    finally:
        server.stop()

    assert spool.sizes()["outbox"] == 1
    assert spool.dropped() == 0


def test_batch_over_receiver_limit_split_not_lost(site, tmp_path):
    now = time.time()
    spool = Spool(tmp_path / "spool.sqlite3", batch_size=250)  # the receiver takes 100 items per batch
    many = [f"04:ee:00:00:00:{index // 256:02x}:{index % 256:02x}" for index in range(240)]
    for repeat in range(2):
        for hwid in many:
            spool.record_unknown(hwid, now - 100 + repeat, "Type2Tag", "4400", "00")
    pusher = pusher_for(site, spool, site.start())

    report = pusher.push_all(time.time, status)

    assert report.split["unknown-keys"] == 240 + 120  # 240 did not fit, nor did half of them
    assert report.sent["unknown-keys"] == 240
    assert spool.batch_size == 60
    assert spool.dropped() == 0
    unknown = queries.unknown_keys(site.database)
    assert len(unknown) == 240
    assert {row["count"] for row in unknown} == {2}


def test_proxy_size_limit_splits_batch(tmp_path):
    pki = make_pki(tmp_path / "pki")
    page = b"<html><body>413 Request Entity Too Large</body></html>"  # nginx client_max_body_size

    def proxy(handler, request):
        document = json.loads(request.body)
        if len(document["items"]) > 3:
            send(handler, 413, page, {"Content-Type": "text/html"})
        else:
            send(handler, 200, json.dumps({"batch_id": document["batch_id"], "stored": len(document["items"]),
                                           "duplicate": False}).encode(), {"Content-Type": "application/json"})

    server = ScriptedServer(pki).start()
    server.routes["/v1/unknown-keys"] = proxy
    server.routes["/v1/status"] = lambda handler, request: proxy(handler, Request(
        request.method, request.path, request.headers,
        json.dumps({"batch_id": json.loads(request.body)["batch_id"], "items": []}).encode(), None))
    spool = Spool(tmp_path / "spool.sqlite3", batch_size=10)
    for hwid in UNKNOWN[:10]:
        spool.record_unknown(hwid, time.time() - 100, None, None, None)
    pusher = Pusher(make_session(pki.ca_cert, pki.client_cert, pki.client_key), server.url(""), spool)
    try:
        report = pusher.push_all(time.time, status)
    finally:
        server.stop()

    assert report.sent["unknown-keys"] == 10
    assert spool.dropped() == 0
    delivered = [json.loads(request.body) for request in server.requests if request.path == "/v1/unknown-keys"]
    assert sorted(item["hwid"] for body in delivered if len(body["items"]) <= 3 for item in body["items"]) \
        == sorted(UNKNOWN[:10])


def test_quarantine_keeps_newest_counts_all(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite3", batch_size=1)
    for index in range(KEEP_REJECTED + 3):
        spool.record_unknown(UNKNOWN[index], 1_796_400_000 + index, None, None, None)
        batch = spool.next_batch("unknown-keys", 1_796_400_100 + index)
        spool.quarantine(batch, 413, "body: over the limit", 1_796_400_100 + index)

    kept = spool.rejected_batches()
    events = spool.sizes()["events"]
    status_batch = spool.next_batch("status", 1_796_400_200, status)

    assert len(kept) == KEEP_REJECTED
    assert spool.rejected() == KEEP_REJECTED + 3
    assert events == KEEP_REJECTED + 3  # one statistics-rejected event per batch
    record = json.loads(status_batch.body)["status"]
    assert record["spool_dropped"] == KEEP_REJECTED + 3
    assert record["events"][0]["type"] == "statistics-rejected"


def test_last_seen_pushed_only_after_window_ends(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite3")
    tap = 1_796_400_123
    start = window_start(tap, PRECISION)
    spool.record_last_seen(KNOWN[0], tap, PRECISION)
    spool.record_last_seen(KNOWN[0], tap + 60, PRECISION)  # same window: one row

    early = spool.next_batch("last-seen", start + PRECISION - 1)
    due = spool.next_batch("last-seen", start + PRECISION)

    assert early is None
    body = json.loads(due.body)
    assert body["precision"] == PRECISION
    assert body["items"] == [{
        "hwid": KNOWN[0], "window_start": "2026-12-04T16:00:00Z", "window_end": "2026-12-04T17:00:00Z",
    }]
    assert start == 1_796_400_000


def test_outbox_batch_resent_unchanged(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.record_unknown(UNKNOWN[0], 1_796_400_000, None, None, None)

    first = spool.next_batch("unknown-keys", 1_796_400_100)
    spool.record_unknown(UNKNOWN[1], 1_796_400_200, None, None, None)
    again = spool.next_batch("unknown-keys", 1_796_400_300)

    assert again == first
    spool.acknowledge(first)
    following = spool.next_batch("unknown-keys", 1_796_400_400)
    assert following.batch_id != first.batch_id
    assert [item["hwid"] for item in json.loads(following.body)["items"]] == [UNKNOWN[1]]


def test_full_spool_drops_oldest_and_counts(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite3", max_items=10)
    for hour in range(15):
        spool.record_last_seen(KNOWN[0], 1_796_342_400 + hour * PRECISION, PRECISION)

    batch = spool.next_batch("last-seen", 1_796_342_400 + 20 * PRECISION)
    status_batch = spool.next_batch("status", 1_796_342_400 + 20 * PRECISION, status)

    assert spool.dropped() == 5
    starts = [item["window_start"] for item in json.loads(batch.body)["items"]]
    assert starts[0] == "2026-12-04T05:00:00Z"  # hours 0-4 were dropped
    assert len(starts) == 10
    assert json.loads(status_batch.body)["status"]["spool_dropped"] == 5


def test_full_spool_drops_last_seen_before_unknown_keys(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite3", max_items=10)
    for index in range(8):
        spool.record_unknown(UNKNOWN[index], 1_796_342_400 + index, None, None, None)
    for hour in range(4):
        spool.record_last_seen(KNOWN[0], 1_796_342_400 + hour * PRECISION, PRECISION)

    sizes = spool.sizes()

    assert sizes["unknown_keys"] == 8
    assert sizes["last_seen"] == 2
    assert spool.dropped() == 2


CRASHER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from lockclient.spool import Spool
spool = Spool(sys.argv[2])
for index in range(50):
    spool.record_unknown("04:ee:00:00:00:00:%02x" % index, 1_796_400_000 + index, "Type2Tag", None, None)
spool.next_batch("unknown-keys", 1_796_400_100)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_spool_survives_kill_9(tmp_path):
    path = tmp_path / "spool.sqlite3"

    result = subprocess.run([sys.executable, "-c", CRASHER, str(ROOT), str(path)], capture_output=True, timeout=60)
    spool = Spool(path, batch_size=100)

    assert result.returncode == -9
    assert spool.sizes()["outbox"] == 50
    batch = spool.next_batch("unknown-keys", 1_796_400_200)
    assert batch.items == 50
