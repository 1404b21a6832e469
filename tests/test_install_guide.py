"""The configuration example in the Raspberry Pi installation guide loads as written."""

from __future__ import annotations

import base64
import re
from datetime import time as local_time
from pathlib import Path

from lockclient.config import load_config

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "install-raspberry-pi.md"


def guide_config() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "the guide should contain exactly one TOML example"
    return blocks[0]


def test_guide_config_example_loads(tmp_path):
    for name in ("ca.crt", "front-door.crt", "front-door.key"):
        (tmp_path / name).write_text("placeholder\n")
    root_key = base64.b64encode(bytes(32)).decode()
    text = guide_config().replace("<contents of ROOT.pub>", root_key)
    text = text.replace('"/var/lib/lockclient"', f'"{tmp_path / "state"}"')
    path = tmp_path / "config.toml"
    path.write_text(text)

    config = load_config(path)

    assert config.lock == "front-door"
    assert config.reader.path == "tty:AMA0:pn532"
    assert config.actuator.type == "gpio"
    names = {line.name for line in config.device.lines}
    assert names == {"door_sensor", "exit_button", "office_button", "led_ready", "led_reading",
                     "led_denied", "led_open", "buzzer"}
    assert config.device.door.office_end_local == local_time(22, 0)
    assert config.device.door.office_toggle == "double-tap"
    assert config.device.patterns["granted"] == {"buzzer": [120]}
    assert config.device.health.url == "https://hc-ping.com/<uuid>"
