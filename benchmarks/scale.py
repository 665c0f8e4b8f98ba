"""The build's last mile at ImageNet's size, without images or models: package, importers, loading, targets.

Per size N (train images; validation is 50000/1281167 of it, at least 300, or a fixed ``--validation`` count, as a
real build always has 50,000, so that doubling N doubles only train) it writes a work directory of
discover and label shards (blob masks at ImageNet's usual image sizes as COCO RLE, 1-4 per image, top-k
softmax-like classes per mask and for the whole image), the stamps ``build-<split>.json`` (written by the CLI
itself), a TSV in the authors' format and a CutLER-style COCO JSON, all streamed. It then measures, each in a
fresh child process (wall time; peak RSS of that process alone): ``build package``, ``import tsv`` and
``import cutler`` through the CLI; ``load()`` + ``TrainingDataset`` opening, plain and crop-aware (the first open
builds datasets' cache; ``open_crop_warm`` is what every later process pays); microseconds and page faults
per item of every target scheme on one core through ``DataLoader(collate_fn=collate)``; the RSS and PSS of
DataLoader workers over an epoch. ``scale.json`` beside this file gets the figures per size, their growth from
one size to the next and the Parquet layout written (file and row-group sizes, shard counts).

    python benchmarks/scale.py [--sizes 10000,100000,1281167] [--validation 50000] [--work DIR] [--keep] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_TRAIN, FULL_VAL = 1_281_167, 50_000
TSV, COCO = "multilabel_compressed.tsv", "cutler.json"
STAGES = ("discover", "label")
AUTHORS_TOP_K = 5  # classes per mask in the authors' release
SIZES = [(375, 500, 48), (500, 375, 12), (333, 500, 10), (500, 333, 4), (334, 500, 4), (500, 500, 4)]
SIZES += [(400, 500, 3), (281, 500, 3), (300, 400, 2), (768, 1024, 3), (1200, 1600, 2), (2448, 3264, 1)]
"""(height, width, weight %) of the images: ImageNet's common sizes and a tail of large photos (approximate)."""
MASKS_PER_IMAGE = (0.1, 0.2, 0.3, 0.4)  # P(1..4 masks): mean 3
SCHEMES = (
    "local_soft",
    "local_hard@0.5",
    "local_soft+original",
    "local_soft+pred",
    "local_soft+prior+original",
    "local_soft+pairs+original",
)
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64, 96, 128)
CLI = [sys.executable, "-m", "multilabel_imagenet"]


# ------------------------------------------------------------------ generation (runs in a child)


