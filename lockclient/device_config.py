"""The door hardware part of the lock's TOML configuration: input and feedback lines, door
behaviour, feedback patterns and health pings.

Example::

    [door_sensor]                 # active = door open
    chip = "/dev/gpiochip0"
    line = 22

    [gpio]
    exit_button = { chip = "gpiochip0", line = 27, active_low = true, bias = "pull-up", debounce_ms = 30 }
    led_ready   = { line = 5 }
    buzzer      = { line = 26 }

    [door]
    held_open_seconds = 60
    office_end_local = "22:00"

    [feedback.patterns]
    granted = { buzzer = [120] }

    [health]
    url = "https://hc-ping.com/<uuid>"

The strike line stays in ``[actuator]``. Every problem raises :class:`DeviceConfigError`
naming the file, the setting and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lockclient.door import DOOR_SENSOR, EXIT_BUTTON, OFFICE_BUTTON, DoorConfigError, DoorSettings, parse_door_settings
from lockclient.feedback import OUTPUTS, FeedbackConfigError, parse_patterns
from lockclient.gpio import GpioError, LineConfig, parse_line
from lockclient.health import HealthConfigError, HealthSettings, parse_health

__all__ = ["DEVICE_TABLES", "GPIO_INPUTS", "GPIO_OUTPUTS", "DeviceConfigError", "DeviceSettings", "parse_device"]

# Top-level tables this module reads (``door_sensor`` is shared with the lock client's config).
DEVICE_TABLES = ("gpio", "door", "feedback", "health")
GPIO_INPUTS = (EXIT_BUTTON, OFFICE_BUTTON)
GPIO_OUTPUTS = OUTPUTS


class DeviceConfigError(ValueError):
    """An invalid door hardware setting; the message names the file, the setting and the fix."""


@dataclass(frozen=True)
class DeviceSettings:
    """Door hardware settings; the defaults describe a door with only a strike and a reader."""

    # Input and feedback lines, door sensor included; never the strike.
    lines: tuple[LineConfig, ...] = ()
    door: DoorSettings = field(default_factory=DoorSettings)
    patterns: dict = field(default_factory=lambda: parse_patterns(None))
    health: HealthSettings | None = None

    @property
    def inputs(self) -> tuple[LineConfig, ...]:
        return tuple(line for line in self.lines if not line.output)


def _gpio_lines(data: dict, source: str) -> list[LineConfig]:
    table = data.get("gpio", {})
    if not isinstance(table, dict):
        raise DeviceConfigError(f"{source}: setting gpio: must be a table ([gpio]) of named lines")
    lines = []
    for name, line_table in table.items():
        if name == "strike":
            raise DeviceConfigError(f"{source}: setting gpio.strike: configure the strike in [actuator] (type = \"gpio\")")
        if name == DOOR_SENSOR:
            raise DeviceConfigError(f"{source}: setting gpio.door_sensor: configure the door sensor in [door_sensor]")
        if name not in GPIO_INPUTS + GPIO_OUTPUTS:
            raise DeviceConfigError(
                f"{source}: setting gpio.{name}: unknown line; valid lines are {', '.join(GPIO_INPUTS + GPIO_OUTPUTS)}"
            )
        lines.append(parse_line(name, line_table, output=name in GPIO_OUTPUTS, source=source))

    sensor = data.get("door_sensor")
    if sensor is not None:
        sensor_table = dict(sensor) if isinstance(sensor, dict) else sensor
        if isinstance(sensor_table, dict):
            sensor_table.setdefault("debounce_ms", 50)
        lines.append(parse_line(DOOR_SENSOR, sensor_table, output=False, source=source))
    return lines


def _check_conflicts(lines: list[LineConfig], strike: tuple[str, int] | None, source: str) -> None:
    places: dict[tuple[str, int], str] = {}
    if strike is not None:
        places[strike] = "the strike ([actuator])"
    for line in lines:
        place = (line.chip, line.offset)
        if place in places:
            raise DeviceConfigError(
                f"{source}: {line.name} uses {line.chip} line {line.offset}, which {places[place]} uses already; "
                "give each function its own line"
            )
        places[place] = f"line {line.name!r}"


def parse_device(data: dict, source: Path | str, strike: tuple[str, int] | None = None) -> DeviceSettings:
    """Read the door hardware tables of a parsed config document.

    ``strike`` is the strike's (chip path, line offset) when it is on GPIO, so that no other
    line can take it.
    """
    where = str(source)
    try:
        lines = _gpio_lines(data, where)
        if strike is not None:
            chip, offset = strike
            strike = (chip if chip.startswith("/") else "/dev/" + chip, offset)
        _check_conflicts(lines, strike, where)
        door = parse_door_settings(data.get("door"), where)
        feedback = data.get("feedback", {})
        if not isinstance(feedback, dict) or set(feedback) - {"patterns"}:
            raise DeviceConfigError(f"{where}: setting feedback: must be a table with only [feedback.patterns]")
        patterns = parse_patterns(feedback.get("patterns"), where)
        health = parse_health(data.get("health"), where)
    except (GpioError, DoorConfigError, FeedbackConfigError, HealthConfigError) as error:
        raise DeviceConfigError(str(error)) from None
    return DeviceSettings(lines=tuple(lines), door=door, patterns=patterns, health=health)
