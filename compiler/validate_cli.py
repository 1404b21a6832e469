"""``doorlock validate [PATH]``: check an access repository and report every problem.

Exit status: 0 when there is no error (warnings allowed), 1 when there is at least one error,
2 for a usage error (unknown option, PATH missing).
"""

from __future__ import annotations

import sys

import click

from compiler.loader import check_repository
from compiler.problems import FORMATS, format_problems


@click.command(name="validate")
@click.argument("path", default="access", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="Output format: text for people, json for programs, github for GitHub Actions annotations.",
)
def validate(path: str, output_format: str) -> None:
    """Check the access repository at PATH (default: ./access) and report every problem.

    Exits 0 when there is no error (warnings are allowed), 1 when there are errors.
    """
    result = check_repository(path)
    click.echo(format_problems(result.problems, output_format, prefix=path), nl=False)
    sys.exit(0 if result.ok else 1)
