"""Registry of the multi-label ImageNet benchmarks and loaders for their published label files.

A benchmark is data: image basenames in a canonical order, a label set per image (multi-hot [N, 1000]), and where
they exist the original single labels. Class index = position of the wnid in the sorted ImageNet-1k list.
Canonical orders: validation-set benchmarks sort by file name (= ILSVRC2012 val number); ImageNetV2 benchmarks
sort by ``<sha1>.jpeg``. Predictions are matched by basename, never by folder iteration order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multilabel_imagenet import classes

NUM_VAL_IMAGES = 50_000
VAL_UNIVERSE = "imagenet-val"
V2_UNIVERSE = "imagenetv2"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}

# ImageNet-1k classes that have no ImageNet-S-919 class id (81). ImageNet-S id i (1..919) is the i-th remaining
# class in index order; five of the 81 are merged into another class (see MERGED_INTO_IMAGENET_S).
IN1K_WITHOUT_IMAGENET_S_ID = (
    406, 415, 416, 421, 424, 433, 442, 445, 454, 455, 460, 467, 476, 479, 480, 485, 490, 498, 500, 506, 508,
    509, 525, 527, 535, 536, 537, 538, 548, 562, 580, 581, 582, 598, 619, 620, 624, 634, 638, 639, 646, 692,
    700, 706, 730, 744, 762, 766, 782, 788, 799, 801, 810, 819, 837, 838, 844, 848, 860, 865, 876, 877, 884,
    908, 911, 916, 918, 921, 926, 960, 966, 967, 970, 974, 975, 976, 977, 978, 979, 980, 982,
)  # fmt: skip
# IN-1k index whose pixels ImageNet-S labels with another class -> IN-1k index of that class.
MERGED_INTO_IMAGENET_S = {837: 836, 876: 435, 620: 681, 744: 657, 700: 999}
IMAGENET_S_IGNORE_ID = 1000


class BenchmarkFileError(ValueError):
    """A benchmark label file is missing, malformed, or inconsistent; the message names the file."""


@dataclass(eq=False)
class Benchmark:
    """Label sets of one benchmark.

    ``targets``: bool [N, 1000] label sets (None for single-label benchmarks); ``original``: int [N] original
    ImageNet label, -1 where unknown (None if no original labels were loaded); ``main``: int [N] main-object
    label (MadryLab only); ``evaluated``: bool [N], the images a multi-label score averages over (None = those
    with a non-empty label set); ``recipe``: which metric family applies (see ``scoring``).
    """

    name: str
    image_ids: tuple[str, ...]
    recipe: str
    universe: str
    targets: np.ndarray | None = None
    original: np.ndarray | None = None
    main: np.ndarray | None = None
    evaluated: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def val_indices(self) -> np.ndarray | None:
        """Position (0-based) of each image in the 50,000-image ImageNet val set, or None off that set."""
        if self.universe != VAL_UNIVERSE:
            return None
        return np.array([val_number(n) - 1 for n in self.image_ids], dtype=np.int64)


@dataclass(frozen=True)
class BenchmarkInfo:
    """Registry entry: what the benchmark is and which file it is read from."""

    name: str
    title: str
    images: str
    source: str
    licence: str
    label_file: str  # what ``path`` must be ("" = bundled with timm)
    base: str | None  # benchmark whose label file supplies the original labels
    base_required: bool = False  # the metric itself needs the original labels


REGISTRY: dict[str, BenchmarkInfo] = {
    info.name: info
    for info in (
        BenchmarkInfo(
            "imagenet-val",
            "ImageNet-1k validation, original labels (top-1/top-5)",
            "50,000",
            "ILSVRC2012 devkit; derived list in github.com/modestyachts/ImageNetV2 (MIT)",
            "ImageNet terms of access",
            "50,000 wnids one per line (TFDS), JSON list of class indices, Kaggle LOC_val_solution.csv, or "
            "the devkit's ground truth with meta.mat beside it",
            None,
        ),
        BenchmarkInfo(
            "real",
            "ImageNet-ReaL (Beyer et al. 2020)",
            "50,000 (46,837 with labels)",
            "github.com/google-research/reassessed-imagenet real.json (bundled in timm)",
            "Apache-2.0",
            "",
            "imagenet-val",
        ),
        BenchmarkInfo(
            "inv2",
            "ImageNetV2 matched-frequency, original labels (Recht et al. 2019)",
            "10,000",
            "github.com/modestyachts/ImageNetV2 data/datasets/imagenetv2-b-33.json",
            "MIT",
            "imagenetv2-b-33.json, or a JSON {sha1: class index}",
            None,
        ),
        BenchmarkInfo(
            "inv2-ml",
            "INv2-ML: ImageNetV2 refined multi-labels (Anzaku et al.)",
            "10,000 (9,871 with labels)",
            "github.com/esla/Multilabelfy imagenetv2_refined_labels.json",
            "Apache-2.0",
            "imagenetv2_refined_labels.json",
            "inv2",
        ),
        BenchmarkInfo(
            "in-seg",
            "IN-Seg: ImageNet-S 919 validation masks -> class sets (Gao et al.)",
            "12,419",
            "github.com/LUSSeg/ImageNet-S release ImageNetS919 (prepare with `benchmarks prepare in-seg`)",
            "no licence file in the repository",
            "file written by `multilabel-imagenet benchmarks prepare in-seg`",
            "imagenet-val",
        ),
        BenchmarkInfo(
            "imagenet-multilabel",
            "Shankar et al. 2020 multi-labels (TFDS imagenet2012_multilabel), per-class averaged",
            "20,000 (problematic skipped)",
            "storage.googleapis.com/brain-car-datasets/imagenet-mistakes/human_accuracy_v3.0.0.json",
            "not stated by the source (TFDS catalog gives none)",
            "human_accuracy_v3.0.0.json",
            "imagenet-val",
            base_required=True,
        ),
        BenchmarkInfo(
            "imagenet-m",
            "ImageNet-M: 68 major-mistake images (Vasudevan et al. 2022), count correct",
            "68",
            "human_accuracy_v3.0.0.json (key imagenet_m)",
            "not stated by the source (TFDS catalog gives none)",
            "human_accuracy_v3.0.0.json",
            "imagenet-val",
        ),
        BenchmarkInfo(
            "madry",
            "MadryLab ImageNetMultiLabel (Tsipras et al. 2020): object label sets and main label",
            "6,761",
            "github.com/MadryLab/ImageNetMultiLabel data/annotations_classify_task.pkl, as JSON",
            "MIT",
            "annotations_classify_task.json (JSON conversion of the published pickle)",
            "imagenet-val",
        ),
    )
}


def val_name(index: int) -> str:
    """Basename of ImageNet val image ``index`` (0-based): ``ILSVRC2012_val_{index+1:08d}.JPEG``."""
    return f"ILSVRC2012_val_{index + 1:08d}.JPEG"


def val_number(name: str) -> int:
    """The 1-based val number in ``ILSVRC2012_val_XXXXXXXX.*``; ValueError for any other name."""
    match = _VAL_NAME.fullmatch(image_key(name))
    if not match or not 1 <= int(match.group(1)) <= NUM_VAL_IMAGES:
        raise ValueError(f"{name!r} is not an ImageNet validation image name (ILSVRC2012_val_00000001..50000)")
    return int(match.group(1))


def image_key(name: str) -> str:
    """Matching key of an image name: the basename without an image extension (``a/b/x.JPEG`` -> ``x``)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else base


