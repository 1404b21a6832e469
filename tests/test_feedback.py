"""LED and buzzer patterns, timed by a fake clock through FakeGpio."""

from __future__ import annotations

import pytest

from lockclient.feedback import DEFAULT_PATTERNS, Feedback, FeedbackConfigError, parse_patterns, pattern_for_decision
from lockclient.gpio import FakeClock, FakeGpio, LineConfig

OUTPUT_NAMES = ("led_ready", "led_reading", "led_denied", "led_open", "buzzer")


def make(patterns=None, outputs=OUTPUT_NAMES):
    clock = FakeClock()
    lines = [LineConfig(name, "/dev/gpiochip0", offset, output=True) for offset, name in enumerate(outputs)]
    gpio = FakeGpio(lines, clock)
    feedback = Feedback(gpio, clock, parse_patterns(patterns))
    return clock, gpio, feedback


def run(clock, feedback, seconds):
    """Advance to each change the feedback asks for, as the daemon loop does."""
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        deadline = feedback.poll()
        step = end - clock.monotonic()
        if deadline is not None:
            step = min(step, max(deadline - clock.monotonic(), 0.0) + 1e-6)
        clock.advance(step)
    feedback.poll()


def timeline(gpio, name, since):
    """Return (milliseconds since ``since``, level) for every change of output ``name``."""
    return [(round((c.at - since) * 1000), c.active) for c in gpio.changes if c.name == name]


def test_idle_state_shows_ready_only():
    _, gpio, _ = make()
    assert gpio.get("led_ready") is True
    for name in ("led_reading", "led_denied", "led_open", "buzzer"):
        assert gpio.get(name) is False


def test_granted_beeps_once():
    clock, gpio, feedback = make()
    start = clock.monotonic()
    feedback.play("granted")
    run(clock, feedback, 2)
    assert timeline(gpio, "buzzer", start) == [(0, True), (120, False)]


def test_denied_beeps_three_times_and_lights_denied():
    clock, gpio, feedback = make()
    start = clock.monotonic()
    feedback.play("denied")
    run(clock, feedback, 3)
    assert timeline(gpio, "buzzer", start) == [
        (0, True), (80, False), (160, True), (240, False), (320, True), (400, False),
    ]
    assert timeline(gpio, "led_denied", start) == [(0, True), (1500, False)]


def test_unknown_card_long_beep():
    clock, gpio, feedback = make()
    start = clock.monotonic()
    feedback.play("unknown-card")
    run(clock, feedback, 3)
    assert timeline(gpio, "buzzer", start) == [(0, True), (600, False)]


def test_reader_fault_blinks_until_cleared():
    clock, gpio, feedback = make()
    start = clock.monotonic()
    feedback.set_condition("reader-fault", True)
    run(clock, feedback, 4.1)
    assert gpio.get("led_ready") is False
    assert timeline(gpio, "led_denied", start) == [
        (0, True), (200, False), (2000, True), (2200, False), (4000, True),
    ]
    feedback.set_condition("reader-fault", False)
    assert gpio.get("led_ready") is True
    assert gpio.get("led_denied") is False


def test_reader_fault_wins_over_bundle_expired():
    clock, gpio, feedback = make()
    feedback.set_condition("bundle-expired", True)
    feedback.set_condition("reader-fault", True)
    run(clock, feedback, 5)
    assert gpio.get("led_ready") is False
    assert gpio.history("led_ready")[-1] is False


def test_bundle_expired_blinks_ready():
    clock, gpio, feedback = make()
    start = clock.monotonic()
    feedback.set_condition("bundle-expired", True)
    run(clock, feedback, 2.5)
    # The first change is the steady ready light switched on when the feedback starts.
    assert timeline(gpio, "led_ready", start) == [(0, True), (1000, False), (2000, True)]


def test_event_wins_over_condition_then_condition_resumes():
    clock, gpio, feedback = make()
    feedback.set_condition("reader-fault", True)
    run(clock, feedback, 0.5)
    feedback.play("denied")
    run(clock, feedback, 1.4)
    assert gpio.get("led_denied") is True
    run(clock, feedback, 0.2)
    # Back in the reader-fault cycle: at 2.1 s into it the denied LED is on for 200 ms.
    assert gpio.get("led_denied") is True
    run(clock, feedback, 0.2)
    assert gpio.get("led_denied") is False


def test_new_event_replaces_playing_event():
    clock, gpio, feedback = make()
    start = clock.monotonic()
    feedback.play("unknown-card")
    run(clock, feedback, 0.1)
    feedback.play("granted")
    run(clock, feedback, 2)
    assert timeline(gpio, "buzzer", start) == [(0, True), (220, False)]


def test_open_led_follows_strike():
    _, gpio, feedback = make()
    feedback.set_unlocked(True)
    assert gpio.get("led_open") is True
    feedback.set_unlocked(False)
    assert gpio.get("led_open") is False


def test_configured_pattern_replaces_default():
    clock, gpio, feedback = make({"granted": {"buzzer": [50, 50, 50], "led_reading": [200]}})
    start = clock.monotonic()
    feedback.play("granted")
    run(clock, feedback, 1)
    assert timeline(gpio, "buzzer", start) == [(0, True), (50, False), (100, True), (150, False)]
    assert timeline(gpio, "led_reading", start) == [(0, True), (200, False)]


def test_unconfigured_outputs_are_skipped():
    clock, gpio, feedback = make(outputs=("buzzer",))
    feedback.play("denied")
    feedback.set_condition("reader-fault", True)
    run(clock, feedback, 2)
    assert {change.name for change in gpio.changes} == {"buzzer"}


def test_off_silences_everything():
    clock, gpio, feedback = make()
    feedback.play("denied")
    feedback.set_unlocked(True)
    feedback.off()
    assert all(gpio.get(name) is False for name in OUTPUT_NAMES)
    feedback.play("granted")
    run(clock, feedback, 1)
    assert all(gpio.get(name) is False for name in OUTPUT_NAMES)


@pytest.mark.parametrize("table, message", [
    ({"party": {"buzzer": [100]}}, "not a known pattern"),
    ({"granted": {"siren": [100]}}, "unknown output 'siren'"),
    ({"granted": {"buzzer": [0]}}, "list of milliseconds"),
    ({"granted": {"buzzer": [-5]}}, "list of milliseconds"),
    ({"granted": {"buzzer": [True]}}, "list of milliseconds"),
    ({"granted": {"buzzer": [61_000]}}, "list of milliseconds"),
    ({"granted": {"buzzer": "beep"}}, "list of milliseconds"),
    ({"granted": [100]}, "must be a table"),
    ([1, 2], "must be a table"),
])
def test_invalid_patterns_rejected(table, message):
    with pytest.raises(FeedbackConfigError, match=message):
        parse_patterns(table, "/etc/lockclient/config.toml")


def test_default_patterns_are_valid():
    assert parse_patterns(None) == DEFAULT_PATTERNS


@pytest.mark.parametrize("code, pattern", [
    ("granted", "granted"), ("break-glass", "granted"), ("unknown-key", "unknown-card"),
    ("outside-schedule", "denied"), ("expired", "denied"), ("lockdown", "denied"),
])
def test_decision_codes_map_to_patterns(code, pattern):
    assert pattern_for_decision(code) == pattern
