"""Run a private nginx instance from a temporary prefix (tests and ``doorlock demo``).

In production the system's service manager runs nginx with the server block from
``doorlock nginx-config``. This module lets the test suite and the demo start the real nginx
binary on loopback without touching the system's configuration.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from compiler.nginx import render_standalone_config

__all__ = ["NginxNotFound", "NginxStartError", "NginxInstance", "find_nginx", "free_port",
           "NGINX_ENVIRONMENT_VARIABLE"]

log = logging.getLogger(__name__)

# Debian installs nginx to /usr/sbin, which is not on every user's PATH.
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

# Names the nginx binary to use instead of searching for one. Setting it to a path that does
# not exist makes nginx count as not installed (``doorlock demo`` then uses the development
# server), which is how a machine without nginx is tried out without uninstalling it.
NGINX_ENVIRONMENT_VARIABLE = "DOORLOCK_NGINX"


class NginxNotFound(RuntimeError):
    """nginx is not installed."""


class NginxStartError(RuntimeError):
    """nginx rejected the configuration or did not start listening; the message has its log."""


def find_nginx() -> str:
    """Return the path of the nginx binary or raise :class:`NginxNotFound`.

    ``$DOORLOCK_NGINX`` wins when it is set; otherwise nginx on ``PATH``, then the usual
    system locations.
    """
    chosen = os.environ.get(NGINX_ENVIRONMENT_VARIABLE)
    if chosen:
        if os.path.isfile(chosen) and os.access(chosen, os.X_OK):
            return chosen
        raise NginxNotFound(f"{NGINX_ENVIRONMENT_VARIABLE}={chosen} is not an executable file: point it at "
                            f"the nginx binary, or unset it to search PATH and /usr/sbin")
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in _CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise NginxNotFound("nginx is not installed: run 'make system-packages' "
                        "(or 'apt-get install nginx-light')")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class NginxInstance:
    """nginx running in the foreground from ``prefix`` with one included server block."""

    def __init__(self, prefix: str | Path, server_block: str, port: int, host: str = "127.0.0.1"):
        self.prefix = Path(prefix)
        self.server_block = server_block
        self.host = host
        self.port = port
        self.binary = find_nginx()
        self.process: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def write_config(self) -> None:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        server_path = self.prefix / "server.conf"
        server_path.write_text(self.server_block)
        self.config_path.write_text(render_standalone_config(server_path, self.prefix))

    def start(self, timeout: float = 10.0) -> None:
        """Check the configuration, start nginx and wait until it accepts connections."""
        self.write_config()
        command = [self.binary, "-p", str(self.prefix), "-c", str(self.config_path)]
        check = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True)
        if check.returncode != 0:
            raise NginxStartError(f"nginx rejected {self.config_path}:\n{check.stderr.strip()}")

        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NginxStartError(f"nginx exited with status {self.process.returncode}:\n{self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    log.info("nginx listening on %s:%d (prefix %s)", self.host, self.port, self.prefix)
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NginxStartError(f"nginx did not listen on {self.host}:{self.port} within {timeout} s:\n"
                              f"{self._log_tail()}")

    def reload(self, server_block: str | None = None) -> None:
        """Rewrite the server block (when given) and make nginx reload its configuration."""
        if server_block is not None:
            self.server_block = server_block
        self.write_config()
        self.process.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nginx (fast shutdown) and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("nginx did not stop within %s s; killing it", timeout)
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        log.info("nginx on %s:%d stopped", self.host, self.port)

    def __enter__(self) -> NginxInstance:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error log)"
