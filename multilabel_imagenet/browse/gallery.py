"""The static label gallery of ``multilabel-imagenet show``: one card per image, written as HTML + PNGs.

A card shows the image with its proposal masks overlaid in distinct colours (numbered), each mask's MaskCut
configuration (``source``) and top classes, the image-level soft label beside the original label and, for images
a benchmark labels (ReaL for ImageNet val, keyed by file name), agreement marks: which of our labels (score > 0.5)
the benchmark confirms and which it lacks, and the benchmark's classes we do not label. Images are chosen by id
or at random, optionally only those with at least ``min_labels`` labels or those whose top soft class is not the
original label.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multilabel_imagenet import classes, images
from multilabel_imagenet.browse import overlay
from multilabel_imagenet.browse.source import DatasetView, image_path
from multilabel_imagenet.dataset import schema
from multilabel_imagenet.evaluation.benchmarks import Benchmark, image_key

INDEX = "index.html"
STYLE = "gallery.css"
GENERATOR = "multilabel-imagenet show"
SOFT_SHOWN = 5
"""Soft-label classes listed per image (more when more than this many are labels)."""
MASK_CLASSES_SHOWN = 3
"""Classes listed per mask and for the whole image."""
DEFAULT_SAMPLE = 24
"""Images :func:`write_gallery` draws at random when given no ids."""


@dataclass(frozen=True)
class Filters:
    """Which images qualify: at least ``min_labels`` labels; with ``disagreeing``, only images whose top soft
    class differs from their (known) original label."""

    min_labels: int = 0
    disagreeing: bool = False

    def describe(self) -> str:
        parts = [f">= {self.min_labels} labels"] if self.min_labels else []
        return ", ".join(parts + (["top soft class != original label"] if self.disagreeing else [])) or "none"

    def mask(self, table: pa.Table) -> np.ndarray:
        """Bool per row of a table with columns ``label``, ``labels`` and ``soft_classes``."""
        n = table.num_rows
        keep = pc.fill_null(pc.list_value_length(table["labels"]), 0).to_numpy() >= self.min_labels
        if self.disagreeing:
            soft = table["soft_classes"]
            parents = pc.list_parent_indices(soft).to_numpy()
            flat = pc.list_flatten(soft).to_numpy()
            rows, first = np.unique(parents, return_index=True)
            top = np.full(n, -1, np.int64)
            top[rows] = flat[first]
            label = pc.fill_null(table["label"], schema.UNKNOWN_LABEL).to_numpy()
            keep &= (label >= 0) & (top >= 0) & (top != label)
        return keep


@dataclass(frozen=True)
class BenchmarkSets:
    """A benchmark's label sets by image key (file stem)."""

    name: str
    sets: Mapping[str, frozenset[int]]

    @classmethod
    def of(cls, benchmark: Benchmark) -> BenchmarkSets:
        if benchmark.targets is None:
            raise ValueError(f"benchmark {benchmark.name!r} has single labels, no label sets to compare with")
        return cls(
            benchmark.name,
            {
                image_key(i): frozenset(np.flatnonzero(t).tolist())
                for i, t in zip(benchmark.image_ids, benchmark.targets, strict=True)
            },
        )


@dataclass(frozen=True)
class GalleryResult:
    index: Path
    cards: int
    matched: int
    """Images that pass the filters (of the requested ids, or of the whole splits when sampling)."""
    not_matching: tuple[str, ...]
    """Requested ids that exist but do not pass the filters."""


