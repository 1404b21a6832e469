"""``doorlock demo`` as a newcomer runs it: on a machine without nginx it uses the development
server, prints every step of the story, and leaves no process and no temporary file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.nginx_run import NGINX_ENVIRONMENT_VARIABLE, NginxNotFound, find_nginx

DOORLOCK = Path(sys.executable).with_name("doorlock")


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


def _demo_environment(tmp_path: Path, nginx: str) -> dict[str, str]:
    environment = dict(os.environ)
    environment["TMPDIR"] = str(tmp_path)  # the demo's temporary directory lands here
    environment[NGINX_ENVIRONMENT_VARIABLE] = nginx
    return environment


def test_find_nginx_environment_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(NGINX_ENVIRONMENT_VARIABLE, str(tmp_path / "no-nginx-here"))
    with pytest.raises(NginxNotFound, match=NGINX_ENVIRONMENT_VARIABLE):
        find_nginx()

    monkeypatch.delenv(NGINX_ENVIRONMENT_VARIABLE)
    installed = find_nginx()
    monkeypatch.setenv(NGINX_ENVIRONMENT_VARIABLE, installed)
    assert find_nginx() == installed


@pytest.mark.slow
def test_demo_without_nginx_uses_development_server(tmp_path):
    result = subprocess.run([str(DOORLOCK), "demo"], env=_demo_environment(tmp_path, str(tmp_path / "no-nginx")),
                            cwd=tmp_path, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    output = result.stdout

    assert result.returncode == 0, output + result.stderr
    assert "bundle hosting: devserver (" in output
    assert "the DEVELOPMENT server" in output
    assert "development server (not for production; use nginx)" in result.stderr
    for step in ("1. ", "2. ", "3. ", "4. ", "5. "):
        assert f"\n{step}" in output
    assert "member card 04:…:80: OPEN (granted)" in output
    assert "unknown card 04:…:44: DENIED" in output
    assert "'doorlock stats unknown-keys' lists 04:…:44 at front-door" in output
    assert "same card: DENIED" in output
    assert "publish to first denial:" in output
    assert "/bundles/front-door.json -> 403, its own bundle -> 200" in output
    assert "offline: card 04:…:81 OPEN, card 04:…:80 DENIED" in output
    assert "Traceback" not in output + result.stderr
    assert list(tmp_path.glob("doorlock-demo-*")) == []
    assert _processes_mentioning(str(tmp_path)) == []


def test_demo_forced_nginx_missing_explains(tmp_path):
    result = subprocess.run([str(DOORLOCK), "demo", "--hosting", "nginx"],
                            env=_demo_environment(tmp_path, str(tmp_path / "no-nginx")),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    assert result.returncode == 1
    assert "--hosting devserver" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.glob("doorlock-demo-*")) == []
