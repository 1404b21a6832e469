"""The lock client's systemd unit: `systemd-analyze verify` accepts it without a warning.

`systemd-analyze verify` checks that ExecStart= points at an existing executable and that the
units it depends on exist. The unit names the install path /opt/doorlock/venv/bin/lockclient,
which this machine does not have, so the test builds a throwaway root directory holding the
system's own unit files, /usr/bin/kill, an executable at the install path and the unit file
unchanged, and runs the verifier with --root.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
UNIT = Path(__file__).resolve().parent.parent / "deploy" / "doorlock-lockclient.service"
UNIT_NAME = UNIT.name


def read_unit() -> dict[str, list[str]]:
    """Return every Key=value of the unit as key -> list of values (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    executable = root / "opt/doorlock/venv/bin/lockclient"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(UNIT, root / "etc/systemd/system" / UNIT_NAME)
    return root


def test_unit_verifies_cleanly(root):
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", UNIT_NAME],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys and unparsable values are only warnings: any output is a failure here.
    assert result.stderr == ""
    assert result.stdout == ""


def test_broken_unit_is_caught(root, tmp_path):
    # The check above can fail: a misspelt setting produces a warning.
    broken = root / "etc/systemd/system/doorlock-broken.service"
    broken.write_text(UNIT.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    try:
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "verify", f"--root={root}", broken.name],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        broken.unlink()
    assert "Unknown key 'ProtectClok'" in result.stderr


def test_unit_is_notify_with_watchdog_and_restart():
    unit = read_unit()
    assert unit["Type"] == ["notify"]
    assert int(unit["WatchdogSec"][0]) > 0
    assert unit["WatchdogSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["StartLimitIntervalSec"] == ["0"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_unit_runs_as_dedicated_user_with_device_groups():
    unit = read_unit()
    assert unit["User"] == ["doorlock"]
    assert set(unit["SupplementaryGroups"][0].split()) == {"gpio", "dialout"}
    assert unit["StateDirectory"] == ["lockclient"]


def test_unit_hardening_still_allows_gpio_and_readers():
    unit = read_unit()
    assert unit["DevicePolicy"] == ["closed"]
    allowed = {entry.split()[0] for entry in unit["DeviceAllow"]}
    assert {"char-gpiochip", "char-ttyAMA", "char-ttyS", "char-ttyUSB", "char-usb_device"} <= allowed
    assert "PrivateDevices" not in unit
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"]
