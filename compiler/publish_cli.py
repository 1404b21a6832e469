"""``doorlock publish BUILD --to DIR``: swap a compiled build into the served directory atomically."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from compiler.publish import DEFAULT_KEEP, PublishError, PublishRejected
from compiler.publish import publish as publish_build


@click.command(name="publish")
@click.argument("build", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--to", "publish_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory nginx serves; its 'current' symlink points at the live release.")
@click.option("--keep", type=click.IntRange(min=1), default=DEFAULT_KEEP, show_default=True,
              help="Number of releases to keep, the live one included.")
def publish(build: Path, publish_dir: Path, keep: int) -> None:
    """Publish BUILD (the output of 'doorlock compile') as the new live release.

    Bundles whose bytes did not change keep their ETag. A bundle with a version lower than or
    equal to the live one but different bytes is rejected: compile again instead.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = publish_build(build, publish_dir, keep=keep)
    except PublishRejected as error:
        raise click.ClickException(f"rejected: {error}") from None
    except PublishError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"publishing failed: {error.filename}: {error.strerror}; "
                                   f"the live release is unchanged") from None

    if result.release is None:
        click.echo(f"nothing to publish: {build} is identical to the live release")
        return
    click.echo(f"published {result.release.name}: {len(result.changed)} changed, "
               f"{len(result.unchanged)} unchanged, {len(result.removed)} removed")
    for path in result.changed:
        click.echo(f"  changed   {path}")
    for path in result.removed:
        click.echo(f"  removed   {path}")
    if result.pruned:
        click.echo(f"deleted {len(result.pruned)} old release(s), keeping {keep}")
