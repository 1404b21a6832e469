"""The door hardware tables of the lock's TOML configuration."""

from __future__ import annotations

import tomllib
from datetime import time as local_time

import pytest

from lockclient.device_config import DeviceConfigError, parse_device
from lockclient.gpio import LineConfig

SOURCE = "/etc/lockclient/config.toml"

FULL = """
[door_sensor]
chip = "/dev/gpiochip0"
line = 22
active_low = true

[gpio]
exit_button = { chip = "gpiochip0", line = 27, active_low = true, bias = "pull-up", debounce_ms = 30 }
led_ready = { line = 5 }
buzzer = { line = 26 }

[door]
held_open_seconds = 90
office_end_local = "22:00"

[feedback.patterns]
granted = { buzzer = [50] }

[health]
url = "https://hc-ping.com/0f3c"
"""


def test_full_device_config():
    device = parse_device(tomllib.loads(FULL), SOURCE, strike=("/dev/gpiochip0", 17))
    assert LineConfig("exit_button", "/dev/gpiochip0", 27, output=False, active_low=True, bias="pull-up",
                      debounce_seconds=0.03) in device.lines
    assert LineConfig("led_ready", "/dev/gpiochip0", 5, output=True) in device.lines
    assert LineConfig("door_sensor", "/dev/gpiochip0", 22, output=False, active_low=True,
                      debounce_seconds=0.05) in device.lines
    assert {line.name for line in device.inputs} == {"exit_button", "door_sensor"}
    assert device.door.held_open_seconds == 90
    assert device.door.office_end_local == local_time(22, 0)
    assert device.patterns["granted"] == {"buzzer": [50]}
    assert device.health.url == "https://hc-ping.com/0f3c"


def test_empty_device_config_defaults():
    device = parse_device({}, SOURCE)
    assert device.lines == ()
    assert device.health is None
    assert device.patterns["denied"]["led_denied"] == [1500]


@pytest.mark.parametrize("text, message", [
    ('[gpio]\nstrike = { line = 17 }', "configure the strike in \\[actuator\\]"),
    ('[gpio]\ndoor_sensor = { line = 22 }', "configure the door sensor in \\[door_sensor\\]"),
    ('[gpio]\nsiren = { line = 4 }', "gpio.siren: unknown line"),
    ('[gpio]\nexit_button = { line = 17 }', "exit_button uses /dev/gpiochip0 line 17, which the strike"),
    ('[gpio]\nled_ready = { line = 5 }\nbuzzer = { line = 5 }', "buzzer uses /dev/gpiochip0 line 5, which line 'led_ready'"),
    ('[gpio]\nexit_button = { line = "27" }', "line must be the line offset"),
    ('[door]\noffice_toggle = "knock"', "door.office_toggle"),
    ('[feedback]\nvolume = 3', "only \\[feedback.patterns\\]"),
    ('[feedback.patterns]\ngranted = { buzzer = [0] }', "list of milliseconds"),
    ('[health]\nurl = "hc-ping.com"', "health.url"),
])
def test_invalid_device_config(text, message):
    with pytest.raises(DeviceConfigError, match=message) as raised:
        parse_device(tomllib.loads(text), SOURCE, strike=("gpiochip0", 17))
    assert str(raised.value).startswith(SOURCE)