class BlobPool:
    """Encoded blob masks per image size (smooth, slightly ragged edges: about 1-2 KB of RLE at 375x500), up to
    ``cap`` distinct ones for the commonest size and proportionally fewer (at least 100) for rarer ones, then
    drawn again at random; each draw gets a random MaskCut configuration as its source."""

    def __init__(self, rng: np.random.Generator, cap: int, sources: list[str]):
        self.rng, self.sources, self.pool = rng, sources, {}
        self.caps = {(h, w): max(100, cap * weight // SIZES[0][2]) for h, w, weight in SIZES}

    def _blob(self, h: int, w: int) -> np.ndarray:
        from PIL import Image

        gh, gw = max(4, 60 * h // max(h, w)), max(4, 60 * w // max(h, w))  # MaskCut's patch grid at 480 px
        yy, xx = np.mgrid[0:gh, 0:gw] / np.array([gh, gw])[:, None, None]
        field = 0.03 * self.rng.standard_normal((gh, gw))
        for _ in range(self.rng.integers(1, 4)):
            cy, cx, r = self.rng.uniform(0.15, 0.85), self.rng.uniform(0.15, 0.85), self.rng.uniform(0.08, 0.35)
            field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        field = np.asarray(Image.fromarray(field.astype(np.float32), "F").resize((w, h), Image.Resampling.BILINEAR))
        level = np.quantile(field[:: max(1, h // 64), :: max(1, w // 64)], 1 - self.rng.uniform(0.05, 0.6))
        return field > level

    def draw(self, h: int, w: int) -> dict:
        from multilabel_imagenet.builder import proposals

        masks = self.pool.setdefault((h, w), [])
        if len(masks) < self.caps[h, w]:
            found = None
            while found is None:  # an empty blob encodes to nothing: draw another
                found = proposals.encode(self._blob(h, w), "")
            masks.append(found.to_dict())
            mask = masks[-1]
        else:
            mask = masks[self.rng.integers(len(masks))]
        return mask | {"source": self.sources[self.rng.integers(len(self.sources))]}


def top_k(rng: np.random.Generator, first: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct classes (``first`` and classes near it, as similar classes are in ImageNet's order) and
    softmax-like scores, [R, k] each, sorted by score."""
    steps = rng.integers(1, 1000 // (4 * k) + 1, size=(len(first), k - 1))
    cls = (first[:, None] + np.concatenate([np.zeros((len(first), 1), int), steps.cumsum(1)], 1)) % 1000
    p1 = rng.uniform(0.2, 0.995, len(first))
    rest = rng.exponential(size=(len(first), k - 1)) ** 2
    rest *= ((1 - p1) * rng.uniform(0.3, 1.0, len(first)) / rest.sum(1))[:, None]
    scores = np.round(np.concatenate([p1[:, None], rest], 1), 6)
    order = np.argsort(-scores, 1, kind="stable")
    return np.take_along_axis(cls, order, 1), np.take_along_axis(scores, order, 1)


def records(split: str, n: int, rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """(image_id, path, label) in ImageNet's form: train sorted by class, validation with random labels."""
    from multilabel_imagenet import classes

    if split == "validation":
        ids = [f"ILSVRC2012_val_{k + 1:08d}" for k in range(n)]
        return [(i, f"{i}.JPEG", int(c)) for i, c in zip(ids, rng.integers(0, 1000, n), strict=True)]
    out = []
    for k in range(n):
        label = k * 1000 // n
        wnid = classes.wnid_of(label)
        out.append((f"{wnid}_{10000 + k}", f"{wnid}/{wnid}_{10000 + k}.JPEG", label))
    return out


class Published:
    """The train split as the authors' TSV and as a CutLER COCO JSON (annotations spooled, appended at the end)."""

    def __init__(self, tsv, coco, spool):
        self.tsv, self.images, self.annotations = tsv, coco, spool
        self.images.write('{"info":{"description":"scale benchmark"},"categories":[{"id":1,"name":"fg"}],"images":[')
        self.num_images = self.num_masks = 0

    def add(self, row: dict, labels: dict) -> None:
        """One train image: the union of its masks' top-5 classes (max score, 4 decimals, by class) to the TSV,
        its masks to the COCO JSON."""
        best: dict[int, float] = {}
        for cls, scores in zip(labels["mask_classes"], labels["mask_scores"], strict=True):
            for c, s in zip(cls[:AUTHORS_TOP_K], scores[:AUTHORS_TOP_K], strict=True):
                best[c] = max(best.get(c, 0.0), s)
        kept = sorted(c for c, s in best.items() if s >= 5e-5)  # the classes with a non-zero 4-decimal probability
        idx, prob = ",".join(map(str, kept)), ",".join(f"{best[c]:.4f}" for c in kept)
        self.tsv.write(f"{row['path']}\t{row['label']}\t{idx}\t{prob}\n")
        self.num_images += 1
        image = {"id": self.num_images, "file_name": row["path"], "width": row["height"], "height": row["width"]}
        self.images.write(("," if self.num_images > 1 else "") + json.dumps(image, separators=(",", ":")))  # swapped,
        for p in row["proposals"]:  # as CutLER writes them
            self.num_masks += 1
            ann = {"id": self.num_masks, "image_id": self.num_images, "category_id": 1, "iscrowd": 1}
            ann |= {"segmentation": {"size": p["size"], "counts": p["counts"]}, "bbox": p["bbox"], "area": p["area"]}
            self.annotations.write(("," if self.num_masks > 1 else "") + json.dumps(ann, separators=(",", ":")))

    def finish(self) -> None:
        self.annotations.seek(0)
        self.images.write('],"annotations":[')
        shutil.copyfileobj(self.annotations, self.images, 2**22)
        self.images.write("]}\n")


def shard(rng: np.random.Generator, chunk: list, blobs: BlobPool, k: int) -> tuple[list[dict], list[dict]]:
    """The discover and label rows of one shard's images."""
    heights, widths, weights = (np.array(v) for v in zip(*SIZES, strict=True))
    size = rng.choice(len(SIZES), p=weights / weights.sum(), size=len(chunk))
    n_masks = rng.choice(4, p=MASKS_PER_IMAGE, size=len(chunk)) + 1
    labels = np.array([c for _, _, c in chunk])
    own = np.repeat(labels, n_masks)  # a mask's top class: the image's label, a neighbour of it, or any class
    near = np.where(rng.random(len(own)) < 0.75, own, (own + rng.integers(-20, 21, len(own))) % 1000)
    mask_cls, mask_sc = top_k(rng, np.where(rng.random(len(own)) < 0.8, near, rng.integers(0, 1000, len(own))), k)
    glob_cls, glob_sc = top_k(rng, np.where(rng.random(len(chunk)) < 0.8, labels, rng.integers(0, 1000, len(chunk))), k)
    found, labelled, ends = [], [], np.cumsum(n_masks)
    for j, (image_id, path, label) in enumerate(chunk):
        base, masks = {"image_id": image_id, "path": path, "label": label}, slice(ends[j] - n_masks[j], ends[j])
        h, w = int(heights[size[j]]), int(widths[size[j]])
        found.append(base | {"width": w, "height": h, "proposals": [blobs.draw(h, w) for _ in range(n_masks[j])]})
        labelled.append(base | {"mask_classes": mask_cls[masks].tolist(), "mask_scores": mask_sc[masks].tolist()})
        labelled[-1] |= {"global_classes": glob_cls[j].tolist(), "global_scores": glob_sc[j].tolist()}
    return found, labelled


def generate(root: str, n_train: int, n_val: int, shard_size: int, pool: int, k: int, seed: int) -> dict:
    """The work directory, lists, TSV and COCO JSON of one size; only a shard of rows is in memory at a time."""
    from multilabel_imagenet.builder import configs, shards

    root, rng = Path(root), np.random.default_rng(seed)
    blobs = BlobPool(rng, pool, [c.name for c in configs.preset("paper")])
    (root / "lists").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as files:
        tsv, coco = (files.enter_context(open(root / f, "w", encoding="utf-8")) for f in (TSV, COCO))
        published = Published(tsv, coco, files.enter_context(tempfile.TemporaryFile("w+", dir=root)))
        for split, n in (("train", n_train), ("validation", n_val)):
            recs = records(split, n, rng)
            (root / "lists" / f"{split}.txt").write_text("".join(f"{p} {c}\n" for _, p, c in recs), "utf-8")
            found, labelled = (shards.StageDir(root / "work", s, split, math.ceil(n / shard_size)) for s in STAGES)
            for i, chunk in enumerate(shards.split_into_shards(recs, shard_size)):
                rows, labels = shard(rng, chunk, blobs, k)
                found.write(i, rows)
                labelled.write(i, labels)
                for row, lab in zip(rows, labels, strict=True) if split == "train" else ():
                    published.add(row, lab)
        published.finish()
    return {"masks": published.num_masks, "distinct_masks": sum(len(v) for v in blobs.pool.values())}


# ------------------------------------------------------------------ loading measurements (run in children)


def _ambiguity(folder: Path):
    """The package's calibrated ambiguity fixes, or (without a validation split) ones calibrated on random sets."""
    from multilabel_imagenet import targets
    from multilabel_imagenet.builder import aggregate

    path = folder / "metadata" / "ambiguity.json"
    if path.is_file():
        return targets.Ambiguity.from_dict(json.loads(path.read_text(encoding="utf-8")))
    rng, pairs = np.random.default_rng(0), aggregate.table8_pairs()
    truth, scores = [], np.zeros((2000, 1000), np.float32)
    for i, (a, b) in enumerate(pairs[j] for j in rng.integers(0, len(pairs), 2000)):
        truth.append({a, b} if rng.random() < 0.5 else {a})
        scores[i, [a, b]] = rng.uniform(0.5, 1.0), rng.uniform(0.0, 1.0)
    return aggregate.calibrate_ambiguity(truth, scores)


def _load(folder: str, cache: str, crop: bool) -> tuple:
    """``load()`` the train split, and its proposals when ``crop``; seconds taken."""
    from multilabel_imagenet.dataset import loading

    start = time.perf_counter()
    labels = loading.load(folder, "labels", "train", cache_dir=cache)
    proposals = loading.load(folder, "proposals", "train", cache_dir=cache) if crop else None
    return labels, proposals, round(time.perf_counter() - start, 3)


def _dataset(folder: str, labels, proposals, scheme: str) -> tuple:
    """The ``TrainingDataset`` of ``scheme`` (crop-aware with ``proposals``); seconds taken."""
    from multilabel_imagenet.dataset import crops, training

    ambiguity = _ambiguity(Path(folder)) if "+prior" in scheme or "+pairs" in scheme else None
    start = time.perf_counter()
    crop = {"proposals": proposals, "crop": crops.RandomResizedCropWithBox(224)} if proposals is not None else {}
    ds = training.TrainingDataset(labels, scheme, ambiguity=ambiguity, **crop)
    return ds, round(time.perf_counter() - start, 3)


def _loader(ds, items: int, batch: int, workers: int):
    """A user's DataLoader over ``items`` random rows of ``ds``, batched by :func:`training.collate`."""
    import torch

    from multilabel_imagenet.dataset import training

    picked = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:items].tolist()
    return torch.utils.data.DataLoader(ds, batch, sampler=picked, num_workers=workers, collate_fn=training.collate)


def child_open(folder: str, cache: str, crop: bool) -> dict:
    labels, proposals, load_s = _load(folder, cache, crop)
    ds, dataset_s = _dataset(folder, labels, proposals, SCHEMES[2])
    return {"load_s": load_s, "dataset_s": dataset_s, "rows": len(ds)}


def child_targets(folder: str, cache: str, items: int, batch: int, repeats: int = 3) -> dict:
    """Microseconds per item of every scheme (and crop-aware ``local_soft+original``) on one core, the best of
    ``repeats`` passes over the same items (the others are slowed by whatever else runs on the machine), with the
    page faults per item over all passes (major ones read the memory-mapped Arrow cache from disk)."""
    import resource

    import torch

    torch.set_num_threads(1)
    labels, proposals, _ = _load(folder, cache, crop=True)
    out, faults = {}, {}
    for scheme, crop in [(s, None) for s in SCHEMES] + [(SCHEMES[2], proposals)]:
        loader = _loader(_dataset(folder, labels, crop, scheme)[0], items, batch, 0)
        next(iter(loader))  # warm-up
        passes, before = [], resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(repeats):
            start, n = time.perf_counter(), 0
            for batch_out in loader:
                n += len(batch_out["target"])
            passes.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        name = scheme + ("+crop" if crop is not None else "")
        out[name] = round(1e6 * min(passes) / n, 1)
        faults[name] = {
            k: round((getattr(after, f"ru_{k}") - getattr(before, f"ru_{k}")) / (n * repeats), 2)
            for k in ("minflt", "majflt")
        }
    return {"items": n, "repeats": repeats, "us_per_item": out, "page_faults_per_item": faults}


def _memory(pid: int) -> tuple[float, float, float]:
    """(RSS, its anonymous part, PSS) of a process in MB: the rest of RSS is mapped files (datasets' Arrow cache)."""

    def field(name: str, key: str) -> float:
        lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
        return next(int(line.split()[1]) for line in lines if line.startswith(key)) / 1024

    return field("status", "VmRSS:"), field("status", "RssAnon:"), field("smaps_rollup", "Pss:")


def _children() -> list[int]:
    """The pids of this process's children (its DataLoader workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):  # not a process, or one that has just exited
            if entry.name.isdigit() and (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(os.getpid()):
                found.append(int(entry.name))
    return sorted(found)


def child_workers(folder: str, cache: str, workers: int, items: int, batch: int) -> dict:
    """RSS and PSS of each DataLoader worker over an epoch of crop-aware items."""
    labels, proposals, _ = _load(folder, cache, crop=True)
    loader = _loader(_dataset(folder, labels, proposals, SCHEMES[2])[0], items, batch, workers)
    steps, n = len(loader), 0
    samples: dict[int, list] = {}  # worker pid -> _memory() after the first batch, every tenth of the epoch, the last
    start = time.perf_counter()
    for b, out in enumerate(loader):
        n += len(out["target"])
        if b == 0 or (b + 1) % max(1, steps // 10) == 0 or b + 1 == steps:
            for pid in _children():
                with contextlib.suppress(OSError, StopIteration):  # a worker that has just exited
                    samples.setdefault(pid, []).append(_memory(pid))
    seconds = time.perf_counter() - start
    per_worker = []
    for series in samples.values():
        figures = {name: [round(v[i]) for v in series] for i, name in enumerate(("rss_mb", "anon_mb", "pss_mb"))}
        per_worker.append(figures | {f"{k[:-3]}_growth_mb": round(v[-1] - v[0], 1) for k, v in figures.items()})
    main_rss = _memory(os.getpid())[0]
    return {"items": n, "workers": per_worker, "main_rss_mb": round(main_rss), "items_per_s": round(n / seconds)}


CHILDREN = {"generate": generate, "open": child_open, "targets": child_targets, "workers": child_workers}


# ------------------------------------------------------------------ the parent: runs, layout, report


LAUNCHER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "open(sys.argv[1], 'w').write(f'{u.ru_maxrss} {u.ru_inblock}'); sys.exit(rc)"
)
"""Runs a command as its only child and records that child's peak RSS and the blocks it read from disk (not from
the page cache): launched from this small process, whose own high-water mark is all the child inherits (ru_maxrss
carries over exec from the process that forked it)."""


def run(cmd: list[str], env: dict | None = None) -> tuple[dict, str]:
    """Run ``cmd`` in a fresh child: (wall seconds, peak RSS and disk reads in MB and, if it failed, its stderr's
    tail; stdout)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err, rss = (Path(tmp) / name for name in ("out", "err", "rss"))
        start = time.perf_counter()
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            rc = subprocess.call(
                [sys.executable, "-c", LAUNCHER, str(rss), *cmd],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, **(env or {})},
            )
        result = {"seconds": round(time.perf_counter() - start, 2)}
        peak_kb, blocks = map(int, (rss.read_text() if rss.is_file() else "").split() or (0, 0))
        result |= {"peak_rss_mb": round(peak_kb / 1024), "disk_read_mb": round(blocks * 512 / 2**20)}
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    if rc != 0:
        result |= {"rc": rc, "error": (stderr or stdout)[-2000:]}
        print(f"  FAILED ({rc}): {' '.join(cmd[:6])} ...\n{result['error'][-600:]}", file=sys.stderr)
    return result, stdout


def child(kind: str, **params) -> dict:
    """One of :data:`CHILDREN` in a fresh process, with the figures it prints."""
    result, stdout = run([sys.executable, __file__, "_child", kind, json.dumps(params)], {"TQDM_DISABLE": "1"})
    return result if "error" in result else result | json.loads(stdout.strip().splitlines()[-1])


def cli(*args: str) -> dict:
    """``multilabel-imagenet ARGS`` in a fresh process."""
    return run([*CLI, *args], {"HF_HUB_OFFLINE": "1"})[0]


def layout(folder: Path) -> dict:
    """Per config/split of a dataset folder: rows, shard files (MB), row groups (MB uncompressed, rows)."""
    import pyarrow.parquet as pq

    groups: dict[str, list] = {}
    for path in sorted((folder / "data").glob("*/*.parquet")):
        groups.setdefault(f"{path.parent.name}/{path.name.split('-')[0]}", []).append(path)
    out = {}
    for key, paths in groups.items():
        metas = [pq.ParquetFile(p).metadata for p in paths]
        rgs = [m.row_group(i) for m in metas for i in range(m.num_row_groups)]
        sizes = [p.stat().st_size / 2**20 for p in paths]
        out[key] = {
            "rows": sum(m.num_rows for m in metas),
            "shards": len(paths),
            "shards_divide_gpu_counts": [g for g in GPU_COUNTS if len(paths) % g == 0],
            "file_mb": {"min": round(min(sizes), 2), "max": round(max(sizes), 2), "total": round(sum(sizes), 2)},
            "row_groups": len(rgs),
            "row_group_mb_max": round(max(rg.total_byte_size for rg in rgs) / 2**20, 2),
            "row_group_compressed_mb_max": round(
                max(sum(rg.column(c).total_compressed_size for c in range(rg.num_columns)) for rg in rgs) / 2**20, 2
            ),
            "row_group_rows_max": max(rg.num_rows for rg in rgs),
        }
    return out


def _mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def measure_size(root: Path, n: int, args: argparse.Namespace) -> dict:
    """Generate one size under ``root`` and run every measurement on it."""
    n_val = args.validation or min(FULL_VAL, max(min(n, 300), round(n * FULL_VAL / FULL_TRAIN)))
    config = root / "config.json"  # the paper preset, as `build config` prints it; shard_size names the shards
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(subprocess.check_output([*CLI, "build", "config", "--format", "json"], text=True), "utf-8")
    shard_size = json.loads(config.read_text("utf-8"))["shard_size"]
    print(f"size {n}: generating {n} train and {n_val} validation images", file=sys.stderr)
    gen = child("generate", root=str(root), n_train=n, n_val=n_val, shard_size=shard_size, pool=args.pool,
                k=args.top_k, seed=args.seed)  # fmt: skip
    gen |= {"work_dir_mb": _mb(root / "work"), "tsv_mb": _mb(root / TSV), "coco_json_mb": _mb(root / COCO)}
    report: dict = {"train": n, "validation": n_val, "generate": gen}
    runs = report["runs"] = {"baseline_imports": run([sys.executable, "-c", "import torch, datasets, pyarrow"])[0]}
    work, out = ["--work-dir", str(root / "work"), "--config", str(config)], ["--output", str(root / "dataset")]

    def images(split: str) -> list[str]:
        return ["--images", str(root / "lists" / f"{split}.txt"), "--layout", "list", "--split", split]

    for split in ("validation", "train"):  # every shard is complete: discover only lists the images, writes the stamp
        runs[f"stamp_{split}"] = cli("build", "discover", *images(split), *work, *out, "--quiet")
    print(f"size {n}: package, imports", file=sys.stderr)
    failed = [runs[f"stamp_{split}"] for split in ("validation", "train") if "error" in runs[f"stamp_{split}"]]
    runs["package"] = failed[0] if failed else cli("build", "package", *images("train"), *work, *out, "--quiet")
    runs["import_tsv"] = cli("import", "tsv", str(root / TSV), "--output", str(root / "tsv"))
    runs["import_cutler"] = cli("import", "cutler", str(root / COCO), "--output", str(root / "cutler"))
    report["layout"] = {name: layout(root / name) for name in ("dataset", "tsv", "cutler") if (root / name).is_dir()}
    if "error" not in runs["package"]:
        print(f"size {n}: loading and targets", file=sys.stderr)
        opened = {"folder": str(root / "dataset"), "cache": str(root / "hf-cache")}
        runs["open_plain"] = child("open", **opened, crop=False)  # builds datasets' cache of labels
        runs["open_crop"] = child("open", **opened, crop=True)  # and of proposals
        runs["open_crop_warm"] = child("open", **opened, crop=True)  # what each later process (DDP rank) pays
        runs["targets"] = child("targets", **opened, items=args.items, batch=args.batch)
        runs["workers_crop"] = child("workers", **opened, workers=args.workers, items=min(n, 10 * args.items),
                                     batch=args.batch)  # fmt: skip
    report["disk_mb"] = _mb(root)
    return report


def growth(sizes: dict) -> dict:
    """Ratio of seconds and peak RSS from one size to the next, per run, beside the ratio of sizes."""
    keys, out = list(sizes), {}
    for a, b in zip(keys, keys[1:], strict=False):
        ra, rb = ({"generate": sizes[k]["generate"], **sizes[k]["runs"]} for k in (a, b))
        entry = {"size": round(sizes[b]["train"] / sizes[a]["train"], 2)}
        for name, y in rb.items():
            x = ra.get(name)
            if x and "error" not in x and "error" not in y:
                entry[name] = {
                    "seconds": round(y["seconds"] / x["seconds"], 2),
                    "peak_rss": round(y["peak_rss_mb"] / max(1, x["peak_rss_mb"]), 2),
                }
        out[f"{a}->{b}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=f"10000,100000,{FULL_TRAIN}", help="Train images per run, comma-separated.")
    parser.add_argument("--validation", type=int, help="Validation images at every size [default: scaled with N].")
    parser.add_argument("--work", type=Path, help="Folder for the generated data [default: a temporary folder].")
    parser.add_argument("--keep", action="store_true", help="Keep each size's data (else deleted after it).")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("scale.json"))
    parser.add_argument("--pool", type=int, default=3000, help="Distinct masks of the commonest image size.")
    parser.add_argument("--top-k", type=int, default=10, help="Classes per mask and image (the build stores 10).")
    parser.add_argument("--items", type=int, default=5000, help="Items timed per scheme (x10 in the workers' run).")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the RSS run.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import machine

    sizes = [int(s) for s in args.sizes.split(",")]
    base = args.work or Path(tempfile.mkdtemp(prefix="scale-"))
    result = {"machine": machine.describe(), "settings": vars(args) | {"work": str(base), "out": str(args.out)}}
    result |= {"image_sizes_hw_weight": SIZES, "masks_per_image_p": MASKS_PER_IMAGE, "sizes": {}}
    try:
        for n in sizes:
            root = base / str(n)
            result["sizes"][str(n)] = measure_size(root, n, args)
            result["growth"] = growth(result["sizes"])
            args.out.write_text(json.dumps(result, indent=1) + "\n")  # after every size: a long run keeps its part
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    for n, r in result["sizes"].items():
        figures = {k: (v["seconds"], v["peak_rss_mb"]) for k, v in r["runs"].items() if "error" not in v}
        print(n, "(seconds, peak MB):", figures)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_child":
        print(json.dumps(CHILDREN[sys.argv[2]](**json.loads(sys.argv[3]))))
    else:
        main()
