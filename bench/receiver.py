"""Benchmark the receiver: N simulated locks push batches over mutual TLS on loopback.

The receiver runs as its own process (``python -m receiver serve``), exactly as deployed in
its embedded TLS mode, with a fresh SQLite database. Each simulated lock is a thread with its
own client certificate and one keep-alive HTTPS connection. It pushes an unknown-keys batch
of ``--items`` records every ``--interval`` seconds. This is an open loop: a slow receiver
does not slow the offered load down, so the latency includes queueing. ``--interval 0``
pushes back to back (closed loop) to find the maximum throughput.

Reported: pushes/s and records/s acknowledged with 200, the latency of each push from
sending the request to reading the whole answer (p50, p99, max; all pushes, and only those
on an already open connection, without the TLS handshake), and the receiver's CPU time
per push.

Usage: .venv/bin/python bench/receiver.py [--locks 200] [--items 10] [--interval 1.0]
                                          [--duration 20] [--threads 16] [--clients 4] [--reconnect]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.receiver_harness import ReceiverSite  # noqa: E402  (certificates, manifest, process)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SimulatedLock(threading.Thread):
    def __init__(self, site: ReceiverSite, name: str, items: int, interval: float, start_at: float, stop_at: float,
                 reconnect: bool):
        super().__init__(name=name, daemon=True)
        self.site, self.lock = site, name
        self.items, self.interval, self.reconnect = items, interval, reconnect
        self.start_at, self.stop_at = start_at, stop_at
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.rng = random.Random(name)

    def body(self) -> bytes:
        now = time.time()
        items = [{"hwid": f"04:{self.rng.randrange(1 << 24):06x}"[:2] + "".join(
                      f":{byte:02x}" for byte in self.rng.randbytes(6)),
                  "first_seen": iso(now - 300), "last_seen": iso(now - 10), "count": self.rng.randint(1, 5),
                  "tag_type": "Type2Tag", "atqa": "0044", "sak": "00"} for _ in range(self.items)]
        return json.dumps({"batch_id": uuid.uuid4().hex, "sent_at": iso(now), "items": items}).encode()

    def run(self) -> None:
        host, port = self.site.url.removeprefix("https://").rsplit(":", 1)
        connection = http.client.HTTPSConnection(host, int(port), context=self.site.ssl_context(self.lock), timeout=30)
        # Spread the first pushes over one interval, as real locks are not synchronised.
        next_push = self.start_at + self.rng.random() * self.interval
        while True:
            if self.interval:
                delay = next_push - time.time()
                if delay > 0:
                    time.sleep(delay)
            if time.time() >= self.stop_at:
                break
            body = self.body()
            # http.client connects (TLS handshake included) when it has no open socket.
            first = connection.sock is None
            sent = time.perf_counter()
            try:
                connection.request("POST", "/v1/unknown-keys", body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                payload = answer.read()
            except (OSError, http.client.HTTPException) as error:
                self.errors.append(repr(error))
                connection.close()
                continue
            elapsed = time.perf_counter() - sent
            if answer.status != 200:
                self.errors.append(f"{answer.status} {payload[:200]!r}")
            else:
                self.latencies.append((elapsed, first))
            if self.reconnect:
                connection.close()
            next_push += self.interval
        connection.close()


def percentile_ms(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 1)


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def drive_locks(site: ReceiverSite, names: list[str], arguments, start_at: float, stop_at: float, results) -> None:
    """Run one client process: a thread per simulated lock; put (latencies, errors) on ``results``."""
    locks = [SimulatedLock(site, name, arguments.items, arguments.interval, start_at, stop_at, arguments.reconnect)
             for name in names]
    for lock in locks:
        lock.start()
    for lock in locks:
        lock.join()
    results.put(([latency for lock in locks for latency in lock.latencies],
                 [error for lock in locks for error in lock.errors]))


def run(arguments) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        names = [f"lock-{number:04d}" for number in range(arguments.locks)]
        site = ReceiverSite(Path(directory), {name: [] for name in names}, threads=arguments.threads,
                            max_items=max(100, arguments.items), max_body_bytes=1024 * 1024)
        site.start()
        try:
            # The simulated locks run in several processes, so that the load generator's own
            # Python (one interpreter lock per process) does not limit the offered load.
            context = multiprocessing.get_context("fork")
            results = context.Queue()
            idle_cpu = process_cpu_seconds(site.process.pid)
            start_at = time.time() + 1.0
            stop_at = start_at + arguments.duration
            workers = [context.Process(target=drive_locks, args=(site, names[index::arguments.clients], arguments,
                                                                 start_at, stop_at, results))
                       for index in range(arguments.clients)]
            for worker in workers:
                worker.start()
            collected = [results.get() for _ in workers]
            for worker in workers:
                worker.join()
            user, system = (after - before for after, before in zip(process_cpu_seconds(site.process.pid), idle_cpu))
            database_size = site.database.stat().st_size
        finally:
            site.stop()

    latencies = sorted(latency for part, _ in collected for latency, _ in part)
    reused = sorted(latency for part, _ in collected for latency, first in part if not first)
    errors = [error for _, part in collected for error in part]
    elapsed = arguments.duration
    pushes = len(latencies)
    return {
        "locks": arguments.locks, "items_per_push": arguments.items, "interval_s": arguments.interval,
        "duration_s": elapsed, "server_threads": arguments.threads, "client_processes": arguments.clients,
        "new_connection_per_push": arguments.reconnect,
        "pushes": pushes, "errors": len(errors), "first_errors": errors[:3],
        "pushes_per_s": round(pushes / elapsed, 1),
        "records_per_s": round(pushes * arguments.items / elapsed, 1),
        "latency_p50_ms": percentile_ms(latencies, 0.5),
        "latency_p99_ms": percentile_ms(latencies, 0.99),
        "latency_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        "open_connection_latency_p50_ms": percentile_ms(reused, 0.5),
        "open_connection_latency_p99_ms": percentile_ms(reused, 0.99),
        "server_cpu_user_s": round(user, 2),
        "server_cpu_system_s": round(system, 2),
        "server_cpu_ms_per_push": round(1000 * (user + system) / pushes, 2) if pushes else None,
        "database_bytes": database_size,
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locks", type=int, default=200, help="simulated locks (threads)")
    parser.add_argument("--items", type=int, default=10, help="records per push")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a lock's pushes; 0 = back to back")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--threads", type=int, default=16, help="receiver worker threads")
    parser.add_argument("--reconnect", action="store_true",
                        help="open a new connection (and TLS handshake) for every push, as locks that push "
                             "less often than the receiver's 10 s keep-alive timeout do")
    parser.add_argument("--clients", type=int, default=4, help="client processes the simulated locks are spread over")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
