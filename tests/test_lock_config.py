"""The lock's TOML configuration: every missing or wrong setting is named before anything starts."""

from __future__ import annotations

import base64

import pytest

from lockclient.config import ConfigError, load_config

ROOT_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def files(tmp_path):
    for name in ("ca.crt", "lock.crt", "lock.key"):
        (tmp_path / name).write_text("placeholder")
    return tmp_path


def config_text(**overrides: str | None) -> str:
    settings = {
        "lock": '"front-door"',
        "bundle_url": '"https://bundles.example.org/bundles/front-door.json"',
        "ca_file": '"ca.crt"',
        "client_cert": '"lock.crt"',
        "client_key": '"lock.key"',
        "root_keys": f'["{ROOT_KEY}"]',
        "state_dir": '"state"',
    }
    settings.update(overrides)
    lines = [f"{key} = {value}" for key, value in settings.items() if value is not None]
    return "\n".join(lines) + '\n[reader]\npath = "usb"\n'


def load(files, text: str):
    path = files / "lock.toml"
    path.write_text(text)
    return load_config(path)


def test_minimal_config_gets_defaults(files):
    config = load(files, config_text())

    assert config.signers_url == "https://bundles.example.org/signers.json"
    assert config.ca_file == files / "ca.crt"
    assert config.state_dir == files / "state"
    assert config.expired_policy == "break-glass-only"
    assert config.actuator.type == "log"
    assert config.receiver_url is None


@pytest.mark.parametrize("overrides, named", [
    ({"lock": None}, "setting lock: missing"),
    ({"bundle_url": None}, "setting bundle_url: missing"),
    ({"bundle_url": '"http://bundles.example.org/b.json"'}, "setting bundle_url"),
    ({"root_keys": "[]"}, "setting root_keys"),
    ({"root_keys": '["not base64!"]'}, "setting root_keys[0]"),
    ({"root_keys": f'["{base64.b64encode(b"short").decode()}"]'}, "decodes to 5 bytes"),
    ({"ca_file": '"missing.crt"'}, "setting ca_file: file"),
    ({"expired_policy": '"open-for-all"'}, "setting expired_policy"),
    ({"poll_interval": "0"}, "setting poll_interval"),
    ({"poll_interval": '"often"'}, "setting poll_interval: must be a number"),
    ({"colour": '"blue"'}, "setting colour: unknown setting"),
    ({"receiver_url": '"ftp://x"'}, "setting receiver_url"),
])
def test_wrong_setting_named(files, overrides, named):
    with pytest.raises(ConfigError) as raised:
        load(files, config_text(**overrides))

    assert named in str(raised.value)
    assert "lock.toml" in str(raised.value)


def test_unknown_reader_target_named(files):
    text = config_text().replace('path = "usb"', 'path = "usb"\ntargets = ["106A", "NFC-A"]')

    with pytest.raises(ConfigError, match=r"setting reader.targets\[1\]: 'NFC-A' is not an nfcpy target"):
        load(files, text)


def test_missing_reader_table_named(files):
    text = config_text().replace('[reader]\npath = "usb"', "")

    with pytest.raises(ConfigError, match="add a \\[reader\\] table"):
        load(files, text)


def test_gpio_actuator_needs_line(files):
    text = config_text() + '[actuator]\ntype = "gpio"\nchip = "/dev/gpiochip0"\n'

    with pytest.raises(ConfigError, match="setting actuator.line: missing"):
        load(files, text)


def test_gpio_actuator_parsed(files):
    config = load(files, config_text() + '[actuator]\ntype = "gpio"\nline = 17\nactive_low = true\n')

    assert config.actuator.gpio.line == 17
    assert config.actuator.gpio.active_low is True


def test_invalid_toml_reports_line(files):
    with pytest.raises(ConfigError, match="invalid TOML.*line 2"):
        load(files, 'lock = "front-door"\nbundle_url = \n')


def test_missing_file_reported(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nowhere.toml")


def test_bundle_validity_limit_defaults_to_31_days(files):
    assert load(files, config_text()).max_bundle_validity_days == 31


def test_bundle_validity_limit_raised(files):
    assert load(files, config_text(max_bundle_validity_days="90")).max_bundle_validity_days == 90


@pytest.mark.parametrize("value", ["0", "367", "-7", "7.5", '"31"', "true"])
def test_bundle_validity_limit_out_of_range_named(files, value):
    with pytest.raises(ConfigError) as raised:
        load(files, config_text(max_bundle_validity_days=value))

    message = str(raised.value)
    assert "lock.toml: setting max_bundle_validity_days: must be a whole number of days from 1 to 366" in message
    assert "bundle.valid_days" in message
