"""``doorlock explain``: the decision for a key or person at a lock and time, and the rules behind it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from compiler import explain as explanation
from compiler.revision import RevisionError, load_directory

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


@click.command("explain")
@click.argument("access", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".")
@click.option("--lock", "lock_name", required=True, help="Name of the lock.")
@click.option("--key", "hwid", help="Hardware id of the key (any accepted spelling).")
@click.option("--person", "username", help="Username; every key of the person is checked.")
@click.option("--at", "at", default=None,
              help="Time to decide for: ISO 8601 with offset or Z (absolute) or without (lock's local time). Default: now.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Plain text for people, JSON for machines.")
def explain(access: Path, lock_name: str, hwid: str | None, username: str | None,
                    at: str | None, output_format: str) -> None:
    """Explain whether a key or person opens LOCK at a time, step by step.

    Exit code 0 when allowed, 1 when denied, 2 when the request cannot be explained.
    """
    try:
        repository = load_directory(access)
        lock = repository.locks.get(lock_name)
        zone = lock.timezone if lock else "UTC"
        instant = int(time.time()) if at is None else explanation.parse_instant(at, zone)
        result = explanation.explain(repository, lock_name, instant, hwid=hwid, username=username)
    except (explanation.ExplainError, RevisionError) as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_USAGE)

    if output_format == "json":
        click.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(explanation.format_text(result), nl=False)
    sys.exit(EXIT_ALLOWED if result.allowed else EXIT_DENIED)

