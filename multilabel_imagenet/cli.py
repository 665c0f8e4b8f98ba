"""Command-line interface: parses arguments, calls library functions, prints. No logic lives here."""

from __future__ import annotations

import click

from multilabel_imagenet import __version__, classes


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="multilabel-imagenet")
def main() -> None:
    """Multi-label ImageNet: build soft labels, load the dataset, evaluate predictions."""


@main.command("classes")
@click.argument("query", required=False)
def classes_command(query: str | None) -> None:
    """List ImageNet-1k classes (index, wnid, name), or those matching QUERY (index, wnid or name part)."""
    indices = range(classes.NUM_CLASSES) if query is None else classes.lookup(query)
    if not indices:
        raise click.ClickException(f"no ImageNet-1k class matches {query!r}")
    for i in indices:
        click.echo(f"{i}\t{classes.wnid_of(i)}\t{', '.join(classes.synonyms(i))}")
