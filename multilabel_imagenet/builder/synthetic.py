"""Deterministic synthetic "mini ImageNet" scenes with ground truth, for the demo and end-to-end tests.

Each scene is a cluttered, low-saturation background with 1-4 objects from :data:`CLASSES`, a small set of
visually distinct shape + texture classes, each standing in for one real ImageNet-1k class so that every stage
of the build (1000-way scores, wnid folders, ReLabel maps) runs on it exactly as on the real data. A scene
knows its instance masks, its ground-truth label set and its "single label" (the largest object's class, as an
ImageNet annotator would give). :func:`write_mini_imagenet` writes scenes as an ImageNet-style folder with
ReLabel-format label maps (REFERENCE.md section 2) derived from the ground truth with controllable noise.

Everything is a pure function of ``(split, index, seed)``: the same arguments give the same bytes.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from multilabel_imagenet import classes
from multilabel_imagenet.builder import proposals

RELABEL_GRID = 15
"""ReLabel label maps are 15 x 15 (Yun et al. 2021; REFERENCE.md section 2)."""
RELABEL_TOPK = 5


@dataclass(frozen=True)
class SyntheticClass:
    """A synthetic object class: a shape, a texture, and the ImageNet-1k class it stands for."""

    wnid: str
    shape: str
    texture: str
    colour: tuple[int, int, int]
    accent: tuple[int, int, int] = (0, 0, 0)

    @property
    def index(self) -> int:
        return classes.index_of(self.wnid)

    @property
    def name(self) -> str:
        return classes.name_of(self.index)


CLASSES: tuple[SyntheticClass, ...] = (
    SyntheticClass("n07747607", "disc", "shaded", (255, 140, 0)),  # orange
    SyntheticClass("n07749582", "ellipse", "shaded", (250, 230, 30)),  # lemon
    SyntheticClass("n06794110", "octagon", "flat", (215, 20, 30)),  # street sign
    SyntheticClass("n02391049", "blob", "stripes", (250, 250, 250), (10, 10, 10)),  # zebra
    SyntheticClass("n03598930", "square", "checker", (20, 70, 230), (40, 230, 230)),  # jigsaw puzzle
    SyntheticClass("n07745940", "triangle", "dots", (200, 0, 90), (255, 230, 60)),  # strawberry
    SyntheticClass("n07718472", "capsule", "shaded", (40, 170, 50)),  # cucumber
    SyntheticClass("n04507155", "half_disc", "flat", (130, 40, 210)),  # umbrella
)
"""The synthetic classes, chosen to be far apart in colour and texture, and from the background."""

OBJECT_COUNT_WEIGHTS = (0.45, 0.30, 0.15, 0.10)
"""Probability of 1, 2, 3 and 4 objects per scene (demo choice: more multi-object than ImageNet's fifth)."""

MIN_VISIBLE_FRACTION = 0.7
"""An object occluded by later ones keeps at least this fraction of its drawn area, else it is re-placed."""


@dataclass
class SceneObject:
    """One object instance: its class and visible (occlusion-aware) mask."""

    class_index: int
    mask: np.ndarray  # H x W bool

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """[x, y, w, h] of the visible mask, COCO convention."""
        ys, xs = np.nonzero(self.mask)
        return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@dataclass
class Scene:
    """A synthetic image with its objects; ``label`` is the single ImageNet-style label (largest object)."""

    image_id: str
    image: np.ndarray  # H x W x 3 uint8
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def label(self) -> int:
        return max(self.objects, key=lambda o: o.area).class_index

    @property
    def label_set(self) -> list[int]:
        """Sorted ground-truth classes present in the scene."""
        return sorted({o.class_index for o in self.objects})

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


_SPLIT_STREAM = {"train": 0, "validation": 1}


def _rng(split: str, index: int, seed: int, stream: int = 0) -> np.random.Generator:
    if split not in _SPLIT_STREAM:
        raise ValueError(f"split must be one of {sorted(_SPLIT_STREAM)}, got {split!r}")
    return np.random.default_rng([seed, _SPLIT_STREAM[split], index, stream])


def _upsample(values: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(values.astype(np.float32)).resize((width, height), Image.BICUBIC))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Clutter of low saturation: smooth tonal noise, faint lines and blobs, sensor noise."""
    base = rng.uniform(95, 170)
    tint = rng.uniform(-12, 12, size=3)
    luminance = _upsample(rng.normal(0, 18, size=(6, 8)), height, width)
    chroma = np.stack([_upsample(rng.normal(0, 5, size=(6, 8)), height, width) for _ in range(3)], axis=-1)
    canvas = Image.fromarray(np.clip(base + tint + luminance[..., None] + chroma, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(10, 25))):
        grey = int(rng.uniform(base - 40, base + 40))
        shade = tuple(int(np.clip(grey + rng.uniform(-10, 10), 0, 255)) for _ in range(3))
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.6:
            x1, y1 = x0 + rng.normal(0, width / 4), y0 + rng.normal(0, height / 4)
            draw.line([(x0, y0), (x1, y1)], fill=shade, width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(3, 14)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=shade)
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 4, size=(height, width, 3))
    return np.clip(pixels, 0, 255)


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float, aspect: float) -> list[tuple]:
    """Vertices of ``shape`` centred at (cx, cy); ``radius`` is the half-extent of the longer axis."""
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    if shape == "disc":
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "ellipse":
        pts = np.stack([np.cos(t), aspect * np.sin(t)], 1)
    elif shape == "blob":
        wobble = 1 + 0.15 * np.sin(3 * t + angle) + 0.08 * np.cos(5 * t)
        pts = np.stack([np.cos(t), 0.75 * np.sin(t)], 1) * wobble[:, None]
    elif shape == "octagon":
        k = np.arange(8) * np.pi / 4 + np.pi / 8
        pts = np.stack([np.cos(k), np.sin(k)], 1)
    elif shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.8
    elif shape == "triangle":
        pts = np.array([[-1, -0.7], [1, -0.7], [0, 1]], dtype=float)
    elif shape == "half_disc":
        h = np.linspace(np.pi, 2 * np.pi, 37)
        pts = np.concatenate([np.stack([np.cos(h), np.sin(h) + 0.45], 1), [[1, 0.45], [-1, 0.45]]])
    elif shape == "capsule":
        half = np.linspace(-np.pi / 2, np.pi / 2, 19)
        right = np.stack([0.6 + 0.4 * np.cos(half), 0.4 * np.sin(half)], 1)
        pts = np.concatenate([right, -right])
    else:
        raise ValueError(f"unknown synthetic shape {shape!r}")
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rot.T * radius + np.array([cx, cy])
    return [tuple(p) for p in pts]


def _texture(
    cls: SyntheticClass, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, cx: float, cy: float, radius: float
) -> np.ndarray:
    """The class's colours at pixel coordinates (``ys``, ``xs``); N x 3 float."""
    yy, xx = ys.astype(np.float32), xs.astype(np.float32)
    colour = np.array(cls.colour, dtype=np.float32)
    accent = np.array(cls.accent, dtype=np.float32)
    if cls.texture == "flat":
        out = np.broadcast_to(colour, (len(ys), 3))
    elif cls.texture == "shaded":
        dist = np.hypot(xx - cx + radius * 0.3, yy - cy + radius * 0.3) / max(radius, 1)
        out = colour * np.clip(1.15 - 0.35 * dist, 0.6, 1.15)[:, None]
    elif cls.texture == "stripes":
        theta = rng.uniform(0, np.pi)
        period = max(radius / 3.5, 4.0)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        out = np.where((np.sin(2 * np.pi * phase) > 0)[:, None], colour, accent)
    elif cls.texture == "checker":
        cell = max(radius / 3, 4.0)
        board = (np.floor((xx - cx) / cell) + np.floor((yy - cy) / cell)) % 2 == 0
        out = np.where(board[:, None], colour, accent)
    elif cls.texture == "dots":
        cell = max(radius / 3.5, 5.0)
        fx, fy = ((xx - cx) / cell) % 1 - 0.5, ((yy - cy) / cell) % 1 - 0.5
        out = np.where((np.hypot(fx, fy) < 0.18)[:, None], accent, colour)
    else:
        raise ValueError(f"unknown synthetic texture {cls.texture!r}")
    return out + rng.normal(0, 6, size=(len(ys), 3))


def _place_objects(rng: np.random.Generator, height: int, width: int, chosen: list[SyntheticClass]):
    """Shapes for ``chosen`` with visible masks; re-draws placements until none is hidden too much."""
    short = min(height, width)
    for _attempt in range(50):
        drawn: list[tuple[SyntheticClass, np.ndarray, tuple[float, float, float]]] = []
        visible: list[np.ndarray] = []
        for cls in chosen:
            radius = rng.uniform(0.13, 0.24 if len(chosen) > 2 else 0.32) * short
            cx = rng.uniform(radius * 0.8, width - radius * 0.8)
            cy = rng.uniform(radius * 0.8, height - radius * 0.8)
            layer = Image.new("L", (width, height), 0)
            poly = _polygon(cls.shape, cx, cy, radius, rng.uniform(0, 2 * np.pi), rng.uniform(0.55, 0.8))
            ImageDraw.Draw(layer).polygon(poly, fill=1)
            mask = np.asarray(layer, dtype=bool)
            visible = [v & ~mask for v in visible] + [mask.copy()]
            drawn.append((cls, mask, (cx, cy, radius)))
        if all(v.sum() >= MIN_VISIBLE_FRACTION * d[1].sum() and v.any() for v, d in zip(visible, drawn, strict=True)):
            return drawn, visible
    raise RuntimeError("could not place synthetic objects without heavy occlusion")  # pragma: no cover


def make_scene(index: int, seed: int = 0, split: str = "train") -> Scene:
    """Scene number ``index`` of ``split``; deterministic in ``(split, index, seed)``."""
    rng = _rng(split, index, seed)
    height, width = int(rng.integers(240, 401)), int(rng.integers(300, 513))
    n_objects = int(rng.choice(len(OBJECT_COUNT_WEIGHTS), p=OBJECT_COUNT_WEIGHTS)) + 1
    chosen = [CLASSES[i] for i in rng.choice(len(CLASSES), size=n_objects, replace=False)]
    pixels = _background(rng, height, width)
    drawn, visible = _place_objects(rng, height, width, chosen)
    for cls, mask, (cx, cy, radius) in drawn:
        ys, xs = np.nonzero(mask)
        pixels[ys, xs] = _texture(cls, rng, ys, xs, cx, cy, radius)
    objects = [SceneObject(cls.index, vis) for (cls, _, _), vis in zip(drawn, visible, strict=True)]
    scene = Scene(image_id="", image=np.clip(pixels, 0, 255).astype(np.uint8), objects=objects)
    scene.image_id = (
        f"{classes.wnid_of(scene.label)}_{index}" if split == "train" else f"ILSVRC2012_val_{index + 1:08d}"
    )
    return scene


def relabel_map(scene: Scene, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """A ReLabel-format label map for ``scene``: float32 [2, 5, 15, 15], top-5 logits then class indices.

    Cell (row r, column c) covers image rows r*H/15..(r+1)*H/15 and columns c*W/15..(c+1)*W/15, as in ReLabel's
    maps. An object's logit in a cell grows with the fraction of the cell it covers (up to 14 for full
    coverage); the single label also gets a weak image-wide logit (ReLabel maps carry the image's class almost
    everywhere); every cell gets 5 random distractor classes near logit 1. ``noise`` is the standard deviation
    of Gaussian noise added to every logit; 0 gives clean maps.
    """
    rng = np.random.default_rng([seed, 7, zlib.crc32(scene.image_id.encode())])
    logits = np.zeros((classes.NUM_CLASSES, RELABEL_GRID, RELABEL_GRID), dtype=np.float32)
    for obj in scene.objects:
        cover = np.asarray(Image.fromarray(obj.mask.astype(np.float32)).resize((RELABEL_GRID, RELABEL_GRID), Image.BOX))
        logits[obj.class_index] = np.maximum(logits[obj.class_index], np.where(cover > 0, 2.0 + 12.0 * cover, 0.0))
    logits[scene.label] = np.maximum(logits[scene.label], 2.5)
    distractors = rng.choice(classes.NUM_CLASSES, size=5, replace=False)
    logits[distractors] = np.maximum(logits[distractors], rng.uniform(0.5, 1.5, size=(5, 1, 1)))
    candidates = np.flatnonzero(logits.reshape(classes.NUM_CLASSES, -1).max(1) > 0)
    sub = logits[candidates] + rng.normal(0, noise, size=(len(candidates), RELABEL_GRID, RELABEL_GRID))
    order = np.argsort(-sub, axis=0, kind="stable")[:RELABEL_TOPK]
    top_logits = np.take_along_axis(sub, order, axis=0)
    return np.stack([top_logits, candidates[order].astype(np.float32)]).astype(np.float32)


def _rle(mask: np.ndarray) -> dict:
    encoded = proposals.encode(mask, source="ground_truth")  # visible masks are never empty
    return {"size": list(encoded.size), "counts": encoded.counts}


def write_mini_imagenet(
    root: str | Path,
    num_train: int = 64,
    num_val: int = 16,
    seed: int = 0,
    map_noise: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write synthetic scenes as an ImageNet-style folder and return ``root``.

    Layout (the same as the real data, so every stage runs on it unchanged)::

        train/<wnid>/<wnid>_<n>.JPEG          single label = largest object's class
        val/ILSVRC2012_val_<n:08d>.JPEG       flat validation layout
        val_labels.txt                        one wnid per line, line i = ILSVRC2012_val_{i+1:08d}
        relabel_maps/<wnid>/<wnid>_<n>.pt     ReLabel-format [2, 5, 15, 15] float32 tensors (train only)
        ground_truth/{train,validation}.jsonl image_id, path, label, labels, objects (class, bbox, area, RLE)
        classes.json                          the synthetic classes and the ImageNet classes they stand for

    ``progress`` is called with 1 after every image written.
    """
    import torch

    root = Path(root)
    (root / "ground_truth").mkdir(parents=True, exist_ok=True)
    val_wnids = []
    for split, count in (("train", num_train), ("validation", num_val)):
        with open(root / "ground_truth" / f"{split}.jsonl", "w", encoding="utf-8") as gt:
            for index in range(count):
                scene = make_scene(index, seed=seed, split=split)
                wnid = classes.wnid_of(scene.label)
                if split == "train":
                    rel = f"{wnid}/{scene.image_id}.JPEG"
                    image_path = root / "train" / rel
                    map_path = root / "relabel_maps" / wnid / f"{scene.image_id}.pt"
                    map_path.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(torch.from_numpy(relabel_map(scene, noise=map_noise, seed=seed)), map_path)
                else:
                    rel = f"{scene.image_id}.JPEG"
                    image_path = root / "val" / rel
                    val_wnids.append(wnid)
                image_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(scene.image).save(image_path, format="JPEG", quality=92)
                record = {
                    "image_id": scene.image_id,
                    "path": rel,
                    "width": scene.width,
                    "height": scene.height,
                    "label": scene.label,
                    "labels": scene.label_set,
                    "objects": [
                        {"class_index": o.class_index, "bbox": list(o.bbox), "area": o.area, "mask": _rle(o.mask)}
                        for o in scene.objects
                    ],
                }
                gt.write(json.dumps(record) + "\n")
                if progress is not None:
                    progress(1)
    (root / "val_labels.txt").write_text("".join(f"{w}\n" for w in val_wnids), encoding="utf-8")
    meta = [{"index": c.index, "wnid": c.wnid, "name": c.name, "shape": c.shape, "texture": c.texture} for c in CLASSES]
    (root / "classes.json").write_text(json.dumps({"seed": seed, "classes": meta}, indent=1), encoding="utf-8")
    return root


def label_quality(predicted: dict[str, Iterable[int]], ground_truth: str | Path) -> dict[str, float]:
    """Predicted label sets against a ``ground_truth/<split>.jsonl`` file of :func:`write_mini_imagenet`.

    Micro precision, recall and F1 over all (image, class) pairs, and the recall of secondary objects: the
    ground-truth classes other than the image's single label. Every image of the file must be predicted."""
    tp = fp = fn = secondary = secondary_found = 0
    with open(ground_truth, encoding="utf-8") as f:
        truth = [json.loads(line) for line in f]
    missing = [t["image_id"] for t in truth if t["image_id"] not in predicted]
    if missing:
        raise ValueError(f"{ground_truth}: {len(missing)} images have no prediction, e.g. {missing[:3]}")
    for t in truth:
        pred, true = set(map(int, predicted[t["image_id"]])), set(t["labels"])
        tp, fp, fn = tp + len(pred & true), fp + len(pred - true), fn + len(true - pred)
        others = true - {t["label"]}
        secondary, secondary_found = secondary + len(others), secondary_found + len(others & pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "images": len(truth),
        "micro_precision": precision,
        "micro_recall": recall,
        "micro_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "secondary_objects": secondary,
        "secondary_recall": secondary_found / secondary if secondary else 0.0,
    }


def blob_features(h: int, w: int, d: int, seed: int, noise: float = 0.8, max_radius: float = 0.5) -> torch.Tensor:
    """A synthetic (h*w, d) patch-feature map for solver tests and benchmarks: a background vector, 1-4 discs
    (radius up to ``max_radius`` of the height; some touch borders or corners) with vectors of their own, and
    Gaussian noise. Deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    f = torch.randn(d, generator=g).expand(h, w, d).clone()
    for _ in range(1 + seed % 4):
        cy, cx = torch.randint(0, h, (2,), generator=g)
        r = torch.randint(max(2, h // 8), max(3, int(h * max_radius)), (1,), generator=g)
        f[((yy - cy) ** 2 + (xx - cx) ** 2) < r**2] = torch.randn(d, generator=g)
    return (f + noise * torch.randn(h, w, d, generator=g)).reshape(h * w, d)


def twin_features(h: int, w: int, d: int, seed: int, noise: float = 0.0) -> torch.Tensor:
    """A (h*w, d) map where the seed of a cut is tied in exact arithmetic: a background vector and two disjoint
    discs (one per half of the width, radius 2 to h/5) with the SAME vector, plus Gaussian noise. The discs'
    patches have identical affinity rows (exactly so without noise), so their eigenvector entries are equal and
    which twin is the first mask is decided by the seed rule (``maskcut.first_argmax``). Needs w >= 15."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    f = torch.randn(d, generator=g).expand(h, w, d).clone()
    twin = torch.randn(d, generator=g)
    r = int(torch.randint(2, max(3, min(h, w) // 5), (1,), generator=g))
    for lo, hi in ((r, w // 2 - r), (w // 2 + r, w - r)):
        cy = int(torch.randint(r, h - r, (1,), generator=g))
        cx = int(torch.randint(lo, hi, (1,), generator=g))
        f[((yy - cy) ** 2 + (xx - cx) ** 2) < r**2] = twin
    return (f + noise * torch.randn(h, w, d, generator=g)).reshape(h * w, d)


def tiny_features(h: int, w: int, d: int, seed: int, noise: float = 0.0) -> torch.Tensor:
    """A (h*w, d) map holding only tiny objects: a background vector and 2-5 discs of radius 1 or 2 (1 to 13
    patches) with vectors of their own, plus Gaussian noise. Their cuts are nearly degenerate (several objects
    as good as one another), the case where solvers and seed rules part most."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    f = torch.randn(d, generator=g).expand(h, w, d).clone()
    for _ in range(2 + seed % 4):
        cy, cx = torch.randint(0, h, (2,), generator=g)
        r = torch.randint(1, 3, (1,), generator=g)
        f[((yy - cy) ** 2 + (xx - cx) ** 2) < r**2] = torch.randn(d, generator=g)
    return (f + noise * torch.randn(h, w, d, generator=g)).reshape(h * w, d)


# Colour photographs bundled with scikit-image (no download): the real-image half of the CRF agreement set.
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
)


def crf_cases(scenes: int, photos: Iterable[str], size: int = 384, seed: int = 0) -> list[tuple]:
    """A varied set of CRF inputs as ``(name, image, masks)``: an RGB uint8 (size, size) image and the raw
    masks a CRF would refine in the pipeline: the synthetic MaskCut preset's masks on that image (upsampled
    patch masks, disjoint), plus one random ellipse on the same 8-px patch grid. Images: ``scenes`` synthetic
    scenes and the named scikit-image photographs (:data:`SKIMAGE_PHOTOS`; needs scikit-image)."""
    from multilabel_imagenet.builder import backbones, configs, maskcut

    pictures = [(f"scene-{i}", make_scene(i, seed=seed).image) for i in range(scenes)]
    photos = list(photos)
    if photos:
        import skimage.data

        pictures += [(name, getattr(skimage.data, name)()[..., :3]) for name in photos]
    (config,) = configs.preset("synthetic")
    extractor = backbones.load_backbone(config.backbone, config.feature)
    grid = size // extractor.patch_size
    rng = np.random.default_rng(seed)
    cases = []
    for name, picture in pictures:
        x, (image,) = backbones.preprocess([np.ascontiguousarray(picture, dtype=np.uint8)], size)
        features = extractor(x)
        patch_masks = maskcut.maskcut_patches(features, (grid, grid), config.tau, config.n)[0]
        yy, xx = np.mgrid[:grid, :grid]
        (cy, cx), (ry, rx) = rng.uniform(0.2, 0.8, 2) * grid, rng.uniform(0.1, 0.4, 2) * grid
        ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        masks = [m for m in maskcut.full_resolution(patch_masks, (size, size)) if m.any()]
        masks += maskcut.full_resolution([ellipse], (size, size))
        cases.append((name, image, masks))
    return cases
