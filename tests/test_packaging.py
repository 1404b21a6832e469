"""The distribution as CI and pre-commit install it: a built wheel, not this checkout.

The pipeline templates run ``pip install ./.doorlock`` and the pre-commit hook installs the
repository the same way, so everything the commands read at run time (the JSON Schemas, the
report templates) must be inside the wheel. The test builds the wheel, installs it into an
empty directory and runs the commands from there, far from the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.access_samples import BASE_FILES, write_access

ROOT = Path(__file__).resolve().parent.parent

# Runs a doorlock command with the installed copy first on the path, so nothing is imported
# from the checkout (its editable install comes later on the path).
RUN_INSTALLED = """
import sys
sys.path.insert(0, sys.argv[1])
import compiler
assert compiler.__file__.startswith(sys.argv[1]), compiler.__file__
from compiler.cli import main
sys.argv = ["doorlock", *sys.argv[2:]]
main()
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path_factory.mktemp("source") / "doorlock"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__", "tests", "docs", "bench", "deploy"))
    build = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(build),
                    str(source)], check=True, capture_output=True, timeout=300)
    wheel = next(build.glob("doorlock-*.whl"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_INSTALLED, str(site), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_wheel_ships_schemas_and_templates(installed):
    shipped = {path.name for path in (installed / "compiler" / "schemas").glob("*.schema.json")}
    assert shipped == {path.name for path in (ROOT / "schemas").glob("*.schema.json")}
    assert (installed / "compiler" / "report_templates" / "person.html").is_file()


def test_installed_validate_reports_errors(installed, tmp_path):
    access = write_access(tmp_path / "access", {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace(
        "groups: [members]", "groups: [members, nosuchgroup]")})
    result = run_installed(installed, tmp_path, "validate", str(access))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "people/bob.yaml" in result.stdout
    assert "unknown group 'nosuchgroup'" in result.stdout
    assert "Traceback" not in result.stderr


def test_installed_validate_accepts_example(installed, tmp_path):
    result = run_installed(installed, tmp_path, "validate", str(ROOT / "access"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout


def test_installed_receiver_finds_its_schemas(installed, tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import receiver.app as app; "
            "assert app.__file__.startswith(sys.argv[1]); print(sorted(app.load_schemas()))")
    result = subprocess.run([sys.executable, "-c", code, str(installed)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "status" in result.stdout


def as_unprivileged(command: list[str]) -> list[str]:
    """Run ``command`` as a user that may not install packages (nobody, when we are root)."""
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return command


def test_missing_venv_package_named():
    # A Debian Python without python3-venv cannot create .venv, so make must name the package
    # to install instead of leaving a half-made environment behind.
    result = subprocess.run(
        as_unprivileged(["env", "PATH=/usr/bin:/bin", "PYTHON=/bin/false", "bash",
                         str(ROOT / "scripts" / "install-system-packages"), "venv"]),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "python3-venv" in result.stderr


def test_make_test_installs_packages_first(tmp_path):
    # What `make test` would run on a fresh checkout (no .venv yet), in order.
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # Under `make test` the outer make's MAKELEVEL would make this one print "Entering
    # directory /tmp/pytest-of-…" lines, which contain "pytest".
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", "test"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, env=environment)
    assert result.returncode == 0, result.stderr
    steps = result.stdout.splitlines()

    def position(fragment: str) -> int:
        return next(i for i, step in enumerate(steps) if fragment in step)

    assert position("install-system-packages venv") < position("-m venv .venv")
    assert position("-m venv .venv") < position("install-system-packages test") < position("pytest -q")
