"""Office mode and lockdown from access YAML, through the compiler and verifier, to the door.

The access repository is written as YAML, loaded and validated by the real loader, compiled
and signed by the real compiler, verified by the lock's verifier, and then drives the door
controller through FakeGpio and a fake clock.
"""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import datetime, time as local_time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from compiler import signing
from compiler.bundle_build import compile_repository
from compiler.loader import AccessInvalid, load_repository
from lockclient import bundle as bundle_format
from lockclient.bundle import decide
from lockclient.door import DoorController, DoorSettings, GpioStrike
from lockclient.dsse import key_id
from lockclient.gpio import FakeClock, FakeGpio, LineConfig

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
# Friday 2026-12-04 17:00 in Amsterdam.
NOW = int(datetime(2026, 12, 4, 17, 0, tzinfo=AMSTERDAM).timestamp())
HOST_KEY = "04:10:20:30:40:50:60"
MEMBER_KEY = "04:a2:3b:4c:5d:6e:7f"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def access_repository(root: Path, lockdown: bool = False, office_mode: str = "true") -> Path:
    write(root / "locks/front-door.yaml", f"""\
        name: front-door
        timezone: Europe/Amsterdam
        certificate:
          sha256: "{'ab' * 32}"
        bundle:
          unlock_seconds: 4
        lockdown: {'true' if lockdown else 'false'}
        """)
    write(root / "schedules/open-evening.yaml", """\
        name: open-evening
        windows:
          - days: [fri]
            start: "16:00"
            end: "21:00"
        """)
    write(root / "schedules/always.yaml", """\
        name: always
        always: true
        """)
    write(root / "groups/hosts.yaml", f"""\
        name: hosts
        access:
          - locks: [front-door]
            schedule: open-evening
            office_mode: {office_mode}
        """)
    write(root / "groups/members.yaml", """\
        name: members
        access:
          - locks: [front-door]
            schedule: always
        """)
    write(root / "people/hannah.yaml", f"""\
        username: hannah
        name: Hannah Host
        groups: [hosts, members]
        keys:
          - hwid: "{HOST_KEY}"
        """)
    write(root / "people/mo.yaml", f"""\
        username: mo
        name: Mo Member
        groups: [members]
        keys:
          - hwid: "{MEMBER_KEY}"
        """)
    return root


def compiled_bundle(root: Path, now: int = NOW, version_offset: int = 0) -> bundle_format.Bundle:
    repository = load_repository(root)
    root_key, signer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signers_document = signing.build_signers_document(
        root_key, [(signer.public_key(), "ci")], 1, now - 86400, now + 365 * 86400,
    )
    build = compile_repository(repository, signer, signers_document, now + version_offset)
    signers = bundle_format.verify_signers(
        signers_document, {key_id(root_key.public_key()): root_key.public_key()}, None, now,
    )
    return bundle_format.verify_bundle(build.bundles["front-door"].envelope, signers, "front-door", None, now)


LINES = [
    LineConfig("strike", "/dev/gpiochip0", 17, output=True),
    LineConfig("door_sensor", "/dev/gpiochip0", 22, output=False, debounce_seconds=0.05),
]


class Door:
    def __init__(self, bundle: bundle_format.Bundle, settings: DoorSettings = DoorSettings()):
        self.clock = FakeClock(wall=NOW)
        self.gpio = FakeGpio(LINES, self.clock)
        self.events: list[tuple[str, str | None]] = []
        self.controller = DoorController(
            GpioStrike(self.gpio), self.clock, settings, gpio=self.gpio, input_lines=LINES,
            on_event=lambda kind, at, detail: self.events.append((kind, detail)),
        )
        self.bundle = bundle
        self.controller.set_bundle(bundle)

    def tap(self, hwid: str) -> None:
        self.controller.tap(hwid, decide(self.bundle, hwid, self.clock.time()))

    def double_tap(self, hwid: str) -> None:
        self.tap(hwid)
        self.advance(1)
        self.tap(hwid)

    def advance(self, seconds: float) -> None:
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end - 1e-9:
            deadline = self.controller.poll()
            step = min(end - self.clock.monotonic(), 60.0)
            if deadline is not None and deadline > self.clock.monotonic():
                step = min(step, deadline - self.clock.monotonic() + 1e-6)
            self.clock.advance(step)
        self.controller.poll()

    @property
    def strike(self) -> bool:
        return self.gpio.get("strike")


def test_compiled_office_mode_ends_with_schedule(tmp_path):
    bundle = compiled_bundle(access_repository(tmp_path))
    assert HOST_KEY in bundle.office_mode
    assert MEMBER_KEY not in bundle.office_mode
    door = Door(bundle)

    door.double_tap(HOST_KEY)
    assert door.controller.office_mode
    # 17:00 now; the open-evening window ends at 21:00 local time.
    door.advance(4 * 3600 - 30)
    assert door.strike is True
    door.advance(60)
    assert door.strike is False
    assert [kind for kind, _ in door.events] == ["office-mode-on", "office-mode-off"]


def test_compiled_office_mode_local_end_time_first(tmp_path):
    bundle = compiled_bundle(access_repository(tmp_path))
    door = Door(bundle, DoorSettings(office_end_local=local_time(19, 0)))
    door.double_tap(HOST_KEY)
    door.advance(2 * 3600 + 30)
    assert door.strike is False
    assert door.events[-1] == ("office-mode-off", "local end time 19:00")


def test_compiled_member_without_office_mode_cannot_hold_open(tmp_path):
    door = Door(compiled_bundle(access_repository(tmp_path)))
    door.double_tap(MEMBER_KEY)
    assert not door.controller.office_mode
    door.advance(10)
    assert door.strike is False


def test_compiled_lockdown_ends_office_mode(tmp_path):
    door = Door(compiled_bundle(access_repository(tmp_path)))
    door.double_tap(HOST_KEY)
    assert door.strike is True

    lockdown = compiled_bundle(access_repository(tmp_path / "next", lockdown=True), version_offset=60)
    assert lockdown.lockdown is True
    door.bundle = dataclasses.replace(lockdown)
    door.controller.set_bundle(door.bundle)
    assert not door.controller.office_mode
    assert door.events[-1] == ("office-mode-off", "lockdown")
    # The first tap's ordinary unlock (4 s) runs out; nothing holds the strike after that.
    door.advance(4)
    assert door.strike is False

    door.tap(MEMBER_KEY)
    assert door.strike is False


def test_office_mode_flag_must_be_boolean(tmp_path):
    with pytest.raises(AccessInvalid) as raised:
        load_repository(access_repository(tmp_path, office_mode='"yes"'))
    assert any("office_mode" in str(problem) for problem in raised.value.problems)
