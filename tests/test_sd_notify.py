"""sd_notify messages, received on a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from lockclient.systemd_notify import Notifier, Watchdog


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def receive(sock) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def nothing_waiting(sock) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def test_ready_stopping_status_delivered(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("bundle version 3") is True
    assert receive(sock) == ["READY=1", "STATUS=bundle version 3"]
    assert notifier.status("reader reopened")
    assert receive(sock) == ["STATUS=reader reopened"]
    assert notifier.stopping()
    assert receive(sock) == ["STOPPING=1"]


def test_abstract_socket_name():
    name = f"doorlock-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == ["READY=1"]
    finally:
        sock.close()


def test_without_systemd_does_nothing():
    notifier = Notifier({})
    assert notifier.enabled is False
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_missing_socket_does_not_raise(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False


def test_full_notify_queue_never_blocks(notify_socket):
    """A receiver that stops reading (systemd busy) fills the socket queue: sending gives up at
    once instead of blocking the caller, which may be the shutdown that locks the strike."""
    path, _ = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    results: list[bool] = []

    def flood():
        results.extend(notifier.watchdog() for _ in range(2000))

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "sd_notify blocked on a full queue"
    assert results[0] is True
    assert results[-1] is False


@pytest.mark.parametrize("environ, seconds", [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({}, None),
])
def test_watchdog_time_from_environment(environ, seconds):
    assert Notifier(environ).watchdog_seconds == seconds


class Ticks:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_watchdog_fed_only_when_both_loops_turn(notify_socket):
    path, sock = notify_socket
    ticks = Ticks()
    watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"}), ticks)
    watchdog.register("reader", max_age=10)
    watchdog.register("fetch", max_age=400)
    assert watchdog.interval() == 10.0

    ticks.now += 5
    assert watchdog.feed() is True
    assert receive(sock) == ["WATCHDOG=1"]

    # The reader loop hangs: the fetch loop alone does not keep the service alive.
    ticks.now += 10
    watchdog.beat("fetch")
    assert watchdog.stale() == ["reader"]
    assert watchdog.feed() is False
    assert nothing_waiting(sock)

    watchdog.beat("reader")
    assert watchdog.feed() is True
    assert receive(sock) == ["WATCHDOG=1"]

    # Now the fetch loop hangs.
    ticks.now += 401
    watchdog.beat("reader")
    assert watchdog.stale() == ["fetch"]
    assert watchdog.feed() is False
    assert nothing_waiting(sock)


def test_watchdog_run_stops_on_event(notify_socket):
    path, sock = notify_socket
    watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}))
    watchdog.register("reader", max_age=60)
    stop = threading.Event()
    thread = threading.Thread(target=watchdog.run, args=(stop,))
    thread.start()
    assert receive(sock) == ["WATCHDOG=1"]
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_watchdog_run_returns_without_systemd_watchdog():
    watchdog = Watchdog(Notifier({}))
    watchdog.run(threading.Event())


def test_watchdog_reads_loop_turn_time(notify_socket):
    path, sock = notify_socket
    ticks = Ticks()
    reader_turn = {"at": ticks.now}
    watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": path}), ticks)
    watchdog.register("reader", max_age=10, last_turn=lambda: reader_turn["at"])
    ticks.now += 9
    reader_turn["at"] = ticks.now
    ticks.now += 9
    assert watchdog.feed() is True
    assert receive(sock) == ["WATCHDOG=1"]
    ticks.now += 2
    assert watchdog.stale() == ["reader"]
    assert watchdog.feed() is False
