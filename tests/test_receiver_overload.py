"""The receiver under more connections than it has file descriptors for.

Each connection, also one that never completes its TLS handshake, costs the receiver a file
descriptor. A client that opens more silent connections than the process may hold must not
leave the receiver stuck or flood its log: it closes idle connections to make room, and a lock
is served again.
"""

from __future__ import annotations

import socket
import time
import uuid
from datetime import datetime, timezone

import pytest

from tests.receiver_harness import ReceiverSite

OPEN_FILES = 64


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture()
def site(tmp_path):
    site = ReceiverSite(tmp_path, {"front-door": []}, threads=4)
    site.start(open_files=OPEN_FILES)
    yield site
    site.stop()


def test_lock_served_after_descriptors_ran_out(site):
    port = int(site.url.rsplit(":", 1)[1])
    now = time.time()
    body = {"batch_id": uuid.uuid4().hex, "sent_at": iso(now), "items": [
        {"hwid": "04:00:00:01", "first_seen": iso(now - 60), "last_seen": iso(now - 30), "count": 1}]}

    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2 * OPEN_FILES)]
    try:
        answer = site.session("front-door").post(f"{site.url}/v1/unknown-keys", json=body, timeout=60)
    finally:
        for sock in silent:
            sock.close()

    assert answer.status_code == 200, answer.text
    assert "cannot accept connections: Too many open files" in site.log()
    assert len(site.log().splitlines()) < 50
