"""Door controller scenarios, driven through FakeGpio and a fake clock (no sleeps)."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime, time as local_time
from zoneinfo import ZoneInfo

import pytest

from lockclient.bundle import Bundle, decide
from lockclient.door import (
    DoorConfigError, DoorController, DoorSettings, GpioStrike, parse_door_settings, parse_local_time,
)
from lockclient.feedback import Feedback
from lockclient.gpio import FakeClock, FakeGpio, FunctionClock, LineConfig

# 2026-12-04 18:00 in Amsterdam (UTC+1) is 17:00 UTC.
START = datetime(2026, 12, 4, 17, 0, tzinfo=ZoneInfo("UTC")).timestamp()
HOUR = 3600

MEMBER = "04:a2:3b:4c:5d:6e:7f"
OFFICE_KEY = "04:10:20:30:40:50:60"
STRANGER = "04:99:99:99:99:99:99"
BREAK_GLASS = "04:11:22:33:44:55:66"

LINES = [
    LineConfig("strike", "/dev/gpiochip0", 17, output=True),
    LineConfig("exit_button", "/dev/gpiochip0", 27, output=False, active_low=True, bias="pull-up",
               debounce_seconds=0.02),
    LineConfig("door_sensor", "/dev/gpiochip0", 22, output=False, debounce_seconds=0.05),
    LineConfig("office_button", "/dev/gpiochip0", 23, output=False, debounce_seconds=0.02),
    LineConfig("led_ready", "/dev/gpiochip0", 5, output=True),
    LineConfig("led_denied", "/dev/gpiochip0", 6, output=True),
    LineConfig("led_open", "/dev/gpiochip0", 13, output=True),
    LineConfig("buzzer", "/dev/gpiochip0", 19, output=True),
]


def make_bundle(*, expires_in: float = 7 * 24 * HOUR, lockdown: bool = False,
                office_until: float = START + 6 * HOUR, office_keys=(OFFICE_KEY,),
                unlock_seconds: float = 5) -> Bundle:
    intervals = [
        [int(START - HOUR), int(START + 7 * 24 * HOUR)],    # members: all week
        [int(START - HOUR), int(office_until)],             # office mode: until office_until
    ]
    return Bundle(
        lock="front-door", version=1, issued_at=int(START - HOUR), expires_at=int(START + expires_in),
        source_commit=None,
        settings={"timezone": "Europe/Amsterdam", "unlock_seconds": unlock_seconds, "lockdown": lockdown},
        intervals=intervals, keys={MEMBER: 0, OFFICE_KEY: 0},
        office_mode={key: 1 for key in office_keys}, break_glass=frozenset({BREAK_GLASS}),
        sha256="0" * 64,
    )


class Door:
    """A controller wired to fakes, with helpers that read like the scenario."""

    def __init__(self, settings: DoorSettings = DoorSettings(), bundle: Bundle | None = None):
        self.clock = FakeClock(wall=START)
        self.gpio = FakeGpio(LINES, self.clock)
        self.feedback = Feedback(self.gpio, self.clock)
        self.controller = DoorController(
            GpioStrike(self.gpio), self.clock, settings, gpio=self.gpio, input_lines=LINES,
            feedback=self.feedback,
        )
        self.bundle = bundle or make_bundle()
        self.controller.set_bundle(self.bundle)

    def advance(self, seconds: float) -> None:
        """Move time forward, waking at each deadline the controller asks for, as the daemon does."""
        end = self.clock.monotonic() + seconds
        while True:
            self.controller.handle_edges(self.gpio.wait_edges(0))
            now = self.clock.monotonic()
            if now >= end - 1e-9:
                return
            deadline = self.controller.poll()
            step = min(end - now, 60.0)
            if deadline is not None and deadline > now:
                step = min(step, deadline - now + 1e-6)
            self.clock.advance(step)

    def tap(self, hwid: str) -> None:
        decision = decide(self.bundle, hwid, self.clock.time())
        self.controller.tap(hwid, decision)

    def new_bundle(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.controller.set_bundle(bundle)

    def press_exit(self) -> None:
        self.gpio.inject("exit_button", True)
        self.advance(0.1)
        self.gpio.inject("exit_button", False)
        self.advance(0.1)

    def open_door(self) -> None:
        self.gpio.inject("door_sensor", True)
        self.advance(0.1)

    def close_door(self) -> None:
        self.gpio.inject("door_sensor", False)
        self.advance(0.1)

    @property
    def strike(self) -> bool:
        return self.gpio.get("strike")

    def event_types(self) -> list[str]:
        return [event["type"] for event in self.controller.drain_events()]


def test_granted_tap_unlocks_for_unlock_seconds():
    door = Door()
    door.tap(MEMBER)
    assert door.strike is True
    door.advance(4.9)
    assert door.strike is True
    door.advance(0.2)
    assert door.strike is False
    assert door.gpio.history("strike") == [True, False]


@pytest.mark.parametrize("hwid, bundle", [
    (STRANGER, make_bundle()),
    (MEMBER, make_bundle(lockdown=True)),
    (MEMBER, make_bundle(expires_in=-60)),
])
def test_denied_tap_never_energises_strike(hwid, bundle):
    door = Door(bundle=bundle)
    door.tap(hwid)
    door.advance(1)
    door.tap(hwid)
    door.advance(10)
    assert door.gpio.history("strike") == []
    assert door.gpio.history("led_denied")[0] is True


def test_exit_button_during_denied_tap_opens():
    door = Door()
    door.tap(STRANGER)
    assert door.strike is False
    door.press_exit()
    assert door.strike is True
    assert door.event_types() == ["exit-button"]
    assert door.controller.counters.exit_button == 1
    # The denied tap's feedback still plays out; the exit unlock is not cut short by it.
    assert door.gpio.history("led_denied") == [True]
    door.advance(6)
    assert door.strike is False


def test_exit_button_bounce_counts_once():
    door = Door()
    for _ in range(5):
        door.gpio.inject("exit_button", True)
        door.advance(0.005)
        door.gpio.inject("exit_button", False)
        door.advance(0.005)
    door.gpio.inject("exit_button", True)
    door.advance(0.1)
    assert door.controller.counters.exit_button == 1
    assert door.strike is True


def test_exit_button_event_format():
    door = Door()
    door.press_exit()
    events = door.controller.drain_events()
    assert len(events) == 1
    assert events[0]["type"] == "exit-button"
    assert events[0]["at"].endswith("Z")
    assert events[0]["detail"] is None


def test_door_closed_before_unlock_ends_relocks():
    door = Door()
    door.tap(MEMBER)
    door.advance(1)
    door.open_door()
    assert door.strike is True
    door.advance(1)
    door.close_door()
    assert door.strike is False
    assert door.event_types() == []


def test_door_open_at_unlock_end_is_not_forced():
    door = Door()
    door.tap(MEMBER)
    door.advance(4)
    door.open_door()
    door.advance(2)
    assert door.strike is False
    door.close_door()
    assert door.event_types() == []


def test_door_held_open_raises_event_once():
    door = Door(DoorSettings(held_open_seconds=30))
    door.tap(MEMBER)
    door.advance(1)
    door.open_door()
    door.advance(29)
    assert door.event_types() == []
    door.advance(2)
    door.advance(60)
    events = door.controller.drain_events()
    assert [event["type"] for event in events] == ["door-held-open"]
    assert "30 s" in events[0]["detail"]
    door.close_door()
    assert door.controller.counters.door_held_open == 1


def test_door_opened_without_grant_is_forced():
    door = Door()
    door.open_door()
    assert door.event_types() == ["door-forced"]
    assert door.strike is False
    assert door.controller.counters.door_forced == 1


def test_status_counts_taps_and_door_events():
    door = Door(DoorSettings(held_open_seconds=30))
    door.tap(MEMBER)
    door.tap(BREAK_GLASS)
    door.tap(STRANGER)
    door.advance(10)
    door.press_exit()
    door.press_exit()
    door.advance(10)
    door.open_door()  # forced: the strike relocked long ago
    door.advance(31)  # ... and then held open
    door.close_door()

    assert door.controller.counts() == {
        "exit_button": 2, "door_forced": 1, "door_held_open": 1, "granted": 2, "denied": 1,
    }


def test_office_mode_gesture_counts_each_tap_granted():
    door = Door()
    door.tap(OFFICE_KEY)
    door.tap(OFFICE_KEY)

    assert door.controller.office_mode
    assert door.controller.counts()["granted"] == 2


def test_counts_start_at_zero():
    assert Door().controller.counts() == dict.fromkeys(
        ("exit_button", "door_forced", "door_held_open", "granted", "denied"), 0)


def test_door_pushed_just_after_relock_is_not_forced():
    door = Door(DoorSettings(forced_grace_seconds=2))
    door.tap(MEMBER)
    door.advance(5.5)
    assert door.strike is False
    door.open_door()
    assert door.event_types() == []


def test_door_opened_long_after_relock_is_forced():
    door = Door(DoorSettings(forced_grace_seconds=2))
    door.tap(MEMBER)
    door.advance(10)
    door.open_door()
    assert door.event_types() == ["door-forced"]


def double_tap(door: Door, hwid: str) -> None:
    door.tap(hwid)
    door.advance(1)
    door.tap(hwid)


def test_office_mode_double_tap_holds_open_until_toggled():
    door = Door()
    double_tap(door, OFFICE_KEY)
    assert door.controller.office_mode
    door.advance(600)
    assert door.strike is True
    door.advance(5)
    double_tap(door, OFFICE_KEY)
    assert not door.controller.office_mode
    door.advance(6)
    assert door.strike is False
    assert door.event_types() == ["office-mode-on", "office-mode-off"]


def test_double_tap_without_office_permission_is_ordinary_grant():
    door = Door()
    double_tap(door, MEMBER)
    assert not door.controller.office_mode
    door.advance(6)
    assert door.strike is False


def test_office_mode_ends_at_end_of_key_interval():
    door = Door(bundle=make_bundle(office_until=START + 2 * HOUR))
    double_tap(door, OFFICE_KEY)
    assert door.controller.office_mode
    door.advance(2 * HOUR - 10)
    assert door.strike is True
    door.advance(20)
    assert door.strike is False
    events = door.controller.drain_events()
    assert [event["type"] for event in events] == ["office-mode-on", "office-mode-off"]
    assert events[1]["detail"] == "end of the key's office-mode interval"


def test_office_mode_ends_at_local_end_time():
    # 18:00 in Amsterdam now; the configured end 19:30 comes before the interval end (23:00).
    door = Door(DoorSettings(office_end_local=local_time(19, 30)))
    double_tap(door, OFFICE_KEY)
    door.advance(1.5 * HOUR - 10)
    assert door.strike is True
    door.advance(20)
    assert door.strike is False
    events = door.controller.drain_events()
    assert events[-1]["type"] == "office-mode-off"
    assert events[-1]["at"] == "2026-12-04T18:30:00Z"
    assert events[-1]["detail"] == "local end time 19:30"


def test_office_mode_started_then_bundle_expires():
    door = Door(bundle=make_bundle(expires_in=HOUR, office_until=START + 6 * HOUR))
    double_tap(door, OFFICE_KEY)
    assert door.controller.office_mode
    door.advance(HOUR + 1)
    assert not door.controller.office_mode
    assert door.strike is False
    events = door.controller.drain_events()
    assert [event["type"] for event in events] == ["office-mode-on", "office-mode-off"]
    assert events[1]["detail"] == "bundle expired"


def test_lockdown_fetched_during_office_mode_ends_it():
    door = Door()
    double_tap(door, OFFICE_KEY)
    door.advance(60)
    assert door.strike is True
    door.new_bundle(dataclasses.replace(make_bundle(lockdown=True), version=2))
    assert not door.controller.office_mode
    assert door.strike is False
    events = door.controller.drain_events()
    assert events[-1]["type"] == "office-mode-off"
    assert events[-1]["detail"] == "lockdown"
    # In lockdown the office key opens nothing; the break-glass key still opens.
    double_tap(door, OFFICE_KEY)
    assert door.strike is False
    door.tap(BREAK_GLASS)
    assert door.strike is True
    assert not door.controller.office_mode


def test_office_mode_revoked_by_new_bundle():
    door = Door()
    double_tap(door, OFFICE_KEY)
    door.new_bundle(dataclasses.replace(make_bundle(office_keys=()), version=2))
    assert not door.controller.office_mode
    assert door.controller.drain_events()[-1]["detail"] == "key no longer allowed office mode"


def test_office_mode_with_button_gesture():
    door = Door(DoorSettings(office_toggle="button"))
    double_tap(door, OFFICE_KEY)
    assert not door.controller.office_mode
    door.gpio.inject("office_button", True)
    door.advance(0.1)
    door.gpio.inject("office_button", False)
    door.advance(2)
    door.tap(OFFICE_KEY)
    assert door.controller.office_mode


def test_door_open_during_office_mode_is_not_held_open():
    door = Door(DoorSettings(held_open_seconds=30))
    double_tap(door, OFFICE_KEY)
    door.open_door()
    door.advance(300)
    assert door.event_types() == ["office-mode-on"]
    double_tap(door, OFFICE_KEY)
    door.advance(31)
    assert door.event_types() == ["office-mode-off", "door-held-open"]


def test_shutdown_while_energised_ends_locked():
    door = Door()
    door.tap(MEMBER)
    assert door.strike is True
    door.controller.shutdown()
    assert door.strike is False
    assert all(door.gpio.get(name) is False for name in ("led_ready", "led_denied", "led_open", "buzzer"))
    door.tap(MEMBER)
    door.press_exit()
    assert door.strike is False


def test_shutdown_during_office_mode_ends_locked():
    door = Door()
    double_tap(door, OFFICE_KEY)
    door.controller.shutdown()
    assert door.strike is False
    assert door.event_types()[-1] == "office-mode-off"


def test_open_led_follows_strike():
    door = Door()
    door.tap(MEMBER)
    assert door.gpio.get("led_open") is True
    door.advance(6)
    assert door.gpio.get("led_open") is False


def test_failing_strike_does_not_crash_controller():
    class BrokenStrike:
        calls = 0

        def set(self, unlocked: bool) -> None:
            BrokenStrike.calls += 1
            raise OSError("line released")

    clock = FakeClock(wall=START)
    controller = DoorController(BrokenStrike(), clock)
    controller.set_bundle(make_bundle())
    controller.tap(MEMBER, decide(make_bundle(), MEMBER, clock.time()))
    controller.shutdown()
    assert BrokenStrike.calls >= 2
    assert controller.unlocked is False


def test_parse_local_time_rejects_bad_values():
    assert parse_local_time("07:05") == local_time(7, 5)
    for value in ("7:05", "25:00", "noon", "22:00:00"):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_local_time(value)


def test_events_go_to_callback_when_given():
    received = []
    clock = FakeClock(wall=START)
    gpio = FakeGpio(LINES, clock)
    controller = DoorController(GpioStrike(gpio), clock, gpio=gpio, input_lines=LINES,
                                on_event=lambda kind, at, detail: received.append((kind, at, detail)))
    gpio.inject("door_sensor", True)
    clock.advance(0.1)
    controller.handle_edges(gpio.wait_edges(0))
    assert received == [("door-forced", START + 0.1, "door opened while the strike was locked")]
    assert controller.drain_events() == []


def test_door_settings_from_config():
    settings = parse_door_settings({"held_open_seconds": 90, "office_toggle": "button", "office_end_local": "21:30"})
    assert settings.held_open_seconds == 90.0
    assert settings.office_toggle == "button"
    assert settings.office_end_local == local_time(21, 30)
    assert parse_door_settings(None) == DoorSettings()


@pytest.mark.parametrize("table, message", [
    ({"held_open_seconds": 1}, "door.held_open_seconds: must be a number of seconds from 5 to 86400"),
    ({"held_open_seconds": True}, "door.held_open_seconds"),
    ({"office_toggle": "triple-tap"}, "door.office_toggle: must be one of double-tap, button, off"),
    ({"office_end_local": "10pm"}, "door.office_end_local: '10pm' is not a local time"),
    ({"office_end_local": 22}, "door.office_end_local"),
    ({"held_open": 30}, "door.held_open: unknown setting"),
])
def test_door_settings_rejected(table, message):
    with pytest.raises(DoorConfigError, match=message) as raised:
        parse_door_settings(table, "/etc/lockclient/config.toml")
    assert str(raised.value).startswith("/etc/lockclient/config.toml: ")


class WaitingFakeGpio(FakeGpio):
    """FakeGpio whose wait blocks like the real one, on a real clock, until an edge arrives."""

    def __post_init__(self):
        super().__post_init__()
        self.edge_ready = threading.Event()

    def inject(self, name, active):
        super().inject(name, active)
        self.edge_ready.set()

    def wait_edges(self, timeout):
        self.edge_ready.wait(timeout)
        self.edge_ready.clear()
        return super().wait_edges(0)


def test_input_loop_thread_handles_exit_button():
    clock = FunctionClock(time.monotonic, time.time)
    gpio = WaitingFakeGpio(LINES, clock)
    controller = DoorController(GpioStrike(gpio), clock, DoorSettings(default_unlock_seconds=30),
                                gpio=gpio, input_lines=LINES)
    stop = threading.Event()
    thread = threading.Thread(target=controller.run_inputs, args=(gpio, stop))
    thread.start()
    try:
        gpio.inject("exit_button", True)
        for _ in range(500):
            if controller.unlocked:
                break
            time.sleep(0.01)
        assert controller.unlocked is True
        assert controller.drain_events()[0]["type"] == "exit-button"
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    controller.shutdown()
    assert gpio.get("strike") is False
