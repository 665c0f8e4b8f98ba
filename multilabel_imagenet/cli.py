"""Command-line interface: parses arguments, calls library functions, prints. No logic lives here."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import click
from tqdm import tqdm

from multilabel_imagenet import __version__, classes, images, progress


class _Main(click.Group):
    """The command group: a user error is one ``Error:`` line; with ``--debug`` (or ``MLIN_DEBUG=1``) the
    traceback of the exception behind it is printed first."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException as err:
            cause = err.__cause__ or err.__context__
            if (ctx.obj or {}).get("debug") and cause is not None:
                traceback.print_exception(cause)
            raise


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="multilabel-imagenet")
@click.option(
    "--debug", is_flag=True, envvar="MLIN_DEBUG", help="Show the traceback behind an error (or set MLIN_DEBUG=1)."
)
@click.option("-v", "--verbose", count=True, help="Log more: -v progress messages, -vv debugging detail.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, errors only (TQDM_DISABLE=1 also turns bars off).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """Multi-label ImageNet: build soft labels, load the dataset, evaluate predictions."""
    ctx.obj = {"debug": debug}
    progress.configure(verbose, quiet)


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
        for _, _, failure in progress.bar(images.iter_decoded(records, exif_transpose), total=len(records), unit="img")
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

    with progress.bar(total=num_train + num_val, unit="img", desc="scenes") as bar:
        synthetic.write_mini_imagenet(output, num_train, num_val, seed, map_noise, progress=bar.update)
    click.echo(f"wrote {num_train} train and {num_val} validation scenes to {output}")
    click.echo(f"  images: {output / 'train'} (train layout), {output / 'val'} with {output / 'val_labels.txt'}")
    click.echo(f"  ReLabel maps: {output / 'relabel_maps'}; ground truth: {output / 'ground_truth'}")


# --- build: the whole pipeline and each stage (library: multilabel_imagenet.builder.pipeline) ---


def _build_options(command):
    """The options every `build` command shares."""
    options = [
        click.option(
            "--images",
            type=click.Path(exists=True, path_type=Path),
            help="ImageNet split folder (or list file). Omitted: the synthetic demo.",
        ),
        click.option("--split", type=click.Choice(["train", "validation"]), default="train", show_default=True),
        click.option("--layout", type=click.Choice(images.LAYOUTS), default="auto", show_default=True),
        click.option(
            "--labels", type=click.Path(exists=True, path_type=Path), help="Ground truth of a flat val folder."
        ),
        click.option(
            "--relabel-maps",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="ReLabel maps folder (<wnid>/<image>.pt), for select on the train split.",
        ),
        click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Dataset folder to write."),
        click.option(
            "--work-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Resumable work directory [default: <output>-work].",
        ),
        click.option("--preset", type=click.Choice(["paper", "synthetic"]), default="paper", show_default=True),
        click.option(
            "--config",
            "config_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="YAML/JSON build configuration (see `build config`); overrides --preset.",
        ),
        click.option(
            "--labeler-checkpoint",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Reuse a trained labeler (skips select and train-labeler).",
        ),
        click.option(
            "--proposals-from",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="CutLER's COCO JSON of MaskCut proposals: discover imports it instead of running MaskCut.",
        ),
        click.option("--shard", help="I/N: process every N-th shard from I (SLURM arrays); package merges them."),
        click.option("--runner", type=click.Choice(["local", "ray"]), default="local", show_default=True),
        click.option(
            "--retry-errors",
            is_flag=True,
            help="Try again the images recorded as failed in complete shards, and redo what depended on them.",
        ),
        click.option("--device", default="auto", show_default=True, help="cuda, cpu or auto."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _make_build(opts: dict):
    from multilabel_imagenet.builder import pipeline, settings

    if opts["images"] is None or opts["output"] is None:
        raise click.UsageError("--images and --output are needed (run `multilabel-imagenet build` alone for the demo)")
    config = (
        settings.BuildConfig.load(opts["config_file"])
        if opts["config_file"]
        else settings.BuildConfig.preset(opts["preset"])
    )
    work_dir = opts["work_dir"] or opts["output"].with_name(opts["output"].name + "-work")
    inputs = settings.BuildInputs(
        images=opts["images"],
        split=opts["split"],
        output=opts["output"],
        work_dir=work_dir,
        relabel_maps=opts["relabel_maps"],
        layout=opts["layout"],
        labels=opts["labels"],
        labeler_checkpoint=opts["labeler_checkpoint"],
        proposals_from=opts["proposals_from"],
        device=opts["device"],
    )
    return pipeline.Build(inputs, config, shard=opts["shard"], progress=not opts["quiet"])


def _run_stages(opts: dict, stages: tuple[str, ...]) -> None:
    try:
        build = _make_build(opts)
        if opts["retry_errors"]:
            from multilabel_imagenet.builder import retry

            retried = retry.retry_errors(build)
            if not opts["quiet"]:
                click.echo(retried.summary())
        if opts["runner"] == "ray":
            from multilabel_imagenet.builder import ray_runner

            ray_runner.run(build, stages, opts["shard"])
        else:
            build.run(stages)
    except (ValueError, FileNotFoundError, images.SourceError, images.ImageReadError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:  # a full disk (ENOSPC, EDQUOT), a read-only or vanished folder...
        raise click.ClickException(
            f"{err}; every complete shard and file is kept whole, so fix this and rerun the same command"
        ) from None
    if not opts["quiet"]:
        click.echo(build.summary())
    if "package" in stages:
        _print_load_hint(build.inputs.output)
    elif stages:
        click.echo(f"{', '.join(stages)}: complete for the shards of this worker; work dir {build.inputs.work_dir}")


def _print_load_hint(folder: Path) -> None:
    folder = folder.resolve()
    click.echo(f"dataset written to {folder}")
    click.echo("load it with:")
    click.echo(f'  from datasets import load_dataset; ds = load_dataset("{folder}", "labels")')
    click.echo(f'  import multilabel_imagenet; ds = multilabel_imagenet.load("{folder}")')


@main.group("build", invoke_without_command=True)
@_build_options
@click.pass_context
def build_group(ctx: click.Context, **opts) -> None:
    """Build the multi-label dataset: discover -> select -> train-labeler -> label -> package.

    With no --images, runs the whole build on bundled synthetic scenes on CPU (a few minutes) and prints where
    the dataset is. Each stage also runs alone: `multilabel-imagenet build STAGE ...`.
    """
    if ctx.invoked_subcommand is not None:
        return
    if opts["images"] is None:
        from multilabel_imagenet.builder import demo

        root = opts["output"] or Path("multilabel-imagenet-demo")
        folder = demo.build_synthetic_demo(root, device=opts["device"], progress=not opts["quiet"])
        _print_load_hint(folder)
        return
    if opts["shard"]:
        raise click.UsageError(
            "--shard I/N runs one stage's shards, and train-labeler and package need every shard of the stage "
            "before them. Run, with the same options: `build discover --shard I/N` on every worker, then `build "
            "select --shard I/N` (train), `build train-labeler` once, `build label --shard I/N` on every worker, and "
            "`build package` once"
        )
    _run_stages(opts, ("discover", "select", "train-labeler", "label", "package"))


def _stage_command(name: str, help_text: str) -> None:
    @build_group.command(name, help=help_text)
    @_build_options
    def command(**opts) -> None:
        _run_stages(opts, (name,))


_stage_command("discover", "MaskCut proposals for every image and configuration, merged and deduplicated.")
_stage_command("select", "Score proposals on ReLabel maps; confident ones become labeler training samples.")
_stage_command("train-labeler", "Pool the selected samples' features and train the region labeler (resumable).")
_stage_command("label", "The labeler's top-k classes for every proposal and the whole image.")
_stage_command("package", "Aggregate all built splits of the work directory into the dataset folder.")


@build_group.command("config")
@click.option("--preset", type=click.Choice(["paper", "synthetic"]), default="paper", show_default=True)
@click.option(
    "--profile",
    type=click.Choice(["paper", "authors"]),
    default="paper",
    show_default=True,
    help="The paper's text or the authors' released code where they differ (docs/build.md, Profiles).",
)
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
def build_config_command(preset: str, profile: str, fmt: str) -> None:
    """Print a full build configuration with the preset's defaults and the profile's settings (edit it and pass it
    with --config)."""
    from multilabel_imagenet.builder import settings

    click.echo(settings.BuildConfig.preset(preset).with_profile(profile).dumps(fmt), nl=False)


_checkpoint_option = click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labeler checkpoint (safetensors) from `build train-labeler`.",
)


@main.command("filter-proposals")
@click.argument("coco_json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--images",
    "images_root",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the COCO file's file_name entries are relative to.",
)
@_checkpoint_option
@click.option(
    "--min-score",
    default=0.5,
    show_default=True,
    help="Drop masks whose top-1 probability is lower (the paper: 0.3 or 0.5).",
)
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", default="cpu", show_default=True)
def filter_proposals_command(
    coco_json: Path, images_root: Path, checkpoint: Path, min_score: float, output: Path, device: str
) -> None:
    """Drop proposals of a CutLER-style COCO JSON that the region labeler is unsure of (paper Supp. F.4)."""
    from multilabel_imagenet.builder import filter_proposals

    n_images = len(json.loads(coco_json.read_text(encoding="utf-8"))["images"])
    try:
        with progress.bar(total=n_images, unit="img", desc="filter") as bar:
            stats = filter_proposals.filter_coco(
                coco_json, images_root, checkpoint, min_score, output, device, progress=bar.update
            )
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"{stats['removed']} of {stats['masks']} masks removed ({100 * stats['removed_fraction']:.1f}%), "
        f"{stats['kept']} kept; {stats['images_not_decoded']} images could not be decoded; wrote {output}"
    )


@main.command("label-maps")
@click.option("--images", "images_root", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--layout", type=click.Choice(images.LAYOUTS), default="auto", show_default=True)
@_checkpoint_option
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", default=15, show_default=True, help="Cells per side (ReLabel: 15).")
@click.option("--device", default="cpu", show_default=True)
def label_maps_command(images_root: Path, layout: str, checkpoint: Path, output: Path, size: int, device: str) -> None:
    """Write ReLabel-style [2, 5, S, S] label maps computed by our labeler, one .pt per image (Supp. F.3)."""
    from multilabel_imagenet.builder import label_maps

    try:
        records = images.open_source(images_root, layout)
        with progress.bar(total=len(records), unit="img", desc="label maps") as bar:
            stats = label_maps.write_label_maps(records, checkpoint, output, size, device, progress=bar.update)
    except (ValueError, FileNotFoundError, images.SourceError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"{stats['written']} maps written, {stats['already_there']} already there, {stats['failed']} images "
        f"failed (listed in {output / 'errors.jsonl'})"
    )


# --- browsing: `show` and `label-regions` (library: multilabel_imagenet.browse, builder.regions) ---

_revision_option = click.option(
    "--revision", help="With a Hub repo id as the dataset: the tag or commit to read (e.g. v1.0.0, or main)."
)


@main.command("show")
@click.argument("dataset")
@_revision_option
@click.option(
    "--images",
    "images_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding train/ and val/, which `path` is relative to [not needed for the synthetic demo].",
)
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "validation"]), help="[default: all]")
@click.option("--ids", multiple=True, help="Image ids to show (repeatable, or comma-separated).")
@click.option("--sample", type=int, help="Show this many images drawn at random.  [default: 24 without --ids]")
@click.option("--seed", default=0, show_default=True, help="Seed of --sample.")
@click.option("--min-labels", default=0, show_default=True, help="Only images with at least this many labels.")
@click.option("--disagreeing", is_flag=True, help="Only images whose top soft class is not the original label.")
@click.option("--benchmark", "-b", "bench_names", multiple=True, help="Benchmark to mark agreement with (e.g. real).")
@click.option(
    "--benchmark-labels",
    multiple=True,
    metavar="[NAME=]FILE",
    help="Label file of a --benchmark (ReaL: timm's bundled real.json when omitted). See `benchmarks list`.",
)
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Gallery folder.")
def show_command(
    dataset: str,
    revision: str | None,
    images_root: Path | None,
    splits: tuple[str, ...],
    ids: tuple[str, ...],
    sample: int | None,
    seed: int,
    min_labels: int,
    disagreeing: bool,
    bench_names: tuple[str, ...],
    benchmark_labels: tuple[str, ...],
    output: Path,
) -> None:
    """Write a static HTML gallery of DATASET (a folder or a Hub repo id): masks, soft labels, agreement marks."""
    from multilabel_imagenet.browse import gallery, source
    from multilabel_imagenet.evaluation import load_benchmarks

    wanted = [i for value in ids for i in value.split(",") if i] or None
    if wanted is not None and sample is not None:
        raise click.UsageError("give --ids or --sample, not both")
    try:
        view = source.DatasetView(dataset, revision)
        benches = load_benchmarks(bench_names, _label_files(benchmark_labels, bench_names))
        with progress.bar(unit="img", desc="gallery") as bar:
            result = gallery.write_gallery(
                view,
                output,
                images_root,
                splits=splits or None,
                ids=wanted,
                sample=sample,
                filters=gallery.Filters(min_labels, disagreeing),
                benchmarks=benches,
                seed=seed,
                progress=bar.update,
            )
    except (*_evaluation_errors(), ValueError, FileNotFoundError, FileExistsError) as err:
        raise _failure(err) from None
    if result.not_matching:
        click.echo(f"{len(result.not_matching)} of the ids do not pass the filters: {', '.join(result.not_matching)}")
    click.echo(f"{result.cards} images ({result.matched} pass the filters); open {result.index.resolve()}")


@main.command("label-regions")
@_checkpoint_option
@click.option(
    "--weights",
    type=click.Path(exists=True, path_type=Path),
    help="Local weights of the labeler's backbone (safetensors file or transformers folder).",
)
@click.option(
    "--images",
    "images_root",
    type=click.Path(exists=True, path_type=Path),
    help="Images to pick from: a folder in any layout of `multilabel-imagenet images`, or a list file.",
)
@click.option("--layout", type=click.Choice(images.LAYOUTS), default="auto", show_default=True)
@click.option("--dataset", help="Dataset folder or Hub repo id whose stored proposals to offer (matched by image id).")
@_revision_option
@click.option("--maskcut", "maskcut_preset", help="Run this MaskCut preset on request (e.g. synthetic, cutler, paper).")
@click.option("--top-k", default=10, show_default=True, help="Classes shown per region.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback: this machine only)."
)
@click.option("--port", default=8765, show_default=True, help="Port (0: any free port).")
@click.option("--device", default="cpu", show_default=True)
def label_regions_command(
    checkpoint: Path,
    weights: Path | None,
    images_root: Path | None,
    layout: str,
    dataset: str | None,
    revision: str | None,
    maskcut_preset: str | None,
    top_k: int,
    host: str,
    port: int,
    device: str,
) -> None:
    """Start a local web app: open an image, draw a box or pick a proposal, see the labeler's ranked classes.

    Without --images, the images of --dataset are offered (found as `show` finds them).
    """
    from multilabel_imagenet.browse import source, webapp
    from multilabel_imagenet.builder import regions

    try:
        view = source.DatasetView(dataset, revision) if dataset else None
        if images_root is not None:
            records = images.open_source(images_root, layout)
        elif view is not None:
            records = view.records()
        else:
            raise click.UsageError("give --images, --dataset, or both")
        proposer = regions.MaskCutProposer(maskcut_preset, device) if maskcut_preset else None
        app = webapp.LabelingApp(
            regions.RegionLabeler(checkpoint, device, weights), records, view, proposer, top_k, checkpoint.name
        )
        server = webapp.make_server(app, host, port)
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    if not webapp.is_loopback(host):
        click.echo(
            f"warning: listening on {host}: anyone who can reach it can use the app and read the images", err=True
        )
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"{len(records)} images; region labeler at http://{bound_host}:{bound_port}/ (Ctrl-C stops it)")
    webapp.serve(server)


# --- evaluation: `evaluate` and the `benchmarks` group (library: multilabel_imagenet.evaluation) ---


def _label_files(values: tuple[str, ...], names: tuple[str, ...]) -> dict[str, Path]:
    """``--labels NAME=FILE`` pairs; a bare FILE is allowed when exactly one benchmark is named."""
    files: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep:
            if len(names) != 1:
                raise click.BadParameter(f"{value!r}: with several benchmarks write NAME=FILE", param_hint="--labels")
            name, file = names[0], value
        files[name] = Path(file)
    return files


def _failure(err: Exception) -> click.ClickException:
    """``err`` as a command failure; a KeyError's message without the quotes its str() adds."""
    return click.ClickException(str(err.args[0]) if isinstance(err, KeyError) else str(err))


def _evaluation_errors() -> tuple[type[Exception], ...]:
    from multilabel_imagenet.evaluation import BenchmarkFileError, PredictionsError
    from multilabel_imagenet.evaluation.inference import ModelError

    return BenchmarkFileError, PredictionsError, ModelError, images.ImageDecodeError, KeyError


@main.command("evaluate")
@click.argument("predictions", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--benchmark", "-b", "names", multiple=True, required=True, help="Benchmark name (repeatable).")
@click.option(
    "--labels",
    multiple=True,
    metavar="[NAME=]FILE",
    help="Label file of a benchmark (repeatable). Files of imagenet-val / inv2 also supply original labels "
    "to the benchmarks built on them. See `benchmarks list`.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report.")
@click.option("--threshold", default=0.5, show_default=True, help="Fixed threshold of the @thresh@<t> metrics.")
@click.option(
    "--sigmoid",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Sigmoid before thresholding: auto = when the scores are logits (outside [0, 1]); always = the authors'.",
)
@click.option(
    "--argmax-fallback/--no-argmax-fallback",
    default=True,
    show_default=True,
    help="An image with no class above threshold is given its argmax (the authors' default).",
)
@click.option(
    "--ap-ties",
    type=click.Choice(["sklearn", "authors"]),
    default="sklearn",
    show_default=True,
    help="Per-sample AP ties: sklearn = tied classes count against the label; authors = np.argsort order "
    "of the thresholded scores.",
)
@click.option(
    "--bucket-scheme",
    type=click.Choice(["default", "simple"]),
    default="default",
    show_default=True,
    help="Label-count buckets (the authors' names): default = 1, 2, 3, >=4; simple = 1, 2, >=3.",
)
@click.option("--model", help="timm:NAME or a timm model folder, run over --images instead of PREDICTIONS.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Local weights for timm:NAME.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), help="Image folder.")
@click.option(
    "--activation",
    type=click.Choice(["softmax", "sigmoid", "none"]),
    default="softmax",
    show_default=True,
    help="With --model: on its logits. sigmoid for a model trained with BCE on multi-label targets (`train`).",
)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default=4, show_default=True, help="Image-decoding worker processes.")
@click.option("--device", help="torch device (default: cuda if available, else cpu).")
@click.option(
    "--save-scores", type=click.Path(dir_okay=False, path_type=Path), help="With --model: save scores (.npy)."
)
def evaluate_command(
    predictions: Path | None,
    names: tuple[str, ...],
    labels: tuple[str, ...],
    output: Path | None,
    threshold: float,
    sigmoid: str,
    argmax_fallback: bool,
    ap_ties: str,
    bucket_scheme: str,
    model: str | None,
    checkpoint: Path | None,
    images_dir: Path | None,
    activation: str,
    batch_size: int,
    workers: int,
    device: str | None,
    save_scores: Path | None,
) -> None:
    """Score PREDICTIONS (or --model run over --images) on each --benchmark; print a table, write JSON."""
    import numpy as np

    from multilabel_imagenet.evaluation import (
        align,
        evaluate,
        evaluate_ranked,
        inference,
        load_benchmarks,
        read_predictions,
        report,
    )

    options = {"threshold": threshold, "sigmoid": sigmoid, "argmax_fallback": argmax_fallback, "ap_ties": ap_ties,
               "bucket_scheme": bucket_scheme}  # fmt: skip
    if (predictions is None) == (model is None):
        raise click.UsageError("give either PREDICTIONS or --model")
    if model is not None and (images_dir is None or len(names) != 1):
        raise click.UsageError("--model needs --images and exactly one --benchmark")
    try:
        benches = load_benchmarks(names, _label_files(labels, names))
        if model is not None:
            bench = benches[names[0]]
            paths = inference.find_images(bench, images_dir)  # type: ignore[arg-type]
            net = inference.load_model(model, checkpoint)
            with progress.bar(total=len(paths), unit="img", desc=f"{model} on {bench.name}") as bar:
                scores = inference.predict(
                    net, paths, batch_size=batch_size, num_workers=workers, device=device, activation=activation,
                    progress=bar.update,
                )  # fmt: skip
            if save_scores is not None:
                np.save(save_scores, scores)
            results = {bench.name: evaluate(scores, bench, **options)}
        else:
            submitted = read_predictions(predictions)  # type: ignore[arg-type]
            results = {}
            for name, bench in benches.items():
                rows = align(submitted, bench)
                results[name] = (
                    evaluate(rows.scores, bench, **options)
                    if rows.scores is not None
                    else evaluate_ranked(rows.ranked, bench)
                )
    except _evaluation_errors() as err:
        raise _failure(err) from None
    click.echo(report.format_table(results))
    if output is not None:
        report.write_json(results, output)
        click.echo(f"wrote {output}")


@main.group("benchmarks")
def benchmarks_group() -> None:
    """The multi-label ImageNet benchmarks: list them, print their image order, prepare IN-Seg."""


@benchmarks_group.command("list")
def benchmarks_list_command() -> None:
    """Each benchmark with its images, source, licence and the label file it reads."""
    from multilabel_imagenet.evaluation import REGISTRY

    for info in REGISTRY.values():
        click.echo(f"{info.name}: {info.title}")
        click.echo(f"  images:     {info.images}")
        click.echo(f"  source:     {info.source}")
        click.echo(f"  licence:    {info.licence}")
        click.echo(f"  label file: {info.label_file or 'none needed (bundled with timm)'}")
        if info.base:
            need = "required" if info.base_required else "optional"
            click.echo(f"  original labels: from the {info.base} label file ({need})")


@benchmarks_group.command("images")
@click.argument("name")
@click.option("--labels", "label_file", type=click.Path(dir_okay=False, path_type=Path), help="Its label file.")
def benchmarks_images_command(name: str, label_file: Path | None) -> None:
    """Print benchmark NAME's images in canonical order (the row order of array predictions)."""
    from multilabel_imagenet.evaluation import load_benchmark

    try:
        bench = load_benchmark(name, label_file)
    except _evaluation_errors() as err:
        raise _failure(err) from None
    click.echo("\n".join(bench.image_ids))


@benchmarks_group.group("prepare")
def benchmarks_prepare_group() -> None:
    """Turn a benchmark's published raw files into the label file `evaluate` reads."""


@benchmarks_prepare_group.command("in-seg")
@click.option("--masks", required=True, type=click.Path(file_okay=False, path_type=Path), help="ImageNet-S masks.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
def prepare_in_seg_command(masks: Path, output: Path) -> None:
    """Read the ImageNet-S 919 validation mask PNGs under --masks and write the IN-Seg label sets."""
    from multilabel_imagenet.evaluation import BenchmarkFileError, prepare_in_seg

    try:
        count = prepare_in_seg(masks, output)
    except BenchmarkFileError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote the label sets of {count} images to {output}")


@main.group("import")
def import_group() -> None:
    """Turn published annotation files into a dataset folder that `datasets.load_dataset` reads."""


@import_group.command("tsv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset folder.")
@click.option("--version", "version", default="1.0.0", show_default=True, help="Semantic version of the release.")
@click.option("--train-root", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Read image sizes.")
def import_tsv_command(file: Path, output: Path, version: str, train_root: Path | None) -> None:
    """The authors' multilabel_compressed.tsv -> the `labels` config (train split) of OUTPUT."""
    from multilabel_imagenet.dataset import importers

    try:
        stats = importers.import_tsv(file, output, version, train_root)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    dist = stats["label_count_distribution"]
    shares = ", ".join(f"k={k}: {100 * dist[k]:.2f}%" for k in ("0", "1", "2", "3", ">=4"))
    click.echo(f"wrote {stats['num_images']} images to {output}/data/labels; labels per image: {shares}")


@import_group.command("cutler")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset folder.")
@click.option("--version", "version", default="1.0.0", show_default=True, help="Semantic version of the release.")
@click.option("--source", help="Name of the MaskCut configuration stored with each mask [default: file stem].")
@click.option(
    "--index",
    "index_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the indexed Parquet copy of FILE here, re-used while FILE is unchanged [default: a temporary one "
    "beside OUTPUT, removed after the import].",
)
def import_cutler_command(file: Path, output: Path, version: str, source: str | None, index_path: Path | None) -> None:
    """CutLER's COCO JSON of MaskCut proposals -> the `proposals` config (train split) of OUTPUT."""
    from multilabel_imagenet.dataset import cutler_index

    try:
        index = cutler_index.import_cutler(file, output, version, source, index_path)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {index.num_images} images, {index.num_masks} masks to {output}/data/proposals")
    if index.swapped_sizes:
        click.echo(f"  {index.swapped_sizes} images had width/height swapped in the file; used the masks' size")


@main.command("publish")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="Hub dataset repo ORG/NAME (created if needed).")
@click.option("--version", "version", required=True, help="X.Y.Z; must equal the folder's build.json version.")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--dry-run", is_flag=True, help="Check the folder and card, list what would change; write nothing.")
def publish_command(folder: Path, repo_id: str, version: str, private: bool, dry_run: bool) -> None:
    """Upload dataset FOLDER to the Hub as one commit (shards, card, build.json; stale shards deleted), tagged vX.Y.Z
    (never overwritten). Shards are pre-uploaded first, so main never holds a mixed release."""
    from huggingface_hub.errors import HfHubHTTPError

    from multilabel_imagenet.dataset import hub

    try:
        result = hub.publish(folder, repo_id, version, private=private, dry_run=dry_run, progress=click.echo)
    except (ValueError, hub.PublishError, HfHubHTTPError) as err:
        raise click.ClickException(str(err)) from None
    plan = result.plan
    if not plan.repo_exists:
        click.echo(f"{repo_id} does not exist yet; {'it would be' if dry_run else 'it was'} created")
    for path in plan.upload:
        click.echo(f"+ {path}")
    for path in plan.delete:
        click.echo(f"- {path}")
    click.echo(f"{len(plan.upload)} to upload, {len(plan.delete)} to delete, {len(plan.unchanged)} unchanged")
    if dry_run:
        step = "one commit" if plan.needs_commit else "no commit (main already holds it)"
        click.echo(f"dry run: the card passed the checks; {step} and tag {plan.tag} would follow")
        return
    made = "1 commit" if result.committed else "no commit needed"
    click.echo(f"{made}; tagged {plan.tag} on {result.commit}")


# --- training: `train` (library: multilabel_imagenet.training) ---


def _key_values(values: tuple[str, ...], option: str) -> dict[str, object]:
    """``KEY=VALUE`` pairs, each VALUE read as JSON when it parses (numbers, lists, true/false), else a string."""
    out: dict[str, object] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: write KEY=VALUE", param_hint=option)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _eval_images(values: tuple[str, ...], names: tuple[str, ...]) -> dict[str, Path]:
    """``--eval-images [NAME=]DIR``: a bare DIR serves every benchmark not given its own."""
    shared, own = None, {}
    for value in values:
        name, sep, folder = value.partition("=")
        if sep and name in names:
            own[name] = Path(folder)
        else:
            shared = Path(value)
    return {n: own.get(n, shared) for n in names if own.get(n, shared) is not None}


def _smoothing(value: str) -> tuple[float, float] | None:
    if value.lower() == "none":
        return None
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: write MIN,MAX (e.g. 0.0001,0.95) or none", param_hint="--smoothing"
        ) from None
    return low, high


@main.command("train")
@click.option("--dataset", required=True, help="Dataset folder or Hub repo id (with --revision).")
@_revision_option
@click.option(
    "--images",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="ImageNet root holding train/ (the folder `path` is relative to).",
)
@click.option("--model", required=True, help="timm model name, e.g. resnet50 (1000 classes, random init).")
@click.option("--model-arg", multiple=True, metavar="KEY=VALUE", help="Extra timm.create_model argument (repeatable).")
@click.option("--scheme", default="local_soft+original", show_default=True, help="Target scheme; one_hot = baseline.")
@click.option("--profile", type=click.Choice(["paper", "authors"]), help="Whose reading of the scheme rules.")
@click.option("--crop-aware", is_flag=True, help="Targets follow the random crop (needs the proposals config).")
@click.option("--ambiguity", type=click.Path(exists=True, dir_okay=False), help="Ambiguity JSON for +prior/+pairs.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="[default: runs/MODEL-SCHEME]")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoint.safetensors when it exists.")
@click.option("--epochs", default=100, show_default=True, help="Table 6: 100; Table 1: 300.")
@click.option("--batch-size", default=1024, show_default=True, help="Global batch (split over torchrun processes).")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--weight-decay", default=0.15, show_default=True)
@click.option("--head-weight-decay", default=0.0, show_default=True, help="Weight decay of the classifier head.")
@click.option("--no-decay-norm-bias", is_flag=True, help="Also no weight decay on norms and biases (timm's rule).")
@click.option("--warmup-epochs", default=5.0, show_default=True)
@click.option("--min-lr", default=0.0, show_default=True)
@click.option("--smoothing", default="0.0001,0.95", show_default=True, help="Target range MIN,MAX, or none.")
@click.option("--smoothing-mode", type=click.Choice(["clamp", "affine"]), default="clamp", show_default=True)
@click.option("--keep-empty", is_flag=True, help="Keep all-zero targets in the loss (default: skipped).")
@click.option("--pos-weight", type=float, help="BCE positive weight.")
@click.option("--head-bias-init", is_flag=True, help="Start every sigmoid output at the smoothing minimum.")
@click.option("--img-size", default=224, show_default=True)
@click.option("--transforms", type=click.Choice(["torchvision", "timm"]), default="torchvision", show_default=True)
@click.option("--no-randaugment", is_flag=True, help="Drop RandAugment from the train transforms.")
@click.option("--mixup", default=0.0, show_default=True, help="MixUp alpha (0 = off; DeiT-III: 0.8).")
@click.option("--cutmix", default=0.0, show_default=True, help="CutMix alpha (0 = off; DeiT-III: 1.0).")
@click.option("--mixup-prob", default=1.0, show_default=True)
@click.option("--mixup-switch-prob", default=0.5, show_default=True)
@click.option("--mixup-off-epoch", default=0, show_default=True, help="No mixing from this epoch on (0 = never).")
@click.option("--clip-grad", type=float, help="Clip the gradient norm to this.")
@click.option("--drop-path", type=float, help="Stochastic depth rate of the model.")
@click.option("--pretrained", is_flag=True, help="Start from timm's pretrained weights (downloads them).")
@click.option("--init-checkpoint", type=click.Path(exists=True, dir_okay=False), help="Start from these weights.")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=8, show_default=True, help="DataLoader worker processes per process.")
@click.option("--device", default="auto", show_default=True, help="cuda, cpu or auto.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default="auto", show_default=True)
@click.option("--deterministic", is_flag=True, help="Deterministic CUDA kernels (slower; resume: same weights).")
@click.option("--log-every", default=50, show_default=True, help="Log loss and lr every N steps.")
@click.option("--stop-after-epoch", type=int, help="End after this epoch (schedule of --epochs kept); --resume later.")
@click.option("--eval", "eval_names", multiple=True, help="Benchmark to score at the end (repeatable), e.g. real.")
@click.option("--eval-labels", multiple=True, metavar="[NAME=]FILE", help="Label file of an --eval benchmark.")
@click.option("--eval-images", multiple=True, metavar="[NAME=]DIR", help="Images of the --eval benchmarks.")
@click.option("--eval-batch-size", default=256, show_default=True)
@click.option("--eval-crop-pct", default=0.875, show_default=True, help="Eval centre crop (0.875: 256 -> 224).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="datasets cache folder.")
def train_command(**opts) -> None:
    """Train a timm model on DATASET's targets with the paper's recipe (Supp. B.3), then score --eval benchmarks.

    CPU works; CUDA uses bf16 autocast; under `torchrun --nproc_per_node N -m multilabel_imagenet train ...` each
    process takes 1/N of the batch. Writes OUTPUT/checkpoint.safetensors every epoch, OUTPUT/log.jsonl, the final
    weights as a timm folder OUTPUT/model, and the report OUTPUT/eval.json. See docs/training.md.
    """
    from multilabel_imagenet.training import checkpoint, loop
    from multilabel_imagenet.training.evaluate import prepare_benchmarks
    from multilabel_imagenet.training.recipe import Recipe

    names = opts["eval_names"]
    if (opts["eval_labels"] or opts["eval_images"]) and not names:
        raise click.UsageError("--eval-labels/--eval-images go with --eval NAME")
    output = opts["output"] or Path("runs") / f"{opts['model']}-{opts['scheme']}".replace("/", "_")
    local = Path(opts["dataset"]).expanduser()
    dataset = str(local.resolve()) if local.is_dir() else opts["dataset"]
    try:
        recipe = Recipe(
            epochs=opts["epochs"],
            batch_size=opts["batch_size"],
            lr=opts["lr"],
            weight_decay=opts["weight_decay"],
            head_weight_decay=opts["head_weight_decay"],
            no_decay_norm_bias=opts["no_decay_norm_bias"],
            warmup_epochs=opts["warmup_epochs"],
            min_lr=opts["min_lr"],
            smoothing=_smoothing(opts["smoothing"]),
            smoothing_mode=opts["smoothing_mode"],
            skip_empty=not opts["keep_empty"],
            pos_weight=opts["pos_weight"],
            head_bias_init=opts["head_bias_init"],
            img_size=opts["img_size"],
            transforms=opts["transforms"],
            randaugment=not opts["no_randaugment"],
            mixup=opts["mixup"],
            cutmix=opts["cutmix"],
            mixup_prob=opts["mixup_prob"],
            mixup_switch_prob=opts["mixup_switch_prob"],
            mixup_off_epoch=opts["mixup_off_epoch"],
            clip_grad=opts["clip_grad"],
            drop_path=opts["drop_path"],
        )
        config = loop.TrainConfig(
            dataset=dataset,
            images=str(opts["images"].resolve()),
            model=opts["model"],
            output=str(output),
            scheme=opts["scheme"],
            recipe=recipe,
            revision=opts["revision"],
            profile=opts["profile"],
            crop_aware=opts["crop_aware"],
            ambiguity=opts["ambiguity"],
            model_kwargs=_key_values(opts["model_arg"], "--model-arg") or None,
            pretrained=opts["pretrained"],
            init_checkpoint=opts["init_checkpoint"],
            seed=opts["seed"],
            workers=opts["workers"],
            device=opts["device"],
            amp=opts["amp"],
            deterministic=opts["deterministic"],
            log_every=opts["log_every"],
            stop_after_epoch=opts["stop_after_epoch"],
            eval_batch_size=opts["eval_batch_size"],
            eval_crop_pct=opts["eval_crop_pct"],
            cache_dir=opts["cache_dir"],
        )
        benches = (
            prepare_benchmarks(
                names, _label_files(opts["eval_labels"], names), _eval_images(opts["eval_images"], names)
            )
            if names
            else None
        )
        result = loop.train(config, resume=opts["resume"], benchmarks=benches, echo=tqdm.write)
    except (*_evaluation_errors(), loop.TrainingError, checkpoint.CheckpointError, ValueError, OSError) as err:
        raise _failure(err) from None
    if result.model_dir is not None:
        click.echo(f"weights: {result.model_dir} (multilabel-imagenet evaluate --model {result.model_dir} ...)")


# --- MaskCut configurations (library: multilabel_imagenet.builder.configs) ---


@main.command("configs")
@click.argument("preset", required=False, default="paper")
def configs_command(preset: str) -> None:
    """Print the MaskCut configurations of PRESET (paper, cutler, synthetic), one per line."""
    from multilabel_imagenet.builder import configs

    try:
        chosen = configs.preset(preset)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo("name\tbackbone\tfeature\tinput\ttau\tN\tCRF")
    for c in chosen:
        crf = c.crf_backend if c.crf else "off"
        click.echo(f"{c.name}\t{c.backbone}\t{c.feature}\t{c.input_size}\t{c.tau}\t{c.n}\t{crf}")
