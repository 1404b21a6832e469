"""The receiver's HTTP API over real mutual TLS: identity, merging, and rejection of bad input."""

from __future__ import annotations

import copy
import json
import socket
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from compiler import pki
from receiver import queries
from tests.receiver_harness import ReceiverSite

KNOWN_KEY = "04:a2:3b:4c:5d:6e:7f"
PRECISION = 3600


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def batch_id() -> str:
    return uuid.uuid4().hex


def unknown_keys_body(*items: dict, sent_at: float | None = None) -> dict:
    return {"batch_id": batch_id(), "sent_at": iso(sent_at or time.time()), "items": list(items)}


def unknown_item(hwid: str, first: float, last: float, count: int = 1) -> dict:
    return {"hwid": hwid, "first_seen": iso(first), "last_seen": iso(last), "count": count,
            "tag_type": "Type2Tag", "atqa": "0044", "sak": "00"}


def last_window_start(now: float | None = None) -> int:
    """Start of the newest window that has already ended."""
    now = now or time.time()
    return int(now) // PRECISION * PRECISION - PRECISION


def last_seen_body(*items: tuple[str, int], precision: int = PRECISION) -> dict:
    return {"batch_id": batch_id(), "sent_at": iso(time.time()), "precision": precision,
            "items": [{"hwid": hwid, "window_start": iso(start), "window_end": iso(start + precision)}
                      for hwid, start in items]}


def status_body(version: int = 1, events: tuple = (), sent_at: float | None = None,
                counters: dict | None = None) -> dict:
    now = sent_at or time.time()
    body = {"batch_id": batch_id(), "sent_at": iso(now), "status": {
        "bundle_version": version, "bundle_sha256": "ab" * 32, "bundle_expires_at": iso(now + 86400),
        "clock": iso(now), "clock_behind_floor": False, "uptime": 12.5,
        "reader": {"healthy": True, "last_error": None}, "last_rejected_bundle": None,
        "spool_dropped": 0, "events": [{"type": kind, "at": iso(now - 10), "detail": None} for kind in events]}}
    if counters is not None:
        body["status"]["counters"] = counters
    return body


def counters(exit_button: int = 0, door_forced: int = 0, door_held_open: int = 0, granted: int = 0,
             denied: int = 0) -> dict:
    return {"exit_button": exit_button, "door_forced": door_forced, "door_held_open": door_held_open,
            "granted": granted, "denied": denied}


def snapshot(database: Path) -> dict[str, list]:
    """Every row of every statistics table: proof that a rejected request wrote nothing."""
    connection = sqlite3.connect(database)
    try:
        tables = ["batches", "unknown_keys", "last_seen", "last_seen_anomalies", "lock_status", "lock_events"]
        return {table: connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in tables}
    finally:
        connection.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> ReceiverSite:
    directory = tmp_path_factory.mktemp("receiver")
    site = ReceiverSite(directory, {"front-door": [KNOWN_KEY], "back-door": [], "cellar": []},
                        max_body_bytes=16384, max_items=20)
    site.start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def front(site) -> requests.Session:
    return site.session("front-door")


@pytest.fixture(scope="module")
def back(site) -> requests.Session:
    return site.session("back-door")


def post(session: requests.Session, site: ReceiverSite, endpoint: str, body) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return session.post(f"{site.url}/v1/{endpoint}", data=data, headers={"Content-Type": "application/json"},
                        timeout=30)


def rows_for(site: ReceiverSite, lock: str, hwid: str) -> list[dict]:
    return [row for row in queries.unknown_keys(site.database) if row["lock"] == lock and row["hwid"] == hwid]


# --- storing and merging ------------------------------------------------------------------------


