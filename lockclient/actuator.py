"""The strike output and the GPIO lines of the door, built from the configuration.

The strike is anything with ``set(active: bool)`` (:class:`lockclient.door.Strike`); the door
controller (:class:`lockclient.door.DoorController`) decides when it is energised and for how
long. Two kinds exist:

- :class:`LogOutput` (``type = "log"``) for development: it only logs and records its changes;
- ``type = "gpio"``: the ``strike`` line of :class:`lockclient.gpio.GpiodGpio`, the single
  thin adapter over libgpiod v2 (python ``gpiod``), with the ``active_low`` option. It is
  requested together with the door's other lines, so one object owns every GPIO line.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from lockclient.config import ActuatorSettings
from lockclient.door import STRIKE, GpioStrike, Strike
from lockclient.gpio import Gpio, LineConfig

log = logging.getLogger(__name__)


class LogOutput:
    """Development strike: logs each change and keeps them in :attr:`changes` (active, monotonic time)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic):
        self.monotonic = monotonic
        self.changes: list[tuple[bool, float]] = []
        self.active = False
        self.closed = False

    def set(self, active: bool) -> None:
        self.active = active
        self.changes.append((active, self.monotonic()))
        log.info("strike %s (log actuator)", "energised" if active else "released")

    def close(self) -> None:
        if self.active:
            self.set(False)
        self.closed = True


def strike_line(settings: ActuatorSettings) -> LineConfig:
    """Return the strike's line for ``type = "gpio"``; outputs start inactive (locked)."""
    assert settings.gpio is not None
    chip = settings.gpio.chip if settings.gpio.chip.startswith("/") else "/dev/" + settings.gpio.chip
    return LineConfig(name=STRIKE, chip=chip, offset=settings.gpio.line, output=True,
                      active_low=settings.gpio.active_low)


def build_door_outputs(settings: ActuatorSettings, lines: list[LineConfig], gpio: Gpio | None = None,
                       output: Strike | None = None) -> tuple[Strike, Gpio | None]:
    """Return the strike and the GPIO object for the door's other lines (None without any).

    ``gpio`` and ``output`` replace the real hardware in tests. Raises
    :class:`lockclient.gpio.GpioError` when a line cannot be requested.
    """
    if settings.type == "gpio":
        if gpio is None:
            from lockclient.gpio import GpiodGpio

            gpio = GpiodGpio([*lines, strike_line(settings)])
        return (output if output is not None else GpioStrike(gpio)), gpio

    if gpio is None and lines:
        from lockclient.gpio import GpiodGpio

        gpio = GpiodGpio(list(lines))
    return (output if output is not None else LogOutput()), gpio