def _read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BenchmarkFileError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BenchmarkFileError(f"{path}: not valid JSON ({err})") from None


def _class_index(value: object, path: Path, where: str) -> int:
    """A class given as an int, a decimal string, or a wnid."""
    try:
        if isinstance(value, str) and value.startswith("n"):
            return classes.index_of(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise IndexError(f"{value!r} is not a class index")
        return classes.check_index(int(value))
    except (KeyError, IndexError, ValueError) as err:
        raise BenchmarkFileError(f"{path}: {where}: {err}") from None


def _multi_hot(sets: Iterable[Iterable[int]], n: int) -> np.ndarray:
    targets = np.zeros((n, classes.NUM_CLASSES), dtype=bool)
    for i, labels in enumerate(sets):
        targets[i, list(labels)] = True
    return targets


def _expect(ok: bool, path: Path, problem: str) -> None:
    if not ok:
        raise BenchmarkFileError(f"{path}: {problem}")


def read_val_labels(path: str | Path) -> np.ndarray:
    """Original labels of the 50,000 val images, in val order, from any format
    :func:`multilabel_imagenet.images.read_val_labels` reads (TFDS wnid list, JSON, Kaggle CSV, devkit)."""
    from multilabel_imagenet import images

    path = Path(path)
    try:
        by_image = images.read_val_labels(path)
    except (images.SourceError, ValueError, KeyError, IndexError) as err:
        message = str(err.args[0]) if isinstance(err, KeyError) else str(err)
        raise BenchmarkFileError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    missing = [val_name(i) for i in range(NUM_VAL_IMAGES) if image_key(val_name(i)) not in by_image]
    _expect(not missing, path, f"no label for {len(missing)} of the {NUM_VAL_IMAGES} val images, e.g. {missing[:3]}")
    return np.array([by_image[image_key(val_name(i))] for i in range(NUM_VAL_IMAGES)], dtype=np.int64)


def _originals(image_ids: Iterable[str], val_labels: np.ndarray | None) -> np.ndarray | None:
    if val_labels is None:
        return None
    return np.array([val_labels[val_number(n) - 1] for n in image_ids], dtype=np.int64)


def load_imagenet_val(path: str | Path) -> Benchmark:
    """ImageNet val with its original labels (read by :func:`read_val_labels`)."""
    labels = read_val_labels(path)
    ids = tuple(val_name(i) for i in range(NUM_VAL_IMAGES))
    return Benchmark("imagenet-val", ids, "single", VAL_UNIVERSE, original=labels)


def load_real(path: str | Path | None = None, val_labels: np.ndarray | None = None) -> Benchmark:
    """ReaL: ``real.json`` (list of 50,000 label lists; empty = not scored); timm's bundled copy by default."""
    if path is None:
        path = classes.timm_info_file("imagenet_real_labels.json")
    path = Path(path)
    data = _read_json(path)
    _expect(
        isinstance(data, list) and len(data) == NUM_VAL_IMAGES and all(isinstance(x, list) for x in data),
        path,
        f"expected a JSON list of {NUM_VAL_IMAGES} lists of class indices",
    )
    sets = [[_class_index(c, path, f"entry {i}") for c in labels] for i, labels in enumerate(data)]  # type: ignore[union-attr]
    ids = tuple(val_name(i) for i in range(NUM_VAL_IMAGES))
    return Benchmark("real", ids, "multilabel", VAL_UNIVERSE, _multi_hot(sets, len(ids)), _originals(ids, val_labels))


def read_inv2_labels(path: str | Path) -> dict[str, int]:
    """Original ImageNetV2 matched-frequency labels {``<sha1>.jpeg``: class}, from ``imagenetv2-b-33.json``
    (``image_filenames`` = [[sha1, wnid], ...]) or a JSON object {sha1: class index}."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict) and "image_filenames" in data:
        pairs = data["image_filenames"]
        _expect(
            isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs),
            path,
            "image_filenames must be a list of [sha1, wnid] pairs",
        )
        items = [(str(h), w) for h, w in pairs]
    elif isinstance(data, dict):
        items = [(str(h), c) for h, c in data.items()]
    else:
        raise BenchmarkFileError(f"{path}: expected imagenetv2-b-33.json or a JSON object {{sha1: class index}}")
    out = {f"{image_key(h)}.jpeg": _class_index(c, path, f"image {h}") for h, c in items}
    _expect(len(out) == len(items), path, "duplicate image hashes")
    return out


def load_inv2(path: str | Path) -> Benchmark:
    """ImageNetV2 matched-frequency with its original labels."""
    labels = read_inv2_labels(path)
    ids = tuple(sorted(labels))
    return Benchmark("inv2", ids, "single", V2_UNIVERSE, original=np.array([labels[n] for n in ids]))


def load_inv2_ml(path: str | Path, inv2_labels: Mapping[str, int] | None = None) -> Benchmark:
    """INv2-ML: ``imagenetv2_refined_labels.json`` = {``<sha1>.jpeg``: ["idx", ...]} (indices as strings)."""
    path = Path(path)
    data = _read_json(path)
    _expect(
        isinstance(data, dict) and all(isinstance(v, list) for v in data.values()),
        path,
        'expected a JSON object {"<sha1>.jpeg": ["<class index>", ...]}',
    )
    assert isinstance(data, dict)
    ids = tuple(sorted(data))
    sets = [[_class_index(c, path, f"image {n}") for c in data[n]] for n in ids]
    original = None
    if inv2_labels is not None:
        missing = [n for n in ids if n not in inv2_labels]
        _expect(not missing, path, f"{len(missing)} images have no original ImageNetV2 label, e.g. {missing[:3]}")
        original = np.array([inv2_labels[n] for n in ids], dtype=np.int64)
    return Benchmark("inv2-ml", ids, "multilabel", V2_UNIVERSE, _multi_hot(sets, len(ids)), original)


def imagenet_s_to_in1k() -> np.ndarray:
    """IN-1k index of each ImageNet-S-919 class id: array [920], entry 0 (background) = -1."""
    without = set(IN1K_WITHOUT_IMAGENET_S_ID)
    return np.array([-1] + [c for c in range(classes.NUM_CLASSES) if c not in without], dtype=np.int64)


IN_SEG_FORMAT = "multilabel-imagenet/in-seg-labels/v1"


def mask_classes(mask: np.ndarray) -> list[int]:
    """IN-1k classes present in an ImageNet-S mask (H x W x 3 uint8; id = R + 256*G; 0 and 1000 ignored).

    Each ImageNet-S id maps to one IN-1k class; the five merged classes count as the class they were merged
    into (e.g. pixels of 'sunglasses' carry the 'sunglass' id), so the label set holds only that class.
    """
    if mask.ndim != 3 or mask.shape[2] < 2:
        raise ValueError(f"expected an RGB mask, got an array of shape {mask.shape}")
    ids = np.unique(mask[..., 0].astype(np.int32) + 256 * mask[..., 1].astype(np.int32))
    ids = ids[(ids != 0) & (ids != IMAGENET_S_IGNORE_ID)]
    table = imagenet_s_to_in1k()
    bad = ids[ids >= len(table)]
    if len(bad):
        raise ValueError(f"class ids {bad[:5].tolist()} are outside ImageNet-S 919 (1..919, 1000 = ignore)")
    return sorted(int(c) for c in table[ids])


def prepare_in_seg(masks_dir: str | Path, output: str | Path) -> int:
    """Read every ImageNet-S validation mask PNG under ``masks_dir`` (any depth, e.g.
    ``validation-segmentation/<wnid>/ILSVRC2012_val_XXXXXXXX.png``) and write the IN-Seg label sets as JSON.

    Returns the number of images written. A mask that cannot be read raises ``BenchmarkFileError`` naming it.
    """
    from PIL import Image

    masks_dir = Path(masks_dir)
    pngs = sorted(masks_dir.rglob("*.png"), key=lambda p: p.name)
    if not pngs:
        raise BenchmarkFileError(f"{masks_dir}: no mask PNGs found")
    images: dict[str, list[int]] = {}
    for png in pngs:
        try:
            name = val_name(val_number(png.name) - 1)
            with Image.open(png) as im:
                mask = np.asarray(im.convert("RGB"))
            labels = mask_classes(mask)
        except (OSError, ValueError) as err:
            raise BenchmarkFileError(f"{png}: {err}") from None
        if name in images:
            raise BenchmarkFileError(f"{png}: a second mask for {name}")
        images[name] = labels
    Path(output).write_text(json.dumps({"format": IN_SEG_FORMAT, "images": images}) + "\n", encoding="utf-8")
    return len(images)


def load_in_seg(path: str | Path, val_labels: np.ndarray | None = None) -> Benchmark:
    """IN-Seg label sets from the file :func:`prepare_in_seg` writes."""
    path = Path(path)
    data = _read_json(path)
    _expect(
        isinstance(data, dict) and data.get("format") == IN_SEG_FORMAT and isinstance(data.get("images"), dict),
        path,
        f"not an IN-Seg label file (format {IN_SEG_FORMAT!r}); create it with "
        "`multilabel-imagenet benchmarks prepare in-seg --masks DIR --output FILE`",
    )
    assert isinstance(data, dict)
    ids = tuple(sorted(data["images"], key=val_number))
    sets = [[_class_index(c, path, f"image {n}") for c in data["images"][n]] for n in ids]
    return Benchmark("in-seg", ids, "multilabel", VAL_UNIVERSE, _multi_hot(sets, len(ids)), _originals(ids, val_labels))


def _read_shankar(path: Path) -> tuple[dict[str, dict], set[str], list[str]]:
    data = _read_json(path)
    _expect(
        isinstance(data, dict) and {"initial_annots", "problematic_images", "imagenet_m"} <= data.keys(),
        path,
        "expected human_accuracy_v3.0.0.json with keys initial_annots, problematic_images, imagenet_m",
    )
    assert isinstance(data, dict)
    annots = {k: v for k, v in data["initial_annots"].items() if _VAL_NAME.match(k)}
    return annots, set(data["problematic_images"]), list(data["imagenet_m"])


def _accepted(annots: dict[str, dict], ids: Iterable[str], path: Path) -> list[list[int]]:
    """Labels marked correct or unclear (TFDS: be lenient with unclear)."""
    return [
        [_class_index(c, path, f"image {n}") for key in ("correct", "unclear") for c in annots[n].get(key, [])]
        for n in ids
    ]


def load_imagenet_multilabel(path: str | Path, val_labels: np.ndarray | None = None) -> Benchmark:
    """Shankar et al. multi-labels (TFDS ``imagenet2012_multilabel``): 20,000 val images, problematic skipped.

    Scoring averages accuracy per original class, so it needs ``val_labels``; without them the benchmark still
    gives its image order.
    """
    path = Path(path)
    annots, problematic, _ = _read_shankar(path)
    ids = tuple(sorted(annots, key=val_number))
    return Benchmark(
        "imagenet-multilabel",
        ids,
        "class-averaged",
        VAL_UNIVERSE,
        _multi_hot(_accepted(annots, ids, path), len(ids)),
        _originals(ids, val_labels),
        evaluated=np.array([n not in problematic for n in ids]),
    )


def load_imagenet_m(path: str | Path, val_labels: np.ndarray | None = None) -> Benchmark:
    """ImageNet-M: the 68 images listed under ``imagenet_m``; scored by the number whose top-1 is accepted."""
    path = Path(path)
    annots, _, names = _read_shankar(path)
    missing = [n for n in names if n not in annots]
    _expect(not missing, path, f"imagenet_m lists images without annotations, e.g. {missing[:3]}")
    ids = tuple(sorted(names, key=val_number))
    sets = _accepted(annots, ids, path)
    return Benchmark(
        "imagenet-m",
        ids,
        "count",
        VAL_UNIVERSE,
        _multi_hot(sets, len(ids)),
        _originals(ids, val_labels),
        evaluated=np.ones(len(ids), dtype=bool),
    )


def load_madry(path: str | Path, val_labels: np.ndarray | None = None) -> Benchmark:
    """MadryLab ImageNetMultiLabel: label set = the most-selected label of each annotated object (all labels
    tied for most-selected are kept); ``main`` = the majority main-object label (``main_top``)."""
    path = Path(path)
    data = _read_json(path)
    _expect(isinstance(data, dict), path, "expected a JSON object keyed by ILSVRC2012_val file name")
    assert isinstance(data, dict)
    ids = tuple(sorted(data, key=val_number))
    sets, main, original = [], [], []
    for n in ids:
        rec = data[n]
        _expect(
            isinstance(rec, dict) and {"objects", "main_top", "imagenet_label"} <= rec.keys(),
            path,
            f"image {n}: expected fields objects, main_top, imagenet_label",
        )
        labels: set[int] = set()
        for obj in rec["objects"]:
            top = max(v[0] for v in obj.values())
            labels.update(_class_index(c, path, f"image {n}") for c, v in obj.items() if v[0] == top)
        sets.append(sorted(labels))
        main.append(_class_index(rec["main_top"], path, f"image {n} main_top"))
        original.append(_class_index(rec["imagenet_label"], path, f"image {n} imagenet_label"))
    if val_labels is not None:
        original = _originals(ids, val_labels).tolist()  # type: ignore[union-attr]
    return Benchmark(
        "madry",
        ids,
        "madry",
        VAL_UNIVERSE,
        _multi_hot(sets, len(ids)),
        np.array(original, dtype=np.int64),
        np.array(main, dtype=np.int64),
    )


def load_benchmark(name: str, path: str | Path | None = None, base_path: str | Path | None = None) -> Benchmark:
    """Load benchmark ``name`` from its label file ``path``; ``base_path`` is the label file of its base
    benchmark (``imagenet-val`` or ``inv2``, see ``REGISTRY``), which supplies original labels."""
    info = REGISTRY.get(name)
    if info is None:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(REGISTRY)}")
    if path is None and name != "real":
        raise BenchmarkFileError(f"benchmark {name!r} needs its label file: {info.label_file}")
    if name == "imagenet-val":
        return load_imagenet_val(path)  # type: ignore[arg-type]
    if name == "inv2":
        return load_inv2(path)  # type: ignore[arg-type]
    if name == "inv2-ml":
        return load_inv2_ml(path, read_inv2_labels(base_path) if base_path else None)  # type: ignore[arg-type]
    val_labels = read_val_labels(base_path) if base_path else None
    loaders = {
        "real": load_real,
        "in-seg": load_in_seg,
        "imagenet-multilabel": load_imagenet_multilabel,
        "imagenet-m": load_imagenet_m,
        "madry": load_madry,
    }
    return loaders[name](path, val_labels)  # type: ignore[operator]


def load_benchmarks(names: Iterable[str], files: Mapping[str, str | Path]) -> dict[str, Benchmark]:
    """Load several benchmarks; ``files`` maps benchmark name -> label file (base benchmarks' files included)."""
    out = {}
    for name in names:
        info = REGISTRY.get(name)
        if info is None:
            raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(REGISTRY)}")
        out[name] = load_benchmark(name, files.get(name), files.get(info.base) if info.base else None)
    return out
