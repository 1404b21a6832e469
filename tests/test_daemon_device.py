"""The lock daemon with its door hardware: a real fetch over mutual TLS, FakeGpio for the
inputs and feedback, the log actuator for the strike, and real signals and sd_notify.

The daemon runs in the main thread (signal handlers need it) while a helper thread taps
cards, presses the exit button and sends SIGHUP and SIGTERM.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
import threading
import time

import pytest

from lockclient.actuator import LogOutput
from lockclient.config import load_config
from lockclient.daemon import LockDaemon
from lockclient.gpio import FakeGpio
from lockclient.reader import TagRead
from lockclient.spool import SPOOL_FILE
from tests.bundle_factory import FOREVER, Trust
from tests.lock_environment import BUNDLE_PATH, SIGNERS_PATH, IdleFrontend, write_config
from tests.tls_fixtures import ScriptedServer, make_pki, static

MEMBER = "04:a2:3b:4c:5d:6e:7f"

DEVICE_CONFIG = """
[door_sensor]
line = 22

[gpio]
exit_button = { line = 27, active_low = true, bias = "pull-up", debounce_ms = 10 }
led_ready = { line = 5 }
led_denied = { line = 13 }
led_open = { line = 19 }
buzzer = { line = 26 }

[door]
held_open_seconds = 30
"""


def wait_for(condition, what: str, seconds: float = 20.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def lock(tmp_path, monkeypatch):
    pki = make_pki(tmp_path)
    trust = Trust()
    server = ScriptedServer(pki).start()
    # Issued an hour ago by the real clock: the span stays within max_bundle_validity_days whenever the tests run.
    bundle = trust.bundle(keys={MEMBER: FOREVER}, issued_at=int(time.time()) - 3600, expires_at=int(time.time()) + 86400,
                          settings={"unlock_seconds": 30})
    server.routes[SIGNERS_PATH] = static(trust.signers(expires_at=int(time.time()) + 86400))
    server.routes[BUNDLE_PATH] = static(bundle)
    path = write_config(tmp_path / "lock.toml", pki, trust, server.url(BUNDLE_PATH), tmp_path / "state")
    # Only SIGHUP may trigger the second fetch in these tests.
    path.write_text(path.read_text().replace("poll_interval = 1\n", "poll_interval = 3600\n") + DEVICE_CONFIG)
    config = load_config(path)

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    output = LogOutput()
    gpio = FakeGpio(list(config.device.lines))
    daemon = LockDaemon(config, frontend_factory=IdleFrontend, output=output, gpio=gpio)
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield daemon, output, gpio, server, notify, config
    for number, handler in previous.items():
        signal.signal(number, handler)
    notify.close()
    server.stop()


def notifications(sock) -> list[str]:
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.extend(sock.recv(4096).decode().split("\n"))
    except BlockingIOError:
        pass
    return messages


def run_with(daemon: LockDaemon, actions) -> tuple[int, list[BaseException]]:
    errors: list[BaseException] = []

    def helper():
        try:
            actions()
        except BaseException as error:  # reported by the test after the daemon stopped
            errors.append(error)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=helper)
    thread.start()
    code = daemon.run()
    thread.join(30)
    return code, errors


def bundle_requests(server) -> int:
    return sum(1 for request in server.requests if request.path == BUNDLE_PATH)


def test_daemon_door_signals_and_notify(lock):
    daemon, output, gpio, server, notify, config = lock

    def actions():
        wait_for(lambda: daemon.bundle is not None, "the first bundle")

        # A granted tap energises the strike through the door controller.
        daemon.handle_tag(TagRead(MEMBER, bytes.fromhex("04a23b4c5d6e7f"), "Type2Tag", "0044", "00", time.time()))
        assert output.active is True
        assert gpio.get("led_open") is True

        # Door opened and closed again: the strike relocks early.
        gpio.inject("door_sensor", True)
        wait_for(lambda: daemon.door.status()["door_open"] is True, "door open")
        gpio.inject("door_sensor", False)
        wait_for(lambda: output.active is False, "early relock")

        # An unknown card: the strike stays locked, the denied LED lights.
        daemon.handle_tag(TagRead("04:99:99:99:99:99:99", bytes(7), "Type2Tag", "0044", "00", time.time()))
        assert output.active is False
        assert gpio.get("led_denied") is True

        # The exit button opens without a card.
        gpio.inject("exit_button", True)
        wait_for(lambda: output.active is True, "exit button unlock")
        gpio.inject("exit_button", False)

        # SIGHUP fetches now, although the poll interval is an hour.
        before = bundle_requests(server)
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: bundle_requests(server) > before, "a fetch after SIGHUP")

        # SIGTERM (sent by run_with) arrives while the strike is energised.
        assert output.active is True

    code, errors = run_with(daemon, actions)
    assert errors == []
    assert code == 0
    assert output.active is False
    assert output.changes[-1][0] is False
    assert all(gpio.get(name) is False for name in ("led_ready", "led_denied", "led_open", "buzzer"))

    sent = notifications(notify)
    assert "READY=1" in sent
    assert "STOPPING=1" in sent
    assert sent.index("READY=1") < sent.index("STOPPING=1")

    with sqlite3.connect(config.state_dir / SPOOL_FILE) as db:
        events = [row[0] for row in db.execute("SELECT type FROM events ORDER BY id")]
    assert "exit-button" in events


def test_daemon_watchdog_fed_while_loops_turn(lock):
    daemon, output, gpio, server, notify, config = lock

    def actions():
        wait_for(lambda: daemon.bundle is not None, "the first bundle")
        # WATCHDOG_USEC is 2 s: the daemon feeds every second while its loops turn.
        wait_for(lambda: "WATCHDOG=1" in notifications(notify), "WATCHDOG=1")

    code, errors = run_with(daemon, actions)
    assert errors == []
    assert code == 0


class StuckFrontend(IdleFrontend):
    """Once armed, a driver call that ignores terminate() for a while, as a wedged PN532 can."""

    def __init__(self):
        self.armed = threading.Event()
        self.stuck = threading.Event()
        self.release = threading.Event()

    def connect(self, rdwr, terminate):
        while not terminate():
            if self.armed.is_set() and not self.release.is_set():
                # Stuck until released, or for 5 s: a shutdown that waits for the reader
                # thread before locking finds it unstuck by then.
                self.stuck.set()
                self.release.wait(5)
                self.release.set()
                return None
            time.sleep(0.01)
        return None


class WatchedStrike(LogOutput):
    """Records whether the reader thread was still stuck when the strike locked."""

    def __init__(self, frontend: StuckFrontend):
        super().__init__()
        self.frontend = frontend
        self.locked_while_reader_stuck: bool | None = None

    def set(self, active: bool) -> None:
        super().set(active)
        if not active and self.locked_while_reader_stuck is None:
            self.locked_while_reader_stuck = not self.frontend.release.is_set()
            self.frontend.release.set()


def test_sigterm_locks_strike_before_waiting_for_stuck_reader(lock):
    _, _, gpio, _, _, config = lock
    frontend = StuckFrontend()
    output = WatchedStrike(frontend)
    daemon = LockDaemon(config, frontend_factory=lambda: frontend, output=output, gpio=gpio)

    def actions():
        wait_for(lambda: daemon.bundle is not None, "the first bundle")
        daemon.handle_tag(TagRead(MEMBER, bytes.fromhex("04a23b4c5d6e7f"), "Type2Tag", "0044", "00", time.time()))
        assert output.active is True
        frontend.armed.set()
        wait_for(frontend.stuck.is_set, "the reader to get stuck")

    code, errors = run_with(daemon, actions)
    assert errors == []
    assert code == 0
    assert output.active is False
    # Shutdown locks the strike first, not after the stuck reader thread's join timeout.
    assert output.locked_while_reader_stuck is True


class SteppedMonotonic:
    """The daemon's monotonic clock, which the test can move forward in steps."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class HangingFrontend(IdleFrontend):
    """Once armed, a driver call that ignores terminate() until the test releases it."""

    def __init__(self):
        self.armed = threading.Event()
        self.stuck = threading.Event()
        self.release = threading.Event()

    def connect(self, rdwr, terminate):
        while not terminate():
            if self.armed.is_set() and not self.release.is_set():
                self.stuck.set()
                self.release.wait(60)
                return None
            time.sleep(0.01)
        return None


