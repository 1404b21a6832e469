"""The receiver's TOML configuration: every mistake is named with its file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler.cli import main
from receiver.config import ConfigError, load_config

BASE = """
[data]
manifest = "publish/manifest.json"
database = "receiver.sqlite"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(text)
    return path


def test_relative_paths_resolved_against_config_file(tmp_path):
    path = write(tmp_path, '[server]\nmode = "proxy"\nport = 8080\n' + BASE)

    config = load_config(path)

    assert config.manifest == tmp_path / "publish" / "manifest.json"
    assert config.database == tmp_path / "receiver.sqlite"
    assert config.header == "X-Doorlock-Client-Cert"


@pytest.mark.parametrize("text, expected", [
    ('[server]\nmode = "tls"\n' + BASE, "[tls] certificate is missing"),
    ('[server]\nmode = "proxy"\nhost = "0.0.0.0"\n' + BASE, "is not a loopback address"),
    ('[server]\nmode = "proxy"\n[proxy]\ntrusted_peers = ["10.0.0.5"]\n' + BASE, "'10.0.0.5', which is not a loopback"),
    ('[server]\nmode = "plain"\n' + BASE, "mode = 'plain' is invalid"),
    ('[server]\nmode = "proxy"\nport = 70000\n' + BASE, "port = 70000 is invalid"),
    ('[server]\nmode = "proxy"\ncolour = "red"\n' + BASE, "unknown key 'colour' in [server]"),
    ('[server]\nmode = "proxy"\n[data]\nmanifest = "m.json"\n', "[data] database is missing"),
    ('[server\n', "invalid TOML"),
])
def test_invalid_config_named(tmp_path, text, expected):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert str(path) in str(raised.value)
    assert expected in str(raised.value)


def test_serve_reports_config_error_without_traceback(tmp_path):
    path = write(tmp_path, '[server]\nmode = "tls"\n' + BASE)

    result = CliRunner().invoke(main, ["receiver", "serve", "--config", str(path)])

    assert result.exit_code == 1
    assert "[tls] certificate is missing" in result.output
    assert "Traceback" not in result.output


def test_serve_reports_missing_manifest(tmp_path):
    path = write(tmp_path, '[server]\nmode = "proxy"\nport = 0\n' + BASE)

    result = CliRunner().invoke(main, ["receiver", "serve", "--config", str(path)])

    assert result.exit_code == 1
    assert "manifest.json not found" in result.output
