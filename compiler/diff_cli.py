"""``doorlock diff BASE [HEAD]``: what a change does to who can open which door and when."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from compiler.diff import AccessSide, diff_access, format_markdown, read_signers
from compiler.revision import RevisionError, export_revision, load_directory


def load_side(spec: str | None, repo: Path, scratch: Path) -> AccessSide:
    """Load one side: a directory, a git revision of ``repo``, or (None) the working tree."""
    if spec is None:
        root = repo
        label = "working tree"
    elif Path(spec).is_dir():
        root = Path(spec)
        label = spec
    else:
        root = scratch
        commit = export_revision(repo, spec, root)
        label = f"{spec} ({commit[:12]})" if not commit.startswith(spec) else commit[:12]
    return AccessSide(label=label, repository=load_directory(root, label), signers=read_signers(root))


@click.command("diff")
@click.argument("base")
@click.argument("head", required=False)
@click.option("--repo", "repo", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="Access repository (or a directory inside a git repository) the revisions refer to.")
@click.option("--format", "output_format", type=click.Choice(["markdown", "json"]), default="markdown",
              show_default=True, help="Markdown for a pull-request comment, JSON for machines.")
@click.option("--base-label", help="Name shown for BASE in the output, e.g. 'origin/main (merge base)'.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the diff to this file instead of standard output.")
def diff(base: str, head: str | None, repo: Path, output_format: str, base_label: str | None,
         output: Path | None) -> None:
    """Show the access changes from BASE to HEAD.

    BASE and HEAD are git revisions of the access repository (branch, tag or commit) or
    directories. Without HEAD, BASE is compared with the working tree of --repo.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="doorlock-diff-") as scratch:
            base_side = load_side(base, repo, Path(scratch) / "base")
            if base_label:
                base_side.label = base_label
            head_side = load_side(head, repo, Path(scratch) / "head")
            result = diff_access(base_side, head_side)
    except RevisionError as error:
        raise click.ClickException(str(error)) from None

    if output_format == "json":
        text = json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"
    else:
        text = format_markdown(result)

    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