def step_clock_past(daemon: LockDaemon, clock: SteppedMonotonic, seconds: float, turning) -> None:
    """Move the clock ``seconds`` forward in 20 s steps (below the door and reader limits of
    30 s and 60 s), each time waiting until the loops in ``turning`` have turned again."""
    moved = 0.0
    while moved < seconds:
        clock.offset += 20.0
        moved += 20.0
        target = clock()
        wait_for(lambda: all(last_turn() >= target for last_turn in turning), "the live loops to turn")


@pytest.fixture
def recorded_feeds(monkeypatch):
    """Every systemd watchdog round of the daemon: (stale loops, whether WATCHDOG=1 went out)."""
    from lockclient.systemd_notify import Watchdog

    feeds: list[tuple[tuple[str, ...], bool]] = []
    original = Watchdog.feed

    def feed(self):
        stale = tuple(self.stale())
        sent = original(self)
        feeds.append((stale, sent))
        return sent

    monkeypatch.setattr(Watchdog, "feed", feed)
    return feeds


def rounds_after(feeds, count: int, rounds: int = 2):
    wait_for(lambda: len(feeds) >= count + rounds, f"{rounds} more watchdog rounds")
    return feeds[count:]


def test_daemon_watchdog_starves_when_fetch_loop_hangs(lock, recorded_feeds):
    _, _, gpio, _, _, config = lock
    # Poll every second: a hung fetch then counts as stale after 1 + 2 * deadline + 60 = 71 s.
    config = dataclasses.replace(config, poll_interval=1.0)
    clock = SteppedMonotonic()
    daemon = LockDaemon(config, frontend_factory=IdleFrontend, output=LogOutput(), gpio=gpio, monotonic=clock)
    hung, release = threading.Event(), threading.Event()

    def actions():
        wait_for(lambda: daemon.bundle is not None, "the first bundle")
        wait_for(lambda: any(sent for _, sent in recorded_feeds), "a first WATCHDOG=1")
        fetch = daemon.updater.run_once

        def hanging_fetch():
            hung.set()
            release.wait(60)
            return fetch()

        daemon.updater.run_once = hanging_fetch
        wait_for(hung.is_set, "the fetch loop to hang")
        step_clock_past(daemon, clock, 80.0, [lambda: daemon.reader.last_turn, lambda: daemon.door.last_turn])

        starved = rounds_after(recorded_feeds, len(recorded_feeds))
        daemon.updater.run_once = fetch
        release.set()
        assert starved and all(stale == ("update",) and not sent for stale, sent in starved)
        wait_for(lambda: recorded_feeds[-1][1], "WATCHDOG=1 again once the fetch loop turns")

    code, errors = run_with(daemon, actions)
    release.set()
    assert errors == []
    assert code == 0


