"""The lock daemon with its door hardware: a real fetch over mutual TLS, FakeGpio for the
inputs and feedback, the log actuator for the strike, and real signals and sd_notify.

The daemon runs in the main thread (signal handlers need it) while a helper thread taps
cards, presses the exit button and sends SIGHUP and SIGTERM.
"""

from __future__ import annotations

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
from tests.bundle_factory import FOREVER, NOW, Trust
from tests.lock_environment import BUNDLE_PATH, SIGNERS_PATH, write_config
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


class IdleFrontend:
    """An nfcpy frontend stand-in that never sees a card; taps are fed to the daemon directly."""

    def open(self, path):
        return True

    def connect(self, rdwr, terminate):
        while not terminate():
            time.sleep(0.01)
        return None

    def close(self):
        pass


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
    bundle = trust.bundle(keys={MEMBER: FOREVER}, issued_at=NOW - 3600, expires_at=int(time.time()) + 86400,
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
