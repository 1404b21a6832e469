"""``doorlock report ACCESS --out SITE``: the static HTML site for admins."""

from __future__ import annotations

from pathlib import Path

import click

from compiler.report import ReportError, load_published, load_stats, write_site
from compiler.revision import RevisionError, load_directory


@click.command("report")
@click.argument("access", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the site to; replaced as a whole on every run.")
@click.option("--stats", "stats", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Receiver database (SQLite) or a JSON export of it: last seen, unknown keys, lock status.")
@click.option("--published", "published", type=click.Path(exists=True, path_type=Path),
              help="manifest.json of the published build (or its directory): the bundle versions locks should run.")
def report(access: Path, out: Path, stats: Path | None, published: Path | None) -> None:
    """Write the admin site for the access repository ACCESS into --out.

    Pages per person and per lock, an access matrix and the unknown keys with the YAML to
    enrol them. Plain HTML and CSS: no JavaScript and nothing loaded from elsewhere.
    """
    try:
        repository = load_directory(access)
        statistics = load_stats(stats) if stats else None
        manifest = load_published(published) if published else None
        files = write_site(repository, out, statistics, manifest)
    except (ReportError, RevisionError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {len(files)} files to {out}; open {out / 'index.html'}")
