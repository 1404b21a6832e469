"""The libgpiod adapter, its fake, line configuration and software debounce.

No GPIO chip exists in the test machine, so the adapter's requests go to a recording stand-in
for ``gpiod.request_lines``; the settings and edge events it handles are real ``gpiod``
objects. One test drives the real libgpiod call against a missing chip.
"""

from __future__ import annotations

import os
from datetime import timedelta

import gpiod
import pytest
from gpiod.line import Bias, Direction, Edge as GpiodEdge, Value

from lockclient.gpio import Debouncer, Edge, FakeClock, FakeGpio, GpioError, GpiodGpio, LineConfig, parse_line


def line(name, offset, output, **options):
    return LineConfig(name, "/dev/gpiochip0", offset, output=output, **options)


class RecordedRequest:
    """Stands in for gpiod.LineRequest: records values, serves queued edge events via a pipe."""

    def __init__(self, chip, config):
        self.chip = chip
        self.config = config
        self.values = {offset: settings.output_value for offset, settings in config.items()
                       if settings.direction == Direction.OUTPUT}
        self.events = []
        self.released = False
        self._read, self._write = os.pipe()

    def fileno(self):
        return self._read

    def queue(self, event):
        self.events.append(event)
        os.write(self._write, b"x")

    def read_edge_events(self):
        os.read(self._read, 4096)
        events, self.events = self.events, []
        return events

    def set_value(self, offset, value):
        self.values[offset] = value

    def get_value(self, offset):
        return self.values.get(offset, Value.INACTIVE)

    def release(self):
        self.released = True
        os.close(self._read)
        os.close(self._write)


@pytest.fixture
def requests_made(monkeypatch):
    made = []

    def request_lines(path, config, consumer=None, **_):
        assert consumer == "doorlock"
        made.append(RecordedRequest(path, config))
        return made[-1]

    monkeypatch.setattr(gpiod, "request_lines", request_lines)
    return made


def test_parse_line_defaults():
    config = parse_line("exit_button", {"line": 27}, output=False)
    assert config == LineConfig("exit_button", "/dev/gpiochip0", 27, output=False, debounce_seconds=0.02)


def test_parse_line_full():
    config = parse_line("strike", {"chip": "/dev/gpiochip4", "line": 17, "active_low": True, "bias": "pull-down"}, output=True)
    assert config == LineConfig("strike", "/dev/gpiochip4", 17, output=True, active_low=True, bias="pull-down")


@pytest.mark.parametrize("table, message", [
    ({}, "line must be the line offset"),
    ({"line": -1}, "line must be the line offset"),
    ({"line": True}, "line must be the line offset"),
    ({"line": "17"}, "line must be the line offset"),
    ({"line": 3, "bias": "up"}, "bias must be one of"),
    ({"line": 3, "active_low": "yes"}, "active_low must be true or false"),
    ({"line": 3, "debounce_ms": -1}, "debounce_ms must be"),
    ({"line": 3, "debounce_ms": 20_000}, "debounce_ms must be"),
    ({"line": 3, "pull": "up"}, "unknown setting"),
    ({"line": 3, "chip": ""}, "chip must be"),
    (17, "must be a table"),
])
def test_parse_line_rejects(table, message):
    with pytest.raises(GpioError, match=message) as raised:
        parse_line("exit_button", table, output=False, source="/etc/lockclient/config.toml")
    assert "/etc/lockclient/config.toml" in str(raised.value)
    assert "'exit_button'" in str(raised.value)


def test_parse_line_rejects_debounce_on_output():
    with pytest.raises(GpioError, match="inputs only"):
        parse_line("strike", {"line": 17, "debounce_ms": 5}, output=True)


def test_adapter_requests_lines_with_settings(requests_made):
    gpio = GpiodGpio([
        line("strike", 17, True, active_low=True),
        line("exit_button", 27, False, active_low=True, bias="pull-up", debounce_seconds=0.02),
        LineConfig("door_sensor", "/dev/gpiochip1", 3, output=False, bias="pull-down"),
    ])
    assert [request.chip for request in requests_made] == ["/dev/gpiochip0", "/dev/gpiochip1"]
    strike = requests_made[0].config[17]
    assert strike.direction == Direction.OUTPUT
    assert strike.active_low is True
    # Requested inactive: the strike starts locked.
    assert strike.output_value == Value.INACTIVE
    button = requests_made[0].config[27]
    assert button.direction == Direction.INPUT
    assert button.edge_detection == GpiodEdge.BOTH
    assert button.bias == Bias.PULL_UP
    assert button.active_low is True
    # Debounce is done in software so it behaves the same on every chip.
    assert button.debounce_period == timedelta()
    assert requests_made[1].config[3].bias == Bias.PULL_DOWN
    gpio.close()


