"""Receiver configuration, read from a TOML file.

Example (embedded TLS, the default)::

    [server]
    mode = "tls"                   # or "proxy": nginx terminates TLS and sends a header
    host = "0.0.0.0"
    port = 8443
    threads = 16

    [tls]                          # only in mode "tls"
    certificate = "receiver.crt"
    private_key = "receiver.key"
    client_ca = "ca.crt"           # lock certificates must chain to this CA

    [proxy]                        # only in mode "proxy"
    unix_socket = "/run/doorlock/receiver.sock"   # or host/port on loopback
    header = "X-Doorlock-Client-Cert"
    trusted_peers = ["127.0.0.1", "::1"]

    [data]
    manifest = "/srv/doorlock/publish/manifest.json"
    database = "/var/lib/doorlock/receiver.sqlite"

    [limits]
    max_body_bytes = 1048576
    max_items = 5000
    clock_tolerance_seconds = 300

Relative paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HEADER = "X-Doorlock-Client-Cert"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_ITEMS = 5000
DEFAULT_CLOCK_TOLERANCE = 300
DEFAULT_THREADS = 16

_SECTIONS = {
    "server": {"mode", "host", "port", "threads"},
    "tls": {"certificate", "private_key", "client_ca"},
    "proxy": {"unix_socket", "header", "trusted_peers"},
    "data": {"manifest", "database"},
    "limits": {"max_body_bytes", "max_items", "clock_tolerance_seconds"},
}


class ConfigError(Exception):
    """An invalid receiver configuration; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items: int = DEFAULT_MAX_ITEMS
    clock_tolerance_seconds: int = DEFAULT_CLOCK_TOLERANCE


@dataclass(frozen=True)
class ReceiverConfig:
    manifest: Path
    database: Path
    mode: str = "tls"
    host: str = "127.0.0.1"
    port: int = 8443
    threads: int = DEFAULT_THREADS
    certificate: Path | None = None
    private_key: Path | None = None
    client_ca: Path | None = None
    unix_socket: Path | None = None
    header: str = DEFAULT_HEADER
    trusted_peers: tuple[str, ...] = ("127.0.0.1", "::1")
    limits: Limits = field(default_factory=Limits)
    source: Path | None = None


def load_config(path: str | Path) -> ReceiverConfig:
    """Read and check a receiver configuration file; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    return parse_config(raw, path)


def parse_config(raw: dict, path: Path) -> ReceiverConfig:
    """Build a :class:`ReceiverConfig` from parsed TOML; ``path`` is used for messages and paths."""
    _reject_unknown_keys(raw, path)
    base = path.parent
    server = raw.get("server", {})
    tls = raw.get("tls", {})
    proxy = raw.get("proxy", {})
    data = raw.get("data", {})
    limits = raw.get("limits", {})

    mode = _string(server, "mode", "tls", path, "server")
    if mode not in ("tls", "proxy"):
        raise ConfigError(f"{path}: [server] mode = {mode!r} is invalid; use \"tls\" (the receiver "
                          "checks client certificates) or \"proxy\" (behind nginx)")

    for key in ("manifest", "database"):
        if key not in data:
            raise ConfigError(f"{path}: [data] {key} is missing; set it to a file path")

    config = ReceiverConfig(
        manifest=_path(data, "manifest", base, path, "data"),
        database=_path(data, "database", base, path, "data"),
        mode=mode,
        host=_string(server, "host", "127.0.0.1", path, "server"),
        port=_integer(server, "port", 8443, path, "server", minimum=0, maximum=65535),
        threads=_integer(server, "threads", DEFAULT_THREADS, path, "server", minimum=1, maximum=1024),
        certificate=_path(tls, "certificate", base, path, "tls"),
        private_key=_path(tls, "private_key", base, path, "tls"),
        client_ca=_path(tls, "client_ca", base, path, "tls"),
        unix_socket=_path(proxy, "unix_socket", base, path, "proxy"),
        header=_string(proxy, "header", DEFAULT_HEADER, path, "proxy"),
        trusted_peers=_peers(proxy, path),
        limits=Limits(
            max_body_bytes=_integer(limits, "max_body_bytes", DEFAULT_MAX_BODY_BYTES, path, "limits",
                                    minimum=1024, maximum=64 * 1024 * 1024),
            max_items=_integer(limits, "max_items", DEFAULT_MAX_ITEMS, path, "limits",
                               minimum=1, maximum=1_000_000),
            clock_tolerance_seconds=_integer(limits, "clock_tolerance_seconds", DEFAULT_CLOCK_TOLERANCE,
                                             path, "limits", minimum=0, maximum=86400),
        ),
        source=path,
    )
    _check_mode(config, path)
    return config


def _check_mode(config: ReceiverConfig, path: Path) -> None:
    if config.mode == "tls":
        for key in ("certificate", "private_key", "client_ca"):
            if getattr(config, key) is None:
                raise ConfigError(f"{path}: [tls] {key} is missing; mode \"tls\" needs the server "
                                  "certificate, its private key and the CA that issued the lock certificates")
        return

    # Behind a proxy the identity header is trusted, so nothing but the proxy may reach the
    # receiver: a Unix socket, or a TCP port bound to loopback.
    if config.unix_socket is None and not _is_loopback(config.host):
        raise ConfigError(f"{path}: [server] host = {config.host!r} is not a loopback address; in mode "
                          "\"proxy\" the receiver trusts the identity header, so listen on 127.0.0.1, ::1 "
                          "or a [proxy] unix_socket")
    for peer in config.trusted_peers:
        if not _is_loopback(peer):
            raise ConfigError(f"{path}: [proxy] trusted_peers contains {peer!r}, which is not a loopback "
                              "address; only a proxy on the same host can be trusted")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reject_unknown_keys(raw: dict, path: Path) -> None:
    for section, value in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]; expected one of "
                              f"{', '.join(sorted(_SECTIONS))}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {section} must be a [{section}] table")
        unknown = set(value) - _SECTIONS[section]
        if unknown:
            raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} in [{section}]; expected one of "
                              f"{', '.join(sorted(_SECTIONS[section]))}")


def _string(table: dict, key: str, default: str, path: Path, section: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: [{section}] {key} must be a non-empty string, got {value!r}")
    return value


def _integer(table: dict, key: str, default: int, path: Path, section: str, *, minimum: int, maximum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{path}: [{section}] {key} = {value!r} is invalid; use an integer from "
                          f"{minimum} to {maximum}")
    return value


def _path(table: dict, key: str, base: Path, path: Path, section: str) -> Path | None:
    if key not in table:
        return None
    value = _string(table, key, "", path, section)
    return (base / value) if not Path(value).is_absolute() else Path(value)


def _peers(table: dict, path: Path) -> tuple[str, ...]:
    value = table.get("trusted_peers", ["127.0.0.1", "::1"])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{path}: [proxy] trusted_peers must be a list of IP address strings")
    return tuple(value)
