"""``lockclient``: run the lock daemon, show its state, and check a card without opening.

Exit codes: 0 success (``check``: the key would open), 1 ``check``: the key would be denied,
2 invalid configuration or arguments, 75 the daemon stopped because the reader hung.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from datetime import datetime, timezone

import click

from lockclient.clock import BEHIND_TOLERANCE_SECONDS
from lockclient.config import Config, ConfigError, load_config

EXIT_DENIED = 1
EXIT_USAGE = 2


def _load(config_path: str) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)


def _storage(config: Config):
    from lockclient import dsse
    from lockclient.storage import Storage

    root_keys = {}
    for encoded in config.root_keys:
        public_key = dsse.load_public_key(encoded)
        root_keys[dsse.key_id(public_key)] = public_key
    storage = Storage(config.state_dir, config.lock, root_keys)
    storage.load(time.time(), cleanup=False)
    return storage


def _trusted_clock(storage):
    from lockclient.clock import Clock

    clock = Clock(floor=storage.clock_floor)
    clock.observe_stored(*storage.stored_documents(), storage.bundle_accepted_at)
    return clock


def _trusted_now(storage) -> float:
    return _trusted_clock(storage).now()


def _parse_at(value: str) -> float:
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time; use ISO 8601 like 2026-12-04T18:30:00Z",
                                 param_hint="--at") from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone; add Z for UTC or an offset like +01:00",
                                 param_hint="--at")
    return parsed.timestamp()


@click.group()
@click.version_option(package_name="doorlock")
def main() -> None:
    """Run, inspect and query the doorlock lock daemon."""


config_option = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="Path of the lock's TOML configuration file.",
)


@main.command()
@config_option
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Logging threshold; DEBUG logs full card UIDs.")
def run(config_path: str, log_level: str) -> None:
    """Run the daemon: read cards, open the door, fetch bundles, push statistics."""
    config = _load(config_path)
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    from lockclient.daemon import LockDaemon, StartupError
    from lockclient.gpio import GpioError

    try:
        code = LockDaemon(config).run()
    except (StartupError, GpioError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(config_path: str, as_json: bool) -> None:
    """Show the stored bundle, last fetch, clock floor and spool size."""
    config = _load(config_path)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(levelname)s: %(message)s")
    from lockclient.bundle import format_time
    from lockclient.spool import SPOOL_FILE

    storage = _storage(config)
    clock = _trusted_clock(storage)
    bundle = storage.bundle.document if storage.bundle else None
    expired = bundle.is_expired(clock.now()) if bundle else None
    spool_path = config.state_dir / SPOOL_FILE
    spool = _spool_sizes(spool_path) if spool_path.exists() else None
    report = {
        "lock": config.lock,
        "bundle_version": bundle.version if bundle else None,
        "bundle_sha256": bundle.sha256 if bundle else None,
        "bundle_issued_at": format_time(bundle.issued_at) if bundle else None,
        "bundle_expires_at": format_time(clock.effective_expiry(bundle.expires_at)) if bundle else None,
        "bundle_signed_expiry": format_time(bundle.expires_at) if bundle else None,
        "bundle_expired": expired,
        "expired_policy": config.expired_policy,
        "keys": len(bundle.keys) if bundle else None,
        "signers_version": storage.signers.document.version if storage.signers else None,
        "last_fetch": storage.state.get("last_fetch"),
        "last_rejected": storage.state.get("last_rejected"),
        "clock": format_time(clock.system_time()),
        "clock_floor": format_time(clock.floor) if clock.floor else None,
        "clock_behind_floor": clock.system_time() < clock.floor - BEHIND_TOLERANCE_SECONDS,
        "spool": spool,
        "warnings": _warnings(config, bundle, expired, clock, spool),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, value in report.items():
        if name != "warnings":
            click.echo(f"{name:18} {_plain(value)}")
    for warning in report["warnings"]:
        click.echo(f"WARNING: {warning}")


def _warnings(config: Config, bundle, expired: bool | None, clock, spool: dict | None) -> list[str]:
    """Return what an operator must act on, in plain sentences."""
    from lockclient.bundle import format_time

    warnings = []
    if bundle is None:
        warnings.append("no valid bundle is stored: every tap is denied until one is fetched")
    elif expired and config.keep_expired:
        warnings.append(f"bundle version {bundle.version} expired at {format_time(bundle.expires_at)} and is "
                        "STILL USED for all keys (expired_policy = keep-last-bundle)")
    elif expired:
        warnings.append(f"bundle version {bundle.version} expired at {format_time(bundle.expires_at)}: "
                        "only break-glass keys open")
    if clock.system_time() < clock.floor - BEHIND_TOLERANCE_SECONDS:
        warnings.append(f"the system clock is {int(clock.floor - clock.system_time())} s behind the clock floor; "
                        "decisions use the floor (check NTP or the real-time clock)")
    if spool and spool.get("rejected"):
        warnings.append(f"the receiver rejected statistics for good ({spool['rejected']} items lost); the last "
                        f"rejected batches are in table rejected_batches of {config.state_dir / 'spool.sqlite3'}")
    return warnings


def _plain(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{key}={_plain(item)}" for key, item in value.items())
    return str(value)


def _spool_sizes(path) -> dict:
    try:
        database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as error:
        return {"error": str(error)}
    try:
        sizes = {}
        for table in ("unknown_keys", "last_seen", "events"):
            sizes[table] = database.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        sizes["outbox"] = database.execute("SELECT coalesce(sum(items), 0) FROM outbox").fetchone()[0]
        counters = dict(database.execute("SELECT name, value FROM counters").fetchall())
        sizes["dropped"] = counters.get("dropped", 0)
        sizes["rejected"] = counters.get("rejected", 0)
        if database.execute("SELECT 1 FROM sqlite_master WHERE name = 'rejected_batches'").fetchone():
            last = database.execute(
                "SELECT batch_id, kind, status, error FROM rejected_batches ORDER BY at DESC, rowid DESC LIMIT 1"
            ).fetchone()
            if last is not None:
                sizes["last_rejected_batch"] = f"{last[1]} batch {last[0]}: {last[2]} {last[3]}"
        return sizes
    except sqlite3.Error as error:
        return {"error": str(error)}
    finally:
        database.close()


@main.command()
@click.argument("hwid")
@click.option("--at", "at_text", help="Decide for this time (ISO 8601 with zone) instead of now.")
@config_option
def check(hwid: str, at_text: str | None, config_path: str) -> None:
    """Decide HWID against the stored bundle without opening the door."""
    config = _load(config_path)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(levelname)s: %(message)s")
    from lockclient.bundle import decide, format_time
    from lockclient.hwid import InvalidHardwareId, normalize_hwid

    try:
        canonical = normalize_hwid(hwid)
    except InvalidHardwareId as error:
        raise click.BadParameter(str(error), param_hint="HWID") from None
    storage = _storage(config)
    instant = _parse_at(at_text) if at_text else _trusted_now(storage)
    if storage.bundle is None:
        click.echo(f"denied: no valid bundle is stored in {config.state_dir}")
        sys.exit(EXIT_DENIED)
    decision = decide(storage.bundle.document, canonical, instant, config.keep_expired)
    verdict = "open" if decision.allowed else "denied"
    click.echo(f"{verdict}: {canonical} at {format_time(instant)}: {decision.reason} ({decision.code})")
    sys.exit(0 if decision.allowed else EXIT_DENIED)


if __name__ == "__main__":
    main()
