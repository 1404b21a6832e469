"""The real nfcpy read path: emulated cards on nfcpy's udp driver, read by the lock's reader loop.

Ports come from 41000-41099 (no names in /etc/services), one per test, so a leftover listener
from one test cannot answer another.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import nfc.clf
import pytest

from lockclient.reader import CardReader, TagRead, describe_tag, short_hwid

ROOT = Path(__file__).resolve().parent.parent
EMULATOR = ROOT / "tests" / "nfc_emulator.py"
TYPE2_UID = "04a23b4c5d6e7f"
TYPE3_IDM = "012e4cd2a1b3c4d5"


class Emulator:
    """A card emulator process; stopping it takes the card off the reader."""

    def __init__(self, port: int, kind: str, identifier: str):
        self.args = [sys.executable, str(EMULATOR), "--port", str(port), f"--{kind}", identifier]
        self.process: subprocess.Popen | None = None

    def start(self) -> Emulator:
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.process.stdout.readline()
        assert line.strip() == "ready", self.process.stderr.read()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def emulators():
    started: list[Emulator] = []

    def start(port: int, kind: str, identifier: str) -> Emulator:
        emulator = Emulator(port, kind, identifier).start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


class ReaderRun:
    """Run a CardReader in a thread and collect its taps."""

    def __init__(self, port: int, targets: tuple[str, ...], debounce: float = 1.0, on_tag=None):
        self.taps: list[TagRead] = []
        self.stop_event = threading.Event()
        self.reader = CardReader(
            f"udp:127.0.0.1:{port}", on_tag or self.taps.append, targets=targets, debounce_seconds=debounce,
        )
        self.thread = threading.Thread(target=self.reader.run, args=(self.stop_event,), daemon=True)

    def __enter__(self) -> ReaderRun:
        self.thread.start()
        return self

    def wait_for(self, condition, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "reader loop did not stop"


def test_type2_seven_byte_uid_read(emulators):
    emulators(41010, "type2", TYPE2_UID)

    with ReaderRun(41010, ("106A",)) as run:
        run.wait_for(lambda: run.taps)

    tap = run.taps[0]
    assert tap.hwid == "04:a2:3b:4c:5d:6e:7f"
    assert tap.tag_type == "Type2Tag"
    assert tap.atqa == "4400"
    assert tap.sak == "00"


def test_type3_idm_read(emulators):
    emulators(41011, "type3", TYPE3_IDM)

    with ReaderRun(41011, ("212F",)) as run:
        run.wait_for(lambda: run.taps)

    tap = run.taps[0]
    assert tap.hwid == "01:2e:4c:d2:a1:b3:c4:d5"
    assert tap.tag_type == "Type3Tag"
    assert tap.atqa is None
    assert tap.sak is None


def test_resting_card_reported_once(emulators):
    emulators(41012, "type3", TYPE3_IDM)

    with ReaderRun(41012, ("212F",), debounce=30.0) as run:
        run.wait_for(lambda: run.reader.sightings >= 5)

    assert len(run.taps) == 1


def test_card_taken_away_and_back_read_again(emulators):
    first = emulators(41013, "type3", TYPE3_IDM)

    with ReaderRun(41013, ("212F",), debounce=0.5) as run:
        run.wait_for(lambda: run.taps)
        first.stop()
        time.sleep(1.5)
        emulators(41013, "type3", TYPE3_IDM)
        run.wait_for(lambda: len(run.taps) >= 2)

    assert [tap.hwid for tap in run.taps[:2]] == ["01:2e:4c:d2:a1:b3:c4:d5"] * 2


def test_error_in_tap_handler_does_not_stop_reader(emulators):
    emulators(41014, "type3", TYPE3_IDM)
    handled: list[TagRead] = []

    def flaky(tap: TagRead) -> None:
        handled.append(tap)
        if len(handled) == 1:
            raise RuntimeError("bug in the decision path")

    with ReaderRun(41014, ("212F",), debounce=0.0, on_tag=flaky) as run:
        run.wait_for(lambda: len(handled) >= 2)

    assert run.reader.healthy


def test_emulator_listens_on_loopback_only(emulators):
    emulators(41015, "type2", TYPE2_UID)

    with ReaderRun(41015, ("106A",)) as run:
        run.wait_for(lambda: run.taps)
        bound = Path("/proc/net/udp").read_text().splitlines()[1:]

    listeners = [line.split()[1] for line in bound if line.split()[1].endswith(f":{41015:04X}")]
    assert listeners, "emulator socket not found"
    assert all(address.startswith("0100007F:") for address in listeners)


class FlakyFrontend:
    """Stands in for ContactlessFrontend to replay driver failures nfcpy users report."""

    def __init__(self, script: list):
        self.script = script
        self.closed = 0

    def open(self, path):
        step = self.script.pop(0) if self.script else "wait"
        if step == "open-fails":
            raise OSError(19, "No such device")
        if step == "not-found":
            return False
        self.pending = step
        return True

    def connect(self, rdwr, terminate):
        step, self.pending = self.pending, self.script.pop(0) if self.script else "wait"
        if step == "connect-false":
            return False
        if step == "tag-error":
            raise nfc.clf.CommunicationError("RECEIVE_ERROR")
        while not terminate():
            time.sleep(0.01)
        return None

    def close(self):
        self.closed += 1


def test_open_failures_and_io_errors_reopened():
    frontend = FlakyFrontend(["open-fails", "not-found", "connect-false", "tag-error", "wait", "wait"])
    stop = threading.Event()
    reader = CardReader("usb", lambda tap: None, frontend_factory=lambda: frontend,
                        reopen_initial=0.01, reopen_max=0.02)
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while frontend.script and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    healthy_while_running = reader.healthy
    stop.set()
    thread.join(timeout=5)

    assert not thread.is_alive()
    assert healthy_while_running
    assert reader.opened_count == 2  # reopened after connect() returned False
    assert frontend.closed >= 2  # closed after each failure and at the stop


def test_ten_byte_uid_formatted_canonically():
    class Target:
        sens_res = bytes.fromhex("4400")
        sel_res = bytes.fromhex("20")

    class Tag:
        identifier = bytes.fromhex("04a23b4c5d6e7f8091a2")
        target = Target()
        type = "Type4Tag"

    tap = describe_tag(Tag())

    assert tap.hwid == "04:a2:3b:4c:5d:6e:7f:80:91:a2"
    assert tap.sak == "20"


def test_short_hwid_hides_middle_bytes():
    assert short_hwid("04:a2:3b:4c:5d:6e:7f") == "04:…:7f"
