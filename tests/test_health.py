"""Health pings against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lockclient.health import HealthConfigError, HealthPinger, HealthSettings, check_url, parse_health


class Monitor:
    """A healthchecks-like endpoint that records pings and can be made to hang."""

    def __init__(self):
        self.pings: list[tuple[str, str]] = []
        self.arrived = threading.Semaphore(0)
        self.release = threading.Event()
        self.release.set()
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                monitor.pings.append((self.path, body))
                monitor.arrived.release()
                monitor.release.wait(10)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/ping/abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> None:
        for _ in range(count):
            assert self.arrived.acquire(timeout=10), f"only {len(self.pings)} pings arrived"

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def monitor():
    monitor = Monitor()
    yield monitor
    monitor.stop()


class Ticks:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_start_success_fail_paths(monitor):
    pinger = HealthPinger(monitor.url)
    pinger.start()
    pinger.success("bundle version 4")
    pinger.fail("reader: no device at tty:S0:pn532")
    monitor.wait_for(3)
    pinger.close()
    assert monitor.pings == [
        ("/ping/abc/start", ""),
        ("/ping/abc", "bundle version 4"),
        ("/ping/abc/fail", "reader: no device at tty:S0:pn532"),
    ]
    assert pinger.sent == 3


def test_success_rate_limited_but_not_after_fail(monitor):
    ticks = Ticks()
    pinger = HealthPinger(monitor.url, min_interval=60, monotonic=ticks)
    pinger.success()
    ticks.now = 10
    pinger.success()
    ticks.now = 20
    pinger.fail("fetch failed")
    ticks.now = 30
    pinger.success()
    ticks.now = 100
    pinger.success()
    monitor.wait_for(4)
    pinger.close()
    assert [path for path, _ in monitor.pings] == ["/ping/abc", "/ping/abc/fail", "/ping/abc", "/ping/abc"]


def test_hanging_endpoint_never_blocks_caller(monitor):
    monitor.release.clear()
    pinger = HealthPinger(monitor.url, timeout=0.2)
    pinger.fail("first")
    monitor.wait_for(1)
    # The endpoint is still holding the first ping: these calls return at once regardless.
    for number in range(40):
        pinger.fail(f"ping {number}")
    assert not monitor.release.is_set()
    assert pinger.dropped > 0
    monitor.release.set()
    pinger.close()


def test_unreachable_endpoint_counts_failure():
    # A port that was free a moment ago: the connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pinger = HealthPinger(f"http://127.0.0.1:{port}/nothing", timeout=1)
    pinger.start()
    pinger.close(timeout=10)
    assert pinger.failures == 1
    assert pinger.sent == 0


@pytest.mark.parametrize("url", ["", "ftp://example.org/x", "hc-ping.com/uuid", None, "https://"])
def test_invalid_url_rejected(url):
    with pytest.raises(HealthConfigError, match="health.url"):
        check_url(url, "/etc/lockclient/config.toml")


def test_health_settings_from_config():
    settings = parse_health({"url": "https://hc-ping.com/0f3c/", "timeout": 5})
    assert settings == HealthSettings(url="https://hc-ping.com/0f3c", timeout=5.0, min_interval=60.0)
    assert parse_health(None) is None


@pytest.mark.parametrize("table, message", [
    ({}, "health.url must be a URL"),
    ({"url": "https://hc-ping.com/x", "timeout": 0}, "health.timeout: must be a number of seconds"),
    ({"url": "https://hc-ping.com/x", "every": 5}, "health.every: unknown setting"),
    ("https://hc-ping.com/x", "must be a table"),
])
def test_health_settings_rejected(table, message):
    with pytest.raises(HealthConfigError, match=message):
        parse_health(table, "/etc/lockclient/config.toml")
