"""Load and check the lock's TOML configuration before anything starts.

Every problem is a :class:`ConfigError` whose message names the file, the key, the value and
what to write instead. Relative paths are resolved against the directory of the config file.

Example::

    lock = "front-door"
    bundle_url = "https://bundles.example.org/bundles/front-door.json"
    # signers_url defaults to "../signers.json" relative to bundle_url
    ca_file = "ca.crt"
    client_cert = "front-door.crt"
    client_key = "front-door.key"
    root_keys = ["q6u0...base64 of the raw Ed25519 root public key...="]
    state_dir = "/var/lib/lockclient"
    receiver_url = "https://stats.example.org"
    poll_interval = 300
    push_interval = 60
    expired_policy = "break-glass-only"      # or "keep-last-bundle"
    max_bundle_validity_days = 31            # longer-lived bundles are rejected

    [reader]
    path = "tty:S0:pn532"

    [actuator]
    type = "gpio"                            # or "log"
    chip = "/dev/gpiochip0"
    line = 17
    active_low = false

The door hardware tables (``[door_sensor]``, ``[gpio]``, ``[door]``, ``[feedback]``,
``[health]``) are read by :mod:`lockclient.device_config`.
"""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from lockclient.device_config import DEVICE_TABLES, DeviceConfigError, DeviceSettings, parse_device

EXPIRED_POLICIES = ("break-glass-only", "keep-last-bundle")
# Downloaded bundles whose expires_at - issued_at is longer than this many days are rejected,
# because with a stolen signing key the bundle's own expiry is all that ends it while updates
# are withheld. The lock's bundle.valid_days (compiler: 1 to 90, default 7) must not be larger.
DEFAULT_MAX_BUNDLE_VALIDITY_DAYS = 31
MAX_BUNDLE_VALIDITY_DAYS_LIMIT = 366
# nfcpy's target notation: bit rate in kbit/s, then the technology letter.
_TARGET = re.compile(r"(106|212|424|848)[ABF]")
ACTUATOR_TYPES = ("log", "gpio")

_TOP_LEVEL_KEYS = {
    "lock", "bundle_url", "signers_url", "ca_file", "client_cert", "client_key", "root_keys",
    "state_dir", "receiver_url", "poll_interval", "push_interval", "expired_policy",
    "max_bundle_validity_days", "fetch", "reader", "actuator", "door_sensor", "spool", *DEVICE_TABLES,
}


class ConfigError(ValueError):
    """A missing or invalid setting; the message names the file, key and fix."""


@dataclass(frozen=True)
class FetchSettings:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 60.0
    max_bytes: int = 32 * 1024 * 1024
    backoff_initial: float = 5.0
    backoff_max: float = 900.0


@dataclass(frozen=True)
class ReaderSettings:
    path: str
    targets: tuple[str, ...] = ("106A", "106B", "212F")
    debounce_seconds: float = 1.0
    watchdog_seconds: float = 60.0
    reopen_initial: float = 1.0
    reopen_max: float = 60.0


@dataclass(frozen=True)
class GpioLine:
    chip: str
    line: int
    active_low: bool = False


@dataclass(frozen=True)
class ActuatorSettings:
    type: str = "log"
    gpio: GpioLine | None = None


@dataclass(frozen=True)
class SpoolSettings:
    max_items: int = 100_000
    batch_size: int = 500