def choose(
    view: DatasetView,
    splits: Sequence[str],
    filters: Filters,
    ids: Sequence[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> tuple[list[tuple[str, int]], int, list[str]]:
    """The (split, row) pairs to show, the number of images that pass the filters, and the requested ids that do
    not pass them. ``ids`` keeps their order; ``sample`` draws that many rows at random (kept in dataset order)."""
    if (ids is None) == (sample is None):
        raise ValueError("give either ids or sample")
    if sample is not None and sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    ids = None if ids is None else list(dict.fromkeys(ids))
    positions = {} if ids is None else view.locate("labels", ids, splits)
    passing: list[tuple[str, int]] = []
    for split in splits:
        keep = filters.mask(view.columns("labels", split, ["label", "labels", "soft_classes"]))
        if ids is not None:
            wanted = np.zeros(len(keep), bool)
            wanted[[row for s, row in positions.values() if s == split]] = True
            keep &= wanted
        passing += [(split, int(row)) for row in np.flatnonzero(keep)]
    if ids is None:
        picked = np.sort(np.random.default_rng(seed).permutation(len(passing))[:sample])
        return [passing[i] for i in picked], len(passing), []
    missing = [i for i in ids if i not in positions]
    if missing:
        raise KeyError(f"{view.name}: no image {', '.join(missing)} in the {'/'.join(splits)} split(s)")
    ok = set(passing)
    return [positions[i] for i in ids if positions[i] in ok], len(ok), [i for i in ids if positions[i] not in ok]


def _class(index: int) -> str:
    name = html.escape(classes.name_of(index))
    return f'<span class="cls" data-class="{index}" title="{classes.wnid_of(index)} ({index})">{name}</span>'


def _top(indices: Sequence[int], scores: Sequence[float]) -> str:
    """The first :data:`MASK_CLASSES_SHOWN` classes with their scores."""
    return ", ".join(
        f"{_class(c)} {s:.2f}" for c, s in zip(indices[:MASK_CLASSES_SHOWN], scores[:MASK_CLASSES_SHOWN], strict=True)
    )


def _marks(index: int, benches: Sequence[tuple[str, frozenset[int]]], ours: bool) -> str:
    """Per benchmark: confirmed (in its set) or, for one of our labels, lacking there."""
    out = []
    for name, labels in benches:
        if index in labels:
            out.append(
                f'<span class="mark confirmed" data-benchmark="{name}" title="{name} has it">&#10003; {name}</span>'
            )
        elif ours:
            out.append(
                f'<span class="mark lacking" data-benchmark="{name}" title="{name} lacks it">&#10007; {name}</span>'
            )
    return " ".join(out)


def card_html(
    split: str,
    row: Mapping[str, Any],
    masks: Sequence[Mapping[str, Any]],
    picture: str | None,
    size: tuple[int, int] | None,
    benchmarks: Sequence[BenchmarkSets],
    error: str | None = None,
) -> str:
    """One image's card. ``picture``: the overlay PNG's path relative to the page (None with ``error``)."""
    image_id = row["image_id"]
    ours = set(row["labels"])
    key = image_key(image_id)
    scored = [(b.name, b.sets[key]) for b in benchmarks if key in b.sets]
    benches = [(name, labels) for name, labels in scored if labels]
    eid = html.escape(image_id)
    out = [f'<article class="card" id="{eid}" data-image-id="{eid}" data-split="{split}" data-labels="{len(ours)}">']
    if picture is not None:
        w, h = size  # type: ignore[misc]
        out.append(
            f'<img class="overlay" src="{html.escape(picture)}" width="{w}" height="{h}" alt="{eid} with its masks">'
        )
    else:
        out.append(f'<p class="error">{html.escape(error or "")}</p>')
    out.append(f"<h2>{eid} <small>{split}, {row['width']} &times; {row['height']}</small></h2>")
    label = row["label"]
    if label is None or label < 0:
        out.append('<p class="original">original label: unknown</p>')
    else:
        status = "in our labels" if label in ours else "not in our labels"
        marks = _marks(label, benches, False)
        out.append(f'<p class="original">original: {_class(label)} <span class="note">({status})</span> {marks}</p>')
    soft = list(zip(row["soft_classes"], row["soft_scores"], strict=True))
    shown = soft[: max(SOFT_SHOWN, len(ours))]
    out.append('<table class="soft"><caption>soft label (labels: score &gt; 0.5)</caption>')
    for c, s in shown:
        kind = "label" if c in ours else "below"
        marks = _marks(c, benches, c in ours)
        out.append(f'<tr class="{kind}" data-class="{c}"><td>{_class(c)}</td><td class="score">{s:.2f}</td>')
        out.append(f"<td>{marks}</td></tr>")
    if not shown:
        out.append('<tr><td colspan="3">no soft label (no proposal)</td></tr>')
    out.append("</table>")
    for name, labels in scored:
        if not labels:
            out.append(f'<p class="benchmark" data-benchmark="{name}">{name}: no label for this image (not scored)</p>')
            continue
        extra = sorted(labels - ours)
        missed = ", ".join(_class(c) for c in extra) if extra else "none"
        out.append(
            f'<p class="benchmark" data-benchmark="{name}">{name} also has: <span class="missed">{missed}</span></p>'
        )
    if row.get("global_classes"):
        out.append(f'<p class="global">whole image: {_top(row["global_classes"], row["global_scores"])}</p>')
    out.append(f'<ol class="masks" aria-label="{len(masks)} proposals">')
    for i, m in enumerate(masks):
        top = _top(m["classes"], m["scores"])
        source = html.escape(m["source"])
        swatch = f'<span class="swatch" style="background:{overlay.hex_colour(i)}">{i + 1}</span>'
        out.append(f'<li class="mask" data-source="{source}">{swatch} <code>{source}</code> {m["area"]} px: {top}</li>')
    out.append("</ol></article>")
    return "\n".join(out)


def _prepare_output(output: Path) -> None:
    """Create ``output``, or reuse a previous gallery there (its pictures are replaced); refuse any other folder."""
    if output.exists():
        index = output / INDEX
        foreign = sorted(p.name for p in output.iterdir() if p.name not in (INDEX, STYLE, "images"))
        if foreign or (index.is_file() and GENERATOR not in index.read_text(encoding="utf-8", errors="replace")[:2000]):
            raise FileExistsError(f"{output}: not empty and not a gallery written by {GENERATOR}; choose a new folder")
        shutil.rmtree(output / "images", ignore_errors=True)
    (output / "images").mkdir(parents=True, exist_ok=True)


def _render(
    name: str,
    output: Path,
    root: Path,
    split: str,
    row: dict,
    masks: list,
    sets: Sequence[BenchmarkSets],
    max_side: int,
) -> str:
    """Draw one image's overlay into ``output/images/`` and return its card."""
    file = image_path(root, split, row["path"])
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: image {row['image_id']} of the {split} split not found (is --images the folder holding "
            "train/ and val/?)"
        )
    try:
        array = np.asarray(images.decode_image(file))
    except images.ImageDecodeError as err:
        return card_html(split, row, masks, None, None, sets, f"{file}: {err.reason}")
    h, w = array.shape[:2]
    picture = overlay.draw_masks(array, overlay.decode_masks(masks, h, w, name, row["image_id"]), max_side)
    rel = f"images/{split}/{row['image_id']}.png"
    (output / rel).parent.mkdir(parents=True, exist_ok=True)
    picture.save(output / rel)
    return card_html(split, row, masks, rel, picture.size, sets)


def write_gallery(
    view: DatasetView,
    output: str | Path,
    images_root: str | Path | None = None,
    *,
    splits: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    sample: int | None = None,
    filters: Filters = Filters(),
    benchmarks: Mapping[str, Benchmark] | None = None,
    seed: int = 0,
    max_side: int = 480,
    progress: Callable[[int], object] = lambda n: None,
) -> GalleryResult:
    """Write ``output/index.html``, its style sheet and one overlay PNG per image (``images/<split>/<id>.png``).

    ``images_root``: the folder holding ``train/`` and ``val/`` (see :meth:`DatasetView.image_root`; not needed for
    the synthetic demo's output). ``splits``: default every split of the ``labels`` config; ``ids``, ``sample``
    (without ``ids``; default :data:`DEFAULT_SAMPLE`), ``filters`` and ``seed`` as for :func:`choose`. ``progress``
    is called with 1 per card written."""
    output = Path(output)
    available = view.splits("labels")
    splits = list(splits or available)
    unknown = [s for s in splits if s not in available]
    if unknown:
        raise ValueError(
            f"{view.name}: the labels config has no split {', '.join(unknown)} (it has {', '.join(available)})"
        )
    root = view.image_root(images_root)
    sets = [BenchmarkSets.of(b) for b in (benchmarks or {}).values()]
    _prepare_output(output)
    if ids is not None:
        sample = None
    elif sample is None:
        sample = DEFAULT_SAMPLE
    chosen, matched, not_matching = choose(view, splits, filters, ids, sample, seed)
    with_proposals = set(view.splits("proposals"))
    loaded: dict[tuple[str, int], tuple[dict, list]] = {}
    for split in splits:
        rows = [r for s, r in chosen if s == split]
        if rows:
            labels = view.dataset("labels", split).select(rows)
            found = view.rows_by_id("proposals", split, labels["image_id"]) if split in with_proposals else {}
            for r, row in zip(rows, labels, strict=True):
                loaded[(split, r)] = (row, found.get(row["image_id"], {}).get("masks", []))
    html_cards = []
    for split, row_index in chosen:
        html_cards.append(_render(view.name, output, root, split, *loaded[(split, row_index)], sets, max_side))
        progress(1)
    (output / STYLE).write_bytes(resources.files("multilabel_imagenet.browse").joinpath("static", STYLE).read_bytes())
    title = f"{view.name}: {len(html_cards)} images"
    names = ", ".join(b.name for b in sets) or "none"
    chosen_by = f"ids ({len(ids)} asked)" if ids is not None else f"random sample of {sample} (seed {seed})"
    page = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{GENERATOR}">',
        f"<title>{html.escape(title)}</title>",
        f'<link rel="stylesheet" href="{STYLE}"></head><body>',
        f"<header><h1>{html.escape(view.name)}</h1>",
        f'<p class="summary">splits: {", ".join(splits)}; filters: {html.escape(filters.describe())}; '
        f"{matched} images pass; shown: {len(html_cards)}, by {chosen_by}; benchmarks: {html.escape(names)}</p>",
        '<p class="legend">Numbers on the pictures are the masks listed on each card. Soft-label rows in bold are '
        "labels (score &gt; 0.5); &#10003; NAME: the benchmark has the class; &#10007; NAME: it lacks our label.</p>",
        "</header>",
        '<main class="gallery">',
        *html_cards,
        "</main></body></html>",
    ]
    (output / INDEX).write_text("\n".join(page) + "\n", encoding="utf-8")
    return GalleryResult(output / INDEX, len(html_cards), matched, tuple(not_matching))
