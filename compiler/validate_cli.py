"""``doorlock validate [PATH]``: check an access repository and report every problem.

Exit status: 0 when there is no error (warnings allowed), 1 when there is at least one error,
2 for a usage error (unknown option, PATH missing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from compiler.loader import check_repository
from compiler.problems import FORMATS, format_problems


# A directory with any of these is taken for an access repository when PATH is omitted.
REPOSITORY_DIRECTORIES = ("locks", "people", "groups", "schedules")


def default_path() -> str:
    """Pick the repository when PATH is omitted: ./access, else the current directory if it is one."""
    if Path("access").is_dir():
        return "access"
    if any(Path(name).is_dir() for name in REPOSITORY_DIRECTORIES):
        return "."
    raise click.UsageError(
        f"no access repository here: {Path.cwd()} has no access/ directory and none of "
        f"{', '.join(name + '/' for name in REPOSITORY_DIRECTORIES)}; "
        "pass the path, e.g. 'doorlock validate path/to/access'"
    )


@click.command(name="validate")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="Output format: text for people, json for programs, github for GitHub Actions annotations.",
)
def validate(path: str | None, output_format: str) -> None:
    """Check the access repository at PATH and report every problem.

    Without PATH: ./access if it exists, else the current directory when it has locks/,
    people/, groups/ or schedules/. Exits 0 when there is no error (warnings are allowed),
    1 when there are errors.
    """
    if path is None:
        path = default_path()
    result = check_repository(path)
    click.echo(format_problems(result.problems, output_format, prefix=path), nl=False)
    sys.exit(0 if result.ok else 1)