@dataclass(frozen=True)
class Config:
    path: Path
    lock: str
    bundle_url: str
    signers_url: str
    ca_file: Path
    client_cert: Path
    client_key: Path
    root_keys: tuple[str, ...]
    state_dir: Path
    receiver_url: str | None
    poll_interval: float = 300.0
    push_interval: float = 60.0
    expired_policy: str = "break-glass-only"
    max_bundle_validity_days: int = DEFAULT_MAX_BUNDLE_VALIDITY_DAYS
    fetch: FetchSettings = field(default_factory=FetchSettings)
    reader: ReaderSettings = field(default_factory=lambda: ReaderSettings(path="usb"))
    actuator: ActuatorSettings = field(default_factory=ActuatorSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    # Door sensor, exit button, feedback lines, door behaviour and health pings.
    device: DeviceSettings = field(default_factory=DeviceSettings)

    @property
    def keep_expired(self) -> bool:
        return self.expired_policy == "keep-last-bundle"


class _Table:
    """One TOML table being read; every error names the config file and the dotted key."""

    def __init__(self, source: Path, data: dict, prefix: str = ""):
        self.source = source
        self.data = data
        self.prefix = prefix

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: setting {self.prefix}{key}: {problem}")

    def check_unknown(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise self.error(unknown[0], f"unknown setting; valid settings here are {', '.join(sorted(allowed))}")

    def table(self, key: str, required: bool = False) -> _Table | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, f"missing; add a [{self.prefix}{key}] table")
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table ([{self.prefix}{key}]), got {value!r}")
        return _Table(self.source, value, f"{self.prefix}{key}.")

    def string(self, key: str, default: str | None = None, required: bool = True) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            if required:
                raise self.error(key, "missing; add it as a quoted string")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}")
        return value

    def number(self, key: str, default: float, minimum: float, maximum: float | None = None) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, got {value!r}")
        if value < minimum or maximum is not None and value > maximum:
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise self.error(key, f"{value!r} is out of range; use at least {minimum}{upper}")
        return float(value)

    def integer(self, key: str, default: int | None, minimum: int) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise self.error(key, "missing; add it as a whole number")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {value!r}")
        if value < minimum:
            raise self.error(key, f"{value!r} is too small; use at least {minimum}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def url(self, key: str, required: bool = True) -> str | None:
        value = self.string(key, required=required)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise self.error(key, f"{value!r} must be an https:// URL with a host name")
        return value

    def existing_file(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise self.error(key, f"file {str(path)!r} does not exist or is not a regular file")
        return path

    def path(self, key: str) -> Path:
        value = self.string(key)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.source.parent / path
        return path


def _root_keys(table: _Table) -> tuple[str, ...]:
    value = table.data.get("root_keys")
    if not isinstance(value, list) or not value:
        raise table.error(
            "root_keys", "missing or empty; list the base64 root public keys, "
            "e.g. root_keys = [\"<contents of ROOT.pub>\"]",
        )
    keys = []
    for position, entry in enumerate(value):
        if not isinstance(entry, str):
            raise table.error(f"root_keys[{position}]", f"must be a base64 string, got {entry!r}")
        try:
            raw = base64.b64decode(entry.strip(), validate=True)
        except binascii.Error:
            raise table.error(f"root_keys[{position}]", f"{entry!r} is not valid base64") from None
        if len(raw) != 32:
            raise table.error(
                f"root_keys[{position}]",
                f"decodes to {len(raw)} bytes; an Ed25519 public key is 32 bytes (copy ROOT.pub exactly)",
            )
        keys.append(entry.strip())
    return tuple(keys)


def _max_bundle_validity_days(table: _Table) -> int:
    key = "max_bundle_validity_days"
    value = table.data.get(key, DEFAULT_MAX_BUNDLE_VALIDITY_DAYS)
    limit = MAX_BUNDLE_VALIDITY_DAYS_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise table.error(
            key, f"must be a whole number of days from 1 to {limit}, got {value!r}; use at least the "
            f"bundle.valid_days of this lock in the access repository (default 7), for example "
            f"{DEFAULT_MAX_BUNDLE_VALIDITY_DAYS}",
        )
    return value


def _gpio_line(table: _Table) -> GpioLine:
    return GpioLine(
        chip=table.string("chip", "/dev/gpiochip0"),
        line=table.integer("line", None, 0),
        active_low=table.boolean("active_low", False),
    )


def _reader(table: _Table | None, source: Path) -> ReaderSettings:
    if table is None:
        raise ConfigError(f"{source}: setting reader: missing; add a [reader] table with path = \"usb\"")
    table.check_unknown({"path", "targets", "debounce_seconds", "watchdog_seconds"})
    targets = table.data.get("targets", list(ReaderSettings.targets))
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise table.error("targets", f"must be a list of nfcpy target types like [\"106A\", \"212F\"], got {targets!r}")
    for position, target in enumerate(targets):
        if not _TARGET.fullmatch(target):
            raise table.error(
                f"targets[{position}]", f"{target!r} is not an nfcpy target type; use a bit rate (106, 212, "
                "424 or 848) and a technology letter (A, B or F), like \"106A\" or \"212F\"",
            )
    return ReaderSettings(
        path=table.string("path"),
        targets=tuple(targets),
        debounce_seconds=table.number("debounce_seconds", 1.0, 0.0, 60.0),
        watchdog_seconds=table.number("watchdog_seconds", 60.0, 5.0),
    )


def _actuator(table: _Table | None) -> ActuatorSettings:
    if table is None:
        return ActuatorSettings()
    table.check_unknown({"type", "chip", "line", "active_low"})
    kind = table.choice("type", ACTUATOR_TYPES, "log")
    if kind == "log":
        return ActuatorSettings(type="log")
    return ActuatorSettings(type="gpio", gpio=_gpio_line(table))


def _fetch(table: _Table | None) -> FetchSettings:
    if table is None:
        return FetchSettings()
    table.check_unknown({"connect_timeout", "read_timeout", "deadline", "max_bytes", "backoff_initial", "backoff_max"})
    return FetchSettings(
        connect_timeout=table.number("connect_timeout", 5.0, 0.1),
        read_timeout=table.number("read_timeout", 10.0, 0.1),
        deadline=table.number("deadline", 60.0, 1.0),
        max_bytes=table.integer("max_bytes", 32 * 1024 * 1024, 1024),
        backoff_initial=table.number("backoff_initial", 5.0, 0.01),
        backoff_max=table.number("backoff_max", 900.0, 0.01),
    )


def _spool(table: _Table | None) -> SpoolSettings:
    if table is None:
        return SpoolSettings()
    table.check_unknown({"max_items", "batch_size"})
    return SpoolSettings(
        max_items=table.integer("max_items", 100_000, 10),
        batch_size=table.integer("batch_size", 500, 1),
    )


def parse_config(data: dict, source: Path) -> Config:
    """Check a parsed TOML document and return the configuration."""
    top = _Table(source, data)
    top.check_unknown(_TOP_LEVEL_KEYS)

    bundle_url = top.url("bundle_url")
    signers_url = top.url("signers_url", required=False) or urljoin(bundle_url, "../signers.json")
    actuator = _actuator(top.table("actuator"))
    strike = (actuator.gpio.chip, actuator.gpio.line) if actuator.gpio is not None else None
    try:
        device = parse_device(data, source, strike=strike)
    except DeviceConfigError as error:
        raise ConfigError(str(error)) from None

    return Config(
        path=source,
        lock=top.string("lock"),
        bundle_url=bundle_url,
        signers_url=signers_url,
        ca_file=top.existing_file("ca_file"),
        client_cert=top.existing_file("client_cert"),
        client_key=top.existing_file("client_key"),
        root_keys=_root_keys(top),
        state_dir=top.path("state_dir"),
        receiver_url=top.url("receiver_url", required=False),
        poll_interval=top.number("poll_interval", 300.0, 1.0),
        push_interval=top.number("push_interval", 60.0, 1.0),
        expired_policy=top.choice("expired_policy", EXPIRED_POLICIES, "break-glass-only"),
        max_bundle_validity_days=_max_bundle_validity_days(top),
        fetch=_fetch(top.table("fetch")),
        reader=_reader(top.table("reader"), source),
        actuator=actuator,
        spool=_spool(top.table("spool")),
        device=device,
    )


def load_config(path: str | Path) -> Config:
    """Read and check the TOML file at ``path``; raise :class:`ConfigError` on any problem."""
    source = Path(path)
    try:
        text = source.read_bytes()
    except OSError as error:
        raise ConfigError(f"{source}: cannot read the configuration: {error.strerror}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: is not UTF-8 text; save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from None
    return parse_config(data, source.resolve())
