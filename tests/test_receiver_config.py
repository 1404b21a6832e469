"""The receiver's TOML configuration: every mistake is named with its file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler.cli import main
from receiver.config import ConfigError, load_config
from tests.receiver_harness import ReceiverSite

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


@pytest.fixture()
def site_config(tmp_path) -> tuple[ReceiverSite, str]:
    site = ReceiverSite(tmp_path / "site", {"front-door": []})
    return site, site.config_path.read_text()


def serve_with(site: ReceiverSite, text: str):
    site.config_path.write_text(text)
    return CliRunner().invoke(main, ["receiver", "serve", "--config", str(site.config_path)])


@pytest.mark.parametrize("key, replacement, expected", [
    ("certificate", "missing.crt", "[tls] certificate"),
    ("private_key", "front-door.key", "[tls] certificate"),
    ("client_ca", "missing-ca.crt", "[tls] client_ca"),
])
def test_serve_names_tls_file_that_cannot_be_loaded(site_config, key, replacement, expected):
    site, text = site_config
    lines = [f'{key} = "{site.certs_dir / replacement}"' if line.startswith(f"{key} =") else line
             for line in text.splitlines()]

    result = serve_with(site, "\n".join(lines))

    assert result.exit_code == 1
    assert expected in result.output
    assert replacement in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name, content", [("not-a-database.sqlite", b"just text"), ("a-file/receiver.sqlite", None)])
def test_serve_names_database_that_cannot_be_opened(site_config, name, content):
    site, text = site_config
    if content is not None:
        (site.directory / name).write_bytes(content)
    else:
        (site.directory / "a-file").write_text("a file where a directory should be")
    database = site.directory / name

    result = serve_with(site, text.replace(f'database = "{site.database}"', f'database = "{database}"'))

    assert result.exit_code == 1
    assert f"receiver database {database}" in result.output
    assert "Traceback" not in result.output