def test_unknown_keys_merge_counts_and_times(site, front):
    now = time.time()
    first = post(front, site, "unknown-keys", unknown_keys_body(unknown_item("04:00:00:01", now - 500, now - 400, 2)))
    second = post(front, site, "unknown-keys", unknown_keys_body(unknown_item("04:00:00:01", now - 900, now - 100, 3)))

    assert first.status_code == 200, first.text
    assert second.json() == {"batch_id": second.json()["batch_id"], "stored": 1, "duplicate": False}
    [row] = rows_for(site, "front-door", "04:00:00:01")
    assert row["count"] == 5
    assert row["first_seen"] == iso(now - 900)
    assert row["last_seen"] == iso(now - 100)
    assert row["tag_type"] == "Type2Tag"


def test_retried_batch_changes_nothing(site, front):
    now = time.time()
    body = unknown_keys_body(unknown_item("04:00:00:02", now - 60, now - 30, 4))

    answers = [post(front, site, "unknown-keys", body) for _ in range(3)]

    assert [answer.json()["duplicate"] for answer in answers] == [False, True, True]
    assert [answer.json()["stored"] for answer in answers] == [1, 1, 1]
    assert rows_for(site, "front-door", "04:00:00:02")[0]["count"] == 4


def test_retry_with_new_sent_at_is_still_duplicate(site, front):
    now = time.time()
    body = unknown_keys_body(unknown_item("04:00:00:03", now - 60, now - 30), sent_at=now - 5)
    retry = dict(body, sent_at=iso(now))

    post(front, site, "unknown-keys", body)
    answer = post(front, site, "unknown-keys", retry)

    assert answer.json()["duplicate"] is True
    assert rows_for(site, "front-door", "04:00:00:03")[0]["count"] == 1


def test_batch_id_reused_for_other_content_conflicts(site, front):
    now = time.time()
    body = unknown_keys_body(unknown_item("04:00:00:04", now - 60, now - 30))
    other = dict(body, items=[unknown_item("04:00:00:05", now - 60, now - 30)])

    post(front, site, "unknown-keys", body)
    answer = post(front, site, "unknown-keys", other)

    assert answer.status_code == 409
    assert answer.json()["field"] == "batch_id"
    assert rows_for(site, "front-door", "04:00:00:05") == []


def test_last_seen_keeps_later_window(site, front):
    start = last_window_start()
    newer = post(front, site, "last-seen", last_seen_body((KNOWN_KEY, start)))
    older = post(front, site, "last-seen", last_seen_body((KNOWN_KEY, start - 5 * PRECISION)))

    assert newer.status_code == 200, newer.text
    assert older.status_code == 200, older.text
    [row] = [row for row in queries.last_seen(site.database) if row["lock"] == "front-door" and row["hwid"] == KNOWN_KEY]
    assert row["window_start"] == iso(start)
    assert row["window_end"] == iso(start + PRECISION)
    assert row["anomaly"] is False


def test_key_not_in_bundle_recorded_as_anomaly(site, front):
    start = last_window_start()
    answer = post(front, site, "last-seen", last_seen_body(("04:99:99:99", start)))

    assert answer.status_code == 200, answer.text
    [row] = [row for row in queries.last_seen(site.database) if row["hwid"] == "04:99:99:99"]
    assert row["anomaly"] is True
    [anomaly] = [row for row in queries.anomalies(site.database) if row["hwid"] == "04:99:99:99"]
    assert anomaly["lock"] == "front-door"
    assert anomaly["bundle_version"] == 1


