"""``doorlock receiver``: run the statistics receiver."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from receiver.config import ConfigError, load_config
from receiver.identity import ManifestError


@click.group(name="receiver")
def receiver() -> None:
    """Run the statistics receiver that locks push to."""


@receiver.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Receiver configuration file (TOML).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the listening address to this file once connections are accepted.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Minimum level of log messages on standard error.")
def serve(config_path: Path, ready_file: Path | None, log_level: str) -> None:
    """Accept pushes from locks until stopped with SIGTERM or Ctrl-C."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None

    from receiver.server import TLSSetupError, serve as run
    from receiver.store import StoreError

    try:
        run(config, ready_file)
    except (ManifestError, TLSSetupError, StoreError) as error:
        raise click.ClickException(str(error)) from None
    except (OSError, RuntimeError) as error:
        raise click.ClickException(f"receiver cannot start: {error}") from None
