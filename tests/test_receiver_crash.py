"""Crash safety: the receiver is killed with SIGKILL twice under concurrent load.

After each restart the clients retry what was not acknowledged. In the end the stored counts
equal the counts sent, exactly: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone

import requests

from receiver import queries
from tests.receiver_harness import ReceiverSite

LOCKS = [f"door-{number}" for number in range(6)]
BATCHES_PER_LOCK = 30
HWIDS = [f"04:00:00:{number:02x}" for number in range(8)]


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_batches(rng: random.Random) -> list[dict]:
    now = time.time()
    batches = []
    for _ in range(BATCHES_PER_LOCK):
        items = [{"hwid": hwid, "first_seen": iso(now - 120), "last_seen": iso(now - 60),
                  "count": rng.randint(1, 1000), "tag_type": None, "atqa": None, "sak": None}
                 for hwid in rng.sample(HWIDS, 4)]
        batches.append({"batch_id": uuid.uuid4().hex, "sent_at": iso(now), "items": items})
    return batches


class LockClient(threading.Thread):
    """Pushes its batches in order and retries each until the receiver answers 200."""

    def __init__(self, site: ReceiverSite, lock: str, batches: list[dict], acknowledged: Counter,
                 counter_lock: threading.Lock):
        super().__init__(name=f"client-{lock}", daemon=True)
        self.site, self.lock, self.batches = site, lock, batches
        self.acknowledged, self.counter_lock = acknowledged, counter_lock
        self.failures: list[str] = []
        self.retries = 0

    def run(self) -> None:
        session = self.site.session(self.lock)
        for batch in self.batches:
            while True:
                try:
                    answer = session.post(f"{self.site.url}/v1/unknown-keys", json=batch, timeout=10)
                except requests.RequestException:
                    self.retries += 1
                    session.close()
                    time.sleep(0.05)
                    continue
                if answer.status_code != 200:
                    self.failures.append(f"{self.lock}: {answer.status_code} {answer.text}")
                    return
                with self.counter_lock:
                    self.acknowledged["pushes"] += 1
                break


def wait_for(acknowledged: Counter, pushes: int, clients: list[LockClient], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while acknowledged["pushes"] < pushes:
        assert time.monotonic() < deadline, f"only {acknowledged['pushes']} pushes acknowledged"
        assert any(client.is_alive() for client in clients), "every client stopped early"
        time.sleep(0.01)


def test_kill_during_load_loses_and_doubles_nothing(tmp_path):
    site = ReceiverSite(tmp_path, {lock: [] for lock in LOCKS}, threads=8)
    rng = random.Random(20261204)
    sent = {lock: make_batches(rng) for lock in LOCKS}
    acknowledged: Counter = Counter()
    counter_lock = threading.Lock()
    clients = [LockClient(site, lock, sent[lock], acknowledged, counter_lock) for lock in LOCKS]
    total = len(LOCKS) * BATCHES_PER_LOCK

    site.start()
    try:
        for client in clients:
            client.start()
        for fraction in (0.25, 0.6):
            wait_for(acknowledged, int(total * fraction), clients)
            site.kill()
            site.start()
        for client in clients:
            client.join(timeout=180)
    finally:
        site.stop()

    assert [client.failures for client in clients] == [[] for _ in clients]
    assert acknowledged["pushes"] == total
    expected = Counter()
    for lock, batches in sent.items():
        for batch in batches:
            for item in batch["items"]:
                expected[(lock, item["hwid"])] += item["count"]
    stored = Counter({(row["lock"], row["hwid"]): row["count"] for row in queries.unknown_keys(site.database)})
    assert stored == expected
    assert sum(client.retries for client in clients) > 0, "the kills interrupted no request"