def test_adapter_sets_and_reads_logical_values(requests_made):
    gpio = GpiodGpio([line("strike", 17, True), line("exit_button", 27, False)])
    gpio.set("strike", True)
    assert requests_made[0].values[17] == Value.ACTIVE
    assert gpio.get("strike") is True
    gpio.set("strike", False)
    assert requests_made[0].values[17] == Value.INACTIVE
    assert gpio.get("exit_button") is False
    with pytest.raises(GpioError, match="is an input"):
        gpio.set("exit_button", True)
    with pytest.raises(KeyError):
        gpio.set("siren", True)
    gpio.close()


def test_adapter_translates_edge_events(requests_made):
    gpio = GpiodGpio([line("exit_button", 27, False), line("door_sensor", 22, False)])
    request = requests_made[0]
    rising = gpiod.EdgeEvent.Type.RISING_EDGE.value
    falling = gpiod.EdgeEvent.Type.FALLING_EDGE.value
    request.queue(gpiod.EdgeEvent(falling, 2_500_000_000, 22, 2, 1))
    request.queue(gpiod.EdgeEvent(rising, 2_000_000_000, 27, 1, 1))
    edges = gpio.wait_edges(1.0)
    assert edges == [Edge("exit_button", True, 2.0), Edge("door_sensor", False, 2.5)]
    assert gpio.wait_edges(0.0) == []
    gpio.close()


def test_adapter_close_releases_every_request(requests_made):
    gpio = GpiodGpio([line("strike", 17, True), LineConfig("buzzer", "/dev/gpiochip1", 4, output=True)])
    gpio.close()
    assert all(request.released for request in requests_made)


def test_adapter_missing_chip_is_clear_error():
    # The real libgpiod call: there is no such chip in this machine.
    with pytest.raises(GpioError, match="cannot request lines strike on /dev/gpiochip-missing") as raised:
        GpiodGpio([LineConfig("strike", "/dev/gpiochip-missing", 17, output=True)])
    assert "gpio group" in str(raised.value)


@pytest.mark.parametrize("lines, message", [
    ([line("strike", 17, True), line("strike", 18, True)], "configured twice"),
    ([line("strike", 17, True), line("buzzer", 17, True)], "both use /dev/gpiochip0 line 17"),
])
def test_conflicting_lines_rejected(lines, message):
    with pytest.raises(GpioError, match=message):
        GpiodGpio(lines)
    with pytest.raises(GpioError, match=message):
        FakeGpio(lines)


def test_fake_records_output_changes_with_time():
    clock = FakeClock(monotonic=10.0)
    gpio = FakeGpio([line("strike", 17, True)], clock)
    gpio.set("strike", True)
    gpio.set("strike", True)
    clock.advance(5)
    gpio.set("strike", False)
    assert [(change.active, change.at) for change in gpio.changes] == [(True, 10.0), (False, 15.0)]
    assert gpio.history("strike") == [True, False]


def test_fake_injects_edges_only_on_change():
    clock = FakeClock(monotonic=10.0)
    gpio = FakeGpio([line("exit_button", 27, False)], clock)
    gpio.inject("exit_button", True)
    gpio.inject("exit_button", True)
    clock.advance(1)
    gpio.inject("exit_button", False)
    assert gpio.wait_edges(0) == [Edge("exit_button", True, 10.0), Edge("exit_button", False, 11.0)]
    assert gpio.wait_edges(0) == []


def test_fake_rejects_misuse():
    gpio = FakeGpio([line("strike", 17, True), line("exit_button", 27, False)])
    with pytest.raises(GpioError):
        gpio.set("exit_button", True)
    with pytest.raises(KeyError):
        gpio.inject("strike", True)
    gpio.close()
    with pytest.raises(GpioError, match="released"):
        gpio.set("strike", True)


def test_debounce_ignores_bounce_and_glitches():
    debouncer = Debouncer([line("exit_button", 27, False, debounce_seconds=0.02)], {"exit_button": False})
    # Contact bounce: the level settles on active after a few flips.
    debouncer.feed([Edge("exit_button", True, 1.000), Edge("exit_button", False, 1.002),
                    Edge("exit_button", True, 1.004)])
    assert debouncer.poll(1.020) == []
    assert debouncer.next_deadline() == pytest.approx(1.024)
    assert debouncer.poll(1.024) == [("exit_button", True)]
    assert debouncer.level("exit_button") is True
    # A glitch shorter than the debounce time never counts.
    debouncer.feed([Edge("exit_button", False, 2.000), Edge("exit_button", True, 2.005)])
    assert debouncer.poll(2.100) == []
    assert debouncer.level("exit_button") is True


def test_debounce_zero_reports_at_once():
    debouncer = Debouncer([line("door_sensor", 22, False, debounce_seconds=0.0)], {})
    debouncer.feed([Edge("door_sensor", True, 5.0)])
    assert debouncer.poll(5.0) == [("door_sensor", True)]
    assert debouncer.next_deadline() is None
