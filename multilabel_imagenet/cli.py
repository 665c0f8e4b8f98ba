"""Command-line interface: parses arguments, calls library functions, prints. No logic lives here."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm import tqdm

from multilabel_imagenet import __version__, classes, images


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


@main.command("images")
@click.argument("root", type=click.Path(exists=True, path_type=Path))
@click.option("--layout", type=click.Choice(images.LAYOUTS), default="auto", show_default=True)
@click.option("--labels", type=click.Path(exists=True, path_type=Path), help="Ground truth for a flat val folder.")
@click.option("--check", is_flag=True, help="Decode every image and report the ones that fail.")
@click.option("--errors", type=click.Path(path_type=Path), help="With --check: write failures here as JSON lines.")
@click.option("--exif-transpose", is_flag=True, help="With --check: apply EXIF orientation while decoding.")
def images_command(
    root: Path, layout: str, labels: Path | None, check: bool, errors: Path | None, exif_transpose: bool
) -> None:
    """Scan an ImageNet folder (train, val, ImageNetV2) or a list file; with --check, decode every image."""
    try:
        records = images.open_source(root, layout, labels)
    except images.SourceError as err:
        raise click.ClickException(str(err)) from None
    labelled = sum(r.label is not None for r in records)
    click.echo(
        f"{root}: {len(records)} images ({images.detect_layout(root) if layout == 'auto' else layout} "
        f"layout), {labelled} with an original label"
    )
    if not check:
        return
    failures = [
        failure
        for _, _, failure in tqdm(images.iter_decoded(records, exif_transpose), total=len(records), unit="img")
        if failure is not None
    ]
    if errors is not None:
        errors.write_text("".join(json.dumps(f.to_dict()) + "\n" for f in failures), encoding="utf-8")
    for failure in failures[:20]:
        click.echo(f"  {failure.path}: {failure.reason}", err=True)
    click.echo(f"{len(records) - len(failures)} decoded, {len(failures)} failed")
    if failures:
        raise SystemExit(1)


@main.command("synthetic")
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--train", "num_train", default=64, show_default=True, help="Number of training scenes.")
@click.option("--val", "num_val", default=16, show_default=True, help="Number of validation scenes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--map-noise", default=0.5, show_default=True, help="Std of the noise on ReLabel-map logits.")
def synthetic_command(output: Path, num_train: int, num_val: int, seed: int, map_noise: float) -> None:
    """Write synthetic multi-object scenes as an ImageNet-style folder with ground truth and ReLabel maps."""
    from multilabel_imagenet.builder import synthetic

    with tqdm(total=num_train + num_val, unit="img", desc="scenes") as bar:
        synthetic.write_mini_imagenet(output, num_train, num_val, seed, map_noise, progress=bar.update)
    click.echo(f"wrote {num_train} train and {num_val} validation scenes to {output}")
    click.echo(f"  images: {output / 'train'} (train layout), {output / 'val'} with {output / 'val_labels.txt'}")
    click.echo(f"  ReLabel maps: {output / 'relabel_maps'}; ground truth: {output / 'ground_truth'}")
