"""The real nfcpy read path: emulated cards on nfcpy's udp driver, read by the lock's reader loop.

Ports come from 41000-41099 (no names in /etc/services), one per test, so a leftover listener
from one test cannot respond to another.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nfc.clf
import pytest

from lockclient.reader import CardReader, TagRead, describe_tag, short_hwid

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_MODULE = "compiler.nfc_emulator"
TYPE2_UID = "04a23b4c5d6e7f"
TYPE3_IDM = "012e4cd2a1b3c4d5"


class Emulator:
    """A card emulator process; stopping it takes the card off the reader."""

    def __init__(self, port: int, kind: str, identifier: str):
        self.args = [sys.executable, "-m", EMULATOR_MODULE, "--port", str(port), f"--{kind}", identifier]
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


def test_resting_card_of_last_target_reported_once(emulators):
    emulators(41017, "type3", TYPE3_IDM)

    # The FeliCa card responds only to the last of three technologies. On udp each silent one
    # costs a 1 s sense, longer than the debounce, unless the reader stays with the card.
    with ReaderRun(41017, ("106A", "106B", "212F"), debounce=1.0) as run:
        run.wait_for(lambda: run.reader.sightings >= 5)

    assert len(run.taps) == 1


def test_stop_waits_for_at_most_one_sense():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 41018))  # listens where a card would respond, but never responds
    listener.settimeout(20)
    try:
        with ReaderRun(41018, ("106A", "106B", "212F")) as run:
            listener.recv(1024)  # the reader is now waiting for a response to one sense
            run.stop_event.set()
        listener.setblocking(False)
        after_stop = []
        while True:
            try:
                after_stop.append(listener.recv(1024))
            except BlockingIOError:
                break
    finally:
        listener.close()

    assert [frame for frame in after_stop if not frame.startswith(b"RFOFF")] == []


def test_unsupported_technology_skipped(emulators):
    emulators(41019, "type2", TYPE2_UID)

    # nfcpy's udp driver senses Type F at 212 and 424 kbit/s only.
    with ReaderRun(41019, ("106F", "106A")) as run:
        run.wait_for(lambda: run.taps)

    assert run.taps[0].hwid == "04:a2:3b:4c:5d:6e:7f"
    assert run.reader.opened_count == 1
    assert run.reader.healthy


class FakeTag:
    type = "Type2Tag"

    def __init__(self, hwid: str):
        self.identifier = bytes.fromhex(hwid)


def read_cards(cards: list[FakeTag], on_tag, debounce: float = 30.0) -> CardReader:
    """Run a reader whose frontend reports ``cards`` one per connect(), then stop it."""

    class CardsFrontend(FlakyFrontend):
        def connect(self, rdwr, terminate):
            if cards:
                tag = cards.pop(0)
                rdwr["on-connect"](tag)
                return tag
            return super().connect(rdwr, terminate)

    frontend = CardsFrontend([])
    stop = threading.Event()
    reader = CardReader("usb", on_tag, debounce_seconds=debounce, frontend_factory=lambda: frontend)
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while cards and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=5)
    return reader


def test_debounce_is_per_uid():
    taps: list[TagRead] = []

    reader = read_cards([FakeTag(TYPE2_UID), FakeTag("04112233445566")] * 3, taps.append)

    assert reader.sightings == 6
    assert [tap.hwid for tap in taps] == ["04:a2:3b:4c:5d:6e:7f", "04:11:22:33:44:55:66"]


def test_failed_tap_logged_without_full_uid(caplog):
    def failing(tap: TagRead) -> None:
        raise KeyError(tap.hwid)

    with caplog.at_level(logging.INFO, logger="lockclient.reader"):
        read_cards([FakeTag(TYPE2_UID)], failing)

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.INFO]
    assert any("handling tap of 04:…:7f failed: KeyError" in message for message in errors)
    assert not any("04:a2:3b:4c:5d:6e:7f" in message or TYPE2_UID in message for message in errors)


class FlakyFrontend:
    """Fake ContactlessFrontend that replays driver failures reported by nfcpy users."""

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