def test_daemon_watchdog_starves_when_reader_hangs(lock, recorded_feeds):
    _, _, gpio, _, _, config = lock
    config = dataclasses.replace(config, poll_interval=1.0)
    clock = SteppedMonotonic()
    frontend = HangingFrontend()
    daemon = LockDaemon(config, frontend_factory=lambda: frontend, output=LogOutput(), gpio=gpio, monotonic=clock)

    def actions():
        wait_for(lambda: daemon.bundle is not None, "the first bundle")
        wait_for(lambda: any(sent for _, sent in recorded_feeds), "a first WATCHDOG=1")
        frontend.armed.set()
        wait_for(frontend.stuck.is_set, "the reader to hang")
        # Past the reader limit of 60 s, short of the 120 s after which the daemon exits.
        step_clock_past(daemon, clock, 80.0, [lambda: daemon._update_turn, lambda: daemon.door.last_turn])

        starved = rounds_after(recorded_feeds, len(recorded_feeds))
        frontend.release.set()
        assert starved and all("reader" in stale and not sent for stale, sent in starved)
        wait_for(lambda: recorded_feeds[-1][1], "WATCHDOG=1 again once the reader turns")

    code, errors = run_with(daemon, actions)
    frontend.release.set()
    assert errors == []
    assert code == 0


def test_daemon_health_pings_start_success_fail(lock):
    from lockclient.health import HealthSettings
    from tests.test_health import Monitor
    from tests.tls_fixtures import status_only

    _, output, gpio, server, _, config = lock
    monitor = Monitor()
    health = HealthSettings(url=monitor.url, timeout=15.0, min_interval=10.0)
    config = dataclasses.replace(config, device=dataclasses.replace(config.device, health=health))
    ahead = [0.0]
    daemon = LockDaemon(config, frontend_factory=IdleFrontend, output=output, gpio=gpio,
                        system_time=lambda: time.time() + ahead[0])

    def fails(word: str) -> bool:
        return any(path == "/ping/abc/fail" and word in body for path, body in list(monitor.pings))

    def actions():
        wait_for(lambda: [path for path, _ in monitor.pings][:2] == ["/ping/abc/start", "/ping/abc"],
                 "the start ping, then a success ping after the first fetch")

        # Fetching fails while the monitoring endpoint hangs on the fail ping: a tap is still
        # decided and opens at once.
        monitor.release.clear()
        arrived = len(monitor.pings)
        served = server.routes[BUNDLE_PATH]
        server.routes[BUNDLE_PATH] = status_only(500)
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: len(monitor.pings) > arrived, "a ping the endpoint holds")
        daemon.handle_tag(TagRead(MEMBER, bytes.fromhex("04a23b4c5d6e7f"), "Type2Tag", "0044", "00", time.time()))
        assert output.active is True
        assert not monitor.release.is_set()
        monitor.release.set()
        wait_for(lambda: fails("bundle fetch failed"), "a fail ping for the failed fetch")

        server.routes[BUNDLE_PATH] = served
        wait_for(lambda: monitor.pings[-1][0] == "/ping/abc", "a success ping once fetching works again")

        ahead[0] = 2 * 86400  # the bundle has expired by then
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: fails("expired"), "a fail ping for the expired bundle")

    try:
        code, errors = run_with(daemon, actions)
    finally:
        monitor.stop()
    assert errors == []
    assert code == 0