def test_coarser_precision_accepted(site, front):
    precision = 2 * PRECISION
    start = (int(time.time()) // precision - 1) * precision

    answer = post(front, site, "last-seen", last_seen_body((KNOWN_KEY, start), precision=precision))

    assert answer.status_code == 200, answer.text


def test_status_latest_kept_and_events_logged(site, front):
    now = time.time()
    older = post(front, site, "status", status_body(version=7, events=("door-forced",), sent_at=now - 20))
    newer = post(front, site, "status", status_body(version=8, events=("exit-button",), sent_at=now - 10))
    late_old = post(front, site, "status", status_body(version=6, sent_at=now - 30))

    assert [older.status_code, newer.status_code, late_old.status_code] == [200, 200, 200]
    [lock] = [row for row in queries.locks(site.database) if row["lock"] == "front-door"]
    assert lock["bundle_version"] == 8
    types = {event["type"] for event in queries.events(site.database, "front-door")}
    assert {"door-forced", "exit-button"} <= types


def test_status_counters_kept_with_latest_status(site, back):
    now = time.time()
    older = post(back, site, "status", status_body(counters=counters(exit_button=3, granted=40), sent_at=now - 20))
    newer = post(back, site, "status", status_body(counters=counters(exit_button=5, door_forced=1, door_held_open=2,
                                                                     granted=41, denied=7), sent_at=now - 10))
    late_old = post(back, site, "status", status_body(counters=counters(exit_button=1), sent_at=now - 30))

    assert [older.status_code, newer.status_code, late_old.status_code] == [200, 200, 200]
    [lock] = [row for row in queries.locks(site.database) if row["lock"] == "back-door"]
    assert lock["counters"] == counters(exit_button=5, door_forced=1, door_held_open=2, granted=41, denied=7)
    assert lock["status"]["counters"] == lock["counters"]


def test_status_without_counters_accepted(site):
    # A lock that runs a lockclient from before the counters.
    site.add_lock("annex")
    try:
        answer = post(site.session("annex"), site, "status", status_body(version=3))
    finally:
        site.remove_lock("annex")

    assert answer.status_code == 200, answer.text
    [lock] = [row for row in queries.locks(site.database) if row["lock"] == "annex"]
    assert lock["bundle_version"] == 3
    assert lock["counters"] is None


def test_locks_compares_running_and_published(site, front):
    post(front, site, "status", status_body(version=1, sent_at=time.time() + 1))

    rows = {row["lock"]: row for row in queries.locks(site.database, site.publish_dir / "manifest.json")}

    assert rows["front-door"]["published_version"] == 1
    assert rows["front-door"]["up_to_date"] is True
    assert rows["cellar"]["last_contact"] is None


def test_clock_behind_accepted_and_offset_recorded(site):
    cellar = site.session("cellar")
    now = time.time()
    body = unknown_keys_body(unknown_item("04:00:00:06", now - 7300, now - 7200), sent_at=now - 7200)

    answer = post(cellar, site, "unknown-keys", body)

    assert answer.status_code == 200, answer.text
    [lock] = [row for row in queries.locks(site.database) if row["lock"] == "cellar"]
    assert -7300 < lock["clock_offset_seconds"] < -7100


# --- identity -----------------------------------------------------------------------------------


def test_lock_cannot_write_another_locks_rows(site, front, back):
    now = time.time()
    claim = unknown_keys_body(unknown_item("04:00:00:07", now - 60, now - 30))
    claim_with_lock = dict(claim, lock="front-door")

    rejected = post(back, site, "unknown-keys", claim_with_lock)
    stored = post(back, site, "unknown-keys", claim)

    assert rejected.status_code == 422
    assert rejected.json()["field"] == "lock"
    assert stored.status_code == 200
    assert rows_for(site, "front-door", "04:00:00:07") == []
    assert len(rows_for(site, "back-door", "04:00:00:07")) == 1


def test_same_batch_id_from_two_locks_stored_twice(site, front, back):
    now = time.time()
    body = unknown_keys_body(unknown_item("04:00:00:08", now - 60, now - 30))

    first = post(front, site, "unknown-keys", body)
    second = post(back, site, "unknown-keys", body)

    assert first.json()["duplicate"] is False
    assert second.json()["duplicate"] is False
    assert len(rows_for(site, "back-door", "04:00:00:08")) == 1


def test_identity_header_ignored_in_tls_mode(site, back):
    escaped = requests.utils.quote(site.locks["front-door"].certificate.read_text())
    now = time.time()
    body = unknown_keys_body(unknown_item("04:00:00:09", now - 60, now - 30))

    answer = back.post(f"{site.url}/v1/unknown-keys", json=body, headers={"X-Doorlock-Client-Cert": escaped})

    assert answer.status_code == 200
    assert rows_for(site, "front-door", "04:00:00:09") == []
    assert len(rows_for(site, "back-door", "04:00:00:09")) == 1


def test_certificate_from_other_ca_refused_at_handshake(site, tmp_path):
    pki.init_ca(tmp_path / "other-ca", name="attacker CA")
    cert, key, _ = pki.issue_lock(tmp_path / "other-ca", "front-door", tmp_path)
    session = site.session(None)
    session.cert = (str(cert), str(key))
    before = snapshot(site.database)

    # With TLS 1.3 the client may see the server's alert as a reset rather than as a TLS error.
    with pytest.raises(requests.exceptions.ConnectionError):
        post(session, site, "status", status_body())

    assert wait_for_log(site, "CERTIFICATE_VERIFY_FAILED")
    assert snapshot(site.database) == before


def test_connection_without_certificate_refused(site):
    with pytest.raises(requests.exceptions.ConnectionError):
        post(site.session(None), site, "status", status_body())

    assert wait_for_log(site, "PEER_DID_NOT_RETURN_A_CERTIFICATE")


def test_silent_connections_hold_no_worker(site):
    """More clients than worker threads connect and send nothing; a lock is still served.

    The receiver closes a silent connection after its socket timeout. Had the silent clients
    occupied the workers, the lock's request would be served only after that, when the server
    had already closed them.
    """
    port = int(site.url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(24)]
    try:
        answer = post(site.session("front-door"), site, "status", status_body())
        still_open = [_open_without_data(sock) for sock in silent]
    finally:
        for sock in silent:
            sock.close()

    assert answer.status_code == 200, answer.text
    assert all(still_open)


def _open_without_data(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


@pytest.mark.parametrize("garbage", [b"GET /v1/health HTTP/1.1\r\nHost: receiver\r\n\r\n", bytes(range(256)) * 4],
                         ids=["plain HTTP", "binary"])
def test_garbage_instead_of_tls_closed_and_logged(site, garbage):
    port = int(site.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(garbage)
        sock.settimeout(30)
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""

    assert b"HTTP/" not in answer
    assert wait_for_log(site, "TLS handshake with 127.0.0.1 failed")
    assert site.session("front-door").get(f"{site.url}/v1/health", timeout=30).status_code == 200


def wait_for_log(site: ReceiverSite, text: str, timeout: float = 10.0) -> bool:
    """Return True once ``text`` appears in the receiver's log (it writes after the client saw the alert)."""
    deadline = time.monotonic() + timeout
    while text not in site.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_disabled_lock_gets_403_and_is_logged(site):
    site.publish(disabled=("cellar",))
    try:
        answer = post(site.session("cellar"), site, "status", status_body())
    finally:
        site.publish()

    assert answer.status_code == 403
    assert answer.json()["field"] == "certificate"
    assert "does not belong to an enabled lock" in site.log()


def test_lock_added_to_manifest_accepted_without_restart(site):
    garage = site.add_lock("garage")
    try:
        answer = post(site.session("garage"), site, "status", status_body())
    finally:
        site.remove_lock("garage")
    removed = post(_session_for(site, garage), site, "status", status_body())

    assert answer.status_code == 200, answer.text
    assert [row["lock"] for row in queries.locks(site.database) if row["lock"] == "garage"] == ["garage"]
    assert removed.status_code == 403
    assert removed.json()["field"] == "certificate"


def _session_for(site: ReceiverSite, identity) -> requests.Session:
    session = site.session(None)
    session.cert = (str(identity.certificate), str(identity.private_key))
    return session


def test_every_rejected_certificate_logged(site):
    site.publish(disabled=("cellar", "back-door"))
    try:
        answers = [post(site.session(lock), site, "status", status_body()) for lock in ("cellar", "back-door")]
    finally:
        site.publish()

    assert [answer.status_code for answer in answers] == [403, 403]
    assert site.locks["cellar"].sha256 in site.log()
    assert site.locks["back-door"].sha256 in site.log()


def test_unknown_path_and_method(site, front):
    wrong_method = front.get(f"{site.url}/v1/status")

    assert front.post(f"{site.url}/v1/nothing", json={}).status_code == 404
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"


# --- bad input ----------------------------------------------------------------------------------


def _bad_unknown_keys() -> list[tuple[str, object, int, str]]:
    now = time.time()
    good = unknown_keys_body(unknown_item("04:0b:ad:01", now - 60, now - 30),
                             unknown_item("04:0b:ad:02", now - 60, now - 30))

    def changed(change) -> dict:
        body = copy.deepcopy(good)
        body["batch_id"] = batch_id()
        change(body)
        return body

    return [
        ("malformed JSON", b'{"batch_id": ', 400, "body"),
        ("NaN constant", b'{"batch_id": NaN}', 400, "body"),
        ("nested too deeply", b'{"batch_id": ' + b"[" * 8000 + b"]" * 8000 + b"}", 400, "body"),
        ("duplicate field", b'{"batch_id": "a", "batch_id": "b"}', 400, "body"),
        ("not an object", [1, 2], 422, "body"),
        ("missing batch_id", changed(lambda b: b.pop("batch_id")), 422, "batch_id"),
        ("short batch_id", changed(lambda b: b.update(batch_id="short")), 422, "batch_id"),
        ("count as string", changed(lambda b: b["items"][1].update(count="3")), 422, "items[1].count"),
        ("count zero", changed(lambda b: b["items"][1].update(count=0)), 422, "items[1].count"),
        ("count with fraction", changed(lambda b: b["items"][1].update(count=2.0)), 422, "items[1].count"),
        ("hwid with newline", changed(lambda b: b["items"][1].update(hwid="04:0b:ad:02\n")), 422, "items[1].hwid"),
        ("unknown item field", changed(lambda b: b["items"][1].update(colour="red")), 422, "items[1].colour"),
        ("upper-case hwid", changed(lambda b: b["items"][1].update(hwid="04:0B:AD:02")), 422, "items[1].hwid"),
        ("impossible date", changed(lambda b: b["items"][1].update(first_seen="2026-13-01T00:00:00Z")),
         422, "items[1].first_seen"),
        ("time without Z", changed(lambda b: b["items"][1].update(first_seen="2026-12-01T00:00:00")),
         422, "items[1].first_seen"),
        ("last before first", changed(lambda b: b["items"][1].update(first_seen=iso(now - 10), last_seen=iso(now - 20))),
         422, "items[1].last_seen"),
        ("last seen in the future", changed(lambda b: b["items"][1].update(last_seen=iso(now + 3600))),
         422, "items[1].last_seen"),
        ("too many items", changed(lambda b: b.update(items=[unknown_item(f"04:0b:ad:{i:02x}", now - 9, now - 8)
                                                             for i in range(21)])), 422, "items"),
        ("oversized body", changed(lambda b: b["items"][1].update(tag_type="x" * 20000)), 413, "body"),
    ]


@pytest.mark.parametrize("case", _bad_unknown_keys(), ids=lambda case: case[0])
def test_bad_unknown_keys_rejected_without_write(site, front, case):
    _, body, status, field = case
    before = snapshot(site.database)

    answer = post(front, site, "unknown-keys", body)

    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field
    assert answer.json()["error"].startswith(field)
    assert snapshot(site.database) == before


def _bad_last_seen() -> list[tuple[str, dict, str]]:
    start = last_window_start()
    now = time.time()

    def changed(change, precision: int = PRECISION) -> dict:
        body = last_seen_body((KNOWN_KEY, start - PRECISION), (KNOWN_KEY, start), precision=precision)
        change(body)
        return body

    return [
        ("precision finer than the lock's", changed(lambda b: None, precision=60), "precision"),
        ("window not aligned", changed(lambda b: b["items"][1].update(window_start=iso(start + 60),
                                                                      window_end=iso(start + 60 + PRECISION))),
         "items[1].window_start"),
        ("window shorter than precision", changed(lambda b: b["items"][1].update(window_end=iso(start + 60))),
         "items[1].window_end"),
        ("window not ended yet", changed(lambda b: b["items"][1].update(
            window_start=iso(int(now) // PRECISION * PRECISION),
            window_end=iso(int(now) // PRECISION * PRECISION + PRECISION))), "items[1].window_end"),
        ("missing precision", changed(lambda b: b.pop("precision")), "precision"),
    ]


@pytest.mark.parametrize("case", _bad_last_seen(), ids=lambda case: case[0])
def test_bad_last_seen_rejected_without_write(site, front, case):
    _, body, field = case
    before = snapshot(site.database)

    answer = post(front, site, "last-seen", body)

    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert snapshot(site.database) == before


def _bad_status() -> list[tuple[str, dict, str]]:
    def changed(change) -> dict:
        body = status_body(events=("door-forced", "exit-button"))
        change(body)
        return body

    return [
        ("reader health missing", changed(lambda b: b["status"]["reader"].pop("healthy")), "status.reader.healthy"),
        ("event type invalid", changed(lambda b: b["status"]["events"][1].update(type="Door Forced!")),
         "status.events[1].type"),
        ("uptime negative", changed(lambda b: b["status"].update(uptime=-1)), "status.uptime"),
        ("version as string", changed(lambda b: b["status"].update(bundle_version="7")), "status.bundle_version"),
        ("event in the future", changed(lambda b: b["status"]["events"][1].update(at=iso(time.time() + 7200))),
         "status.events[1].at"),
        ("counter negative", changed(lambda b: b["status"].update(counters={**counters(), "denied": -1})),
         "status.counters.denied"),
        ("counter with a fraction", changed(lambda b: b["status"].update(counters={**counters(), "granted": 3.0})),
         "status.counters.granted"),
        ("counter unknown", changed(lambda b: b["status"].update(counters={**counters(), "tailgating": 1})),
         "status.counters.tailgating"),
        ("counter missing", changed(lambda b: b["status"].update(counters={"exit_button": 1})),
         "status.counters.door_forced"),
    ]


@pytest.mark.parametrize("case", _bad_status(), ids=lambda case: case[0])
def test_bad_status_rejected_without_write(site, front, case):
    _, body, field = case
    before = snapshot(site.database)

    answer = post(front, site, "status", body)

    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert snapshot(site.database) == before


@pytest.mark.parametrize("chunk_size", [4096, 100_000], ids=["small chunks", "one large chunk"])
def test_chunked_body_far_over_limit_gets_413(site, front, chunk_size):
    """A chunked body (no Content-Length) over four times the limit, where cheroot stops reading.

    The receiver answers 413 and closes the connection with part of the body unread, so the
    client, still sending, may see the connection reset before it reads the answer.
    """
    total = 6 * 16384
    chunks = (b"x" * chunk_size for _ in range(total // chunk_size + 1))

    try:
        answer = front.post(f"{site.url}/v1/status", data=chunks, headers={"Content-Type": "application/json"},
                            timeout=30)
    except requests.exceptions.ConnectionError:
        answer = None

    if answer is not None:
        assert answer.status_code == 413
        assert answer.json()["field"] == "body"
    assert "unexpected error" not in site.log()


def test_rejected_hwid_not_logged(site):
    now = time.time()
    uid = "04:5C:A1:7E:22:90:3B"
    body = unknown_keys_body(unknown_item(uid, now - 60, now - 30))

    answer = post(site.session("cellar"), site, "unknown-keys", body)

    assert answer.status_code == 422
    assert answer.json()["field"] == "items[0].hwid"
    assert wait_for_log(site, "items[0].hwid: not a valid hardware id")
    assert uid not in site.log()


def test_wrong_content_type_rejected(site, front):
    answer = front.post(f"{site.url}/v1/status", data=b"batch_id=x", headers={"Content-Type": "text/plain"})

    assert answer.status_code == 415
    assert answer.json()["field"] == "Content-Type"


def test_sent_at_in_future_rejected_and_offset_recorded(site, back):
    now = time.time()
    body = unknown_keys_body(unknown_item("04:00:00:0a", now - 60, now - 30), sent_at=now + 3600)
    before = snapshot(site.database)

    answer = post(back, site, "unknown-keys", body)

    assert answer.status_code == 422
    assert answer.json()["field"] == "sent_at"
    assert snapshot(site.database) == before
    [lock] = [row for row in queries.locks(site.database) if row["lock"] == "back-door"]
    assert 3500 < lock["clock_offset_seconds"] < 3700


# --- behind a proxy -----------------------------------------------------------------------------


def _raw_request(connect, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """Send one HTTP/1.1 request over a plain socket (TCP or Unix) and return status and JSON."""
    lines = [f"POST {path} HTTP/1.1", "Host: receiver", f"Content-Length: {len(body)}",
             "Content-Type: application/json", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with connect() as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    directory = tmp_path_factory.mktemp("proxied")
    site = ReceiverSite(directory, {"front-door": [KNOWN_KEY]})
    socket_path = directory / "receiver.sock"
    config = site.config_path.read_text()
    config = config.replace('mode = "tls"', 'mode = "proxy"')
    config = config.split("[tls]")[0] + f'[proxy]\nunix_socket = "{socket_path}"\n' + "[data]" + config.split("[data]")[1]
    site.config_path.write_text(config)
    site.start()
    yield site, socket_path
    site.stop()


def test_proxy_header_identifies_lock_on_unix_socket(proxied):
    site, socket_path = proxied
    escaped = requests.utils.quote(site.locks["front-door"].certificate.read_text(), safe="")
    now = time.time()
    body = json.dumps(unknown_keys_body(unknown_item("04:00:00:0b", now - 60, now - 30))).encode()

    def connect():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(socket_path))
        return sock

    status, answer = _raw_request(connect, "/v1/unknown-keys", body, {"X-Doorlock-Client-Cert": escaped})
    missing_status, missing = _raw_request(connect, "/v1/unknown-keys", body, {})

    assert status == 200, answer
    assert len(rows_for(site, "front-door", "04:00:00:0b")) == 1
    assert missing_status == 403
    assert missing["field"] == "certificate"
    assert socket_path.stat().st_mode & 0o777 == 0o660


@pytest.fixture(scope="module")
def proxied_tcp(tmp_path_factory):
    """A receiver behind a proxy on loopback TCP that believes the header only from ::1."""
    directory = tmp_path_factory.mktemp("proxied-tcp")
    site = ReceiverSite(directory, {"front-door": [KNOWN_KEY]})
    config = site.config_path.read_text().replace('mode = "tls"', 'mode = "proxy"')
    config = config.split("[tls]")[0] + '[proxy]\ntrusted_peers = ["::1"]\n' + "[data]" + config.split("[data]")[1]
    site.config_path.write_text(config)
    site.start()
    yield site
    site.stop()


def test_proxy_header_from_untrusted_peer_rejected(proxied_tcp):
    site = proxied_tcp
    port = int(site.url.rsplit(":", 1)[1])
    escaped = requests.utils.quote(site.locks["front-door"].certificate.read_text(), safe="")
    now = time.time()
    body = json.dumps(unknown_keys_body(unknown_item("04:00:00:0c", now - 60, now - 30))).encode()

    status, answer = _raw_request(lambda: socket.create_connection(("127.0.0.1", port)), "/v1/unknown-keys", body,
                                  {"X-Doorlock-Client-Cert": escaped})

    assert status == 403
    assert answer["field"] == "X-Doorlock-Client-Cert"
    assert rows_for(site, "front-door", "04:00:00:0c") == []
