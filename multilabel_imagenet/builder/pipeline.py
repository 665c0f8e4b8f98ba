"""The build's stages over one split: discover -> select -> train-labeler -> label (DESIGN.md "Build stages").

Every stage reads and writes the work directory (:mod:`shards`), one file per shard of images, so each can run
on its own, be resumed after a kill, or be split over independent processes (``--shard I/N``) or a Ray
cluster. Images that cannot be decoded, missing ReLabel maps and images without proposals are recorded in the
shard files with their reason, collected into ``errors.jsonl`` by the package stage (:mod:`.package`), and
counted; a run never stops for them. Settings live in :mod:`.settings`, the device loops in :mod:`.loaders`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from multilabel_imagenet import atomic, images
from multilabel_imagenet.builder import (
    backbones,
    labeler,
    labeler_online,
    labeler_train,
    listing,
    maskcut,
    relabel_maps,
    shards,
    stamp,
)
from multilabel_imagenet.builder.loaders import discover_records, label_records, labeler_features
from multilabel_imagenet.builder.package import ERRORS_JSONL, package
from multilabel_imagenet.builder.settings import (
    CHECKPOINT,
    LABELER_ERRORS,
    RUNTIME_SETTINGS,
    SHARDED_STAGES,
    STAGES,
    BuildConfig,
    BuildInputs,
    resolve_device,
)
from multilabel_imagenet.dataset import cutler_index, importers, schema, writer

IMPORTED_INDEX = "proposals-from.index.parquet"
"""The work directory's indexed copy of a ``--proposals-from`` COCO JSON."""


class Build:
    """One split's build in one work directory. Stages are methods; each skips complete shards."""

    def __init__(self, inputs: BuildInputs, config: BuildConfig, shard: str | None = None, progress: bool = True):
        self.inputs, self.config, self.progress = inputs, config, progress
        self.worker, self.workers = shards.parse_shard_spec(shard)
        self.records = listing.open_listing(inputs.work_dir, inputs.split, inputs.images, inputs.layout, inputs.labels)
        if not self.records:
            raise ValueError(f"{inputs.images}: no images")
        self.shards = shards.split_into_shards(self.records, config.shard_size)
        self.device = resolve_device(inputs.device)
        self._extractors: dict = {}
        self._head: tuple | None = None
        self._imported: cutler_index.CutlerIndex | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._threads: ThreadPoolExecutor | None = None
        self.stage_seconds: dict[str, float] = {}
        self._check_work_dir()

    # ------------------------------------------------------------ bookkeeping

    def _check_work_dir(self) -> None:
        """Refuse to mix shards of different configurations, image lists or device types in one work directory.

        The stamp holds every setting that changes results (the configuration less :data:`RUNTIME_SETTINGS`,
        with the MaskCut configurations resolved from their preset), the image list and the device type. A
        mismatch of the first two stops here; the device type is checked when a stage first runs a model
        (:meth:`_check_device`), so ``select`` and ``package`` may run elsewhere, e.g. on a CPU node after a GPU
        build. Either message names what differs."""
        stamp_now = {
            "config": {k: v for k, v in asdict(self.config).items() if k not in RUNTIME_SETTINGS},
            "maskcut_configs": [c.to_dict() for c in self.config.maskcut_configs()],
            "images": len(self.records),
            "first": self.records[0].path,
            "last": self.records[-1].path,
            "proposals_from": None if self.inputs.proposals_from is None else str(self.inputs.proposals_from),
            "weights_sha256": {name: stamp.weights_digest(Path(p)) for name, p in sorted(self.config.weights.items())},
            "device": self.device.type,
        }
        self._stamped_device = stamp.check_or_write(self.inputs.work_dir, self.inputs.split, stamp_now)

    def _check_device(self) -> None:
        """Refuse to run a model on another device type than the work directory's build (results differ)."""
        if self._stamped_device != self.device.type:
            there = self._stamped_device or "an unrecorded device type"
            raise ValueError(
                f"{stamp.stamp_path(self.inputs.work_dir, self.inputs.split)}: the work directory's build ran its "
                f"models on {there}, this process on {self.device.type}; results differ by device type, so use "
                f"--device {self._stamped_device or '...'}, a new --work-dir, or delete it to start over"
            )

    def stage(self, name: str) -> shards.StageDir:
        return shards.StageDir(self.inputs.work_dir, name, self.inputs.split, len(self.shards))

    def todo(self, stage: shards.StageDir) -> list[int]:
        """This worker's shards of ``stage`` that are not complete yet."""
        return [i for i in shards.mine(len(self.shards), self.worker, self.workers) if not stage.is_complete(i)]

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="img", disable=not self.progress, dynamic_ncols=True)

    def _crf_pool(self) -> ProcessPoolExecutor | None:
        """The process pool for CRF refinement (``crf_workers`` processes, started on first use)."""
        if self.config.crf_workers > 0 and self._pool is None:
            self._pool = ProcessPoolExecutor(self.config.crf_workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def _cpu_threads(self) -> ThreadPoolExecutor | None:
        """The thread pool for the CPU steps of MaskCut (``cpu_threads`` threads, started on first use)."""
        if self.config.cpu_threads > 0 and self._threads is None:
            self._threads = ThreadPoolExecutor(self.config.cpu_threads, thread_name_prefix="maskcut-cpu")
        return self._threads

    def _extractor(self, backbone: str, feature: str) -> backbones.Extractor:
        self._check_device()
        return backbones.cached_extractor(
            self._extractors, backbone, feature, self.config.weights, self.device, self.config.precision
        )

    def run_sharded(self, name: str) -> None:
        """Run a sharded stage (discover, select, label) over this worker's incomplete shards."""
        out = self.stage(name)
        todo = self.todo(out)
        self.check_ready(name)
        with self._bar(sum(len(self.shards[i]) for i in todo), name) as bar:
            for i in todo:
                try:
                    self.write_shard(name, i, bar.update)
                except images.ImageReadError as err:
                    raise images.ImageReadError(
                        err.path, f"{err.reason}; shard {i} of {name} was not written, rerun the build to try again"
                    ) from None

    def write_shard(self, name: str, index: int, tick: Callable[[int], object] = lambda n: None) -> None:
        """Compute shard ``index`` of stage ``name`` and write it with its counters, holding its lock (a shard
        another process finished meanwhile is left as it is)."""
        stage = self.stage(name)
        with stage.lock(index):
            if not stage.is_complete(index):
                stage.write(index, self.shard_rows(name, index, tick), ROW_COUNTERS[name])

    def check_ready(self, name: str) -> None:
        """Fail early, naming what is missing, when stage ``name`` cannot run with these inputs."""
        if name == "select":
            if self.inputs.split != "train":
                raise ValueError("select runs on the train split (ReLabel maps exist for train images only)")
            if self.inputs.relabel_maps is None:
                raise ValueError("select needs --relabel-maps DIR (ReLabel's <wnid>/<image>.pt files)")
        elif name == "label":
            self.checkpoint()

    def shard_rows(self, name: str, index: int, tick: Callable[[int], object] = lambda n: None) -> list[dict]:
        """The result rows of stage ``name`` for shard ``index``; ``tick(n)`` reports n images done."""
        return {"discover": self._discover_shard, "select": self._select_shard, "label": self._label_shard}[name](
            index, tick
        )

    def discover(self) -> None:
        """MaskCut with every configuration on every image; merged, deduplicated proposals per image."""
        self.run_sharded("discover")

    def select(self) -> None:
        """Score each proposal on the image's ReLabel map; confident ones become labeler training samples."""
        self.run_sharded("select")

    def label(self) -> None:
        """The labeler's top-k classes for every proposal, and its whole-image prediction."""
        self.run_sharded("label")

    def imported_proposals(self) -> cutler_index.CutlerIndex:
        """The ``--proposals-from`` file as an indexed Parquet file of the work directory, converted once (streamed,
        bounded memory) by the first process that needs it; every shard then reads only its own images' rows."""
        if self._imported is None:
            index = self.inputs.work_dir / IMPORTED_INDEX
            self._imported = cutler_index.index_cutler(self.inputs.proposals_from, index)
        return self._imported

    def _imported_shard(self, i: int, tick: Callable[[int], object]) -> list[dict]:
        """Discover rows from an imported proposals file (CutLER's COCO JSON) instead of MaskCut."""
        imported = self.imported_proposals().rows_for(record.image_id for record in self.shards[i])
        rows = []
        for record in self.shards[i]:
            found = imported.get(record.image_id)
            if found is None:
                rows.append(_base_row(record) | {"error": f"not in {self.inputs.proposals_from.name}"})
                continue
            masks = [
                {"size": list(p.size), "counts": p.counts, "bbox": list(p.bbox), "area": p.area, "source": p.source}
                for p in found.masks
            ]
            rows.append(_base_row(record) | {"width": found.width, "height": found.height, "proposals": masks})
        tick(len(rows))
        return rows

    def _discover_shard(self, i: int, tick: Callable[[int], object]) -> list[dict]:
        if self.inputs.proposals_from is not None:
            return self._imported_shard(i, tick)
        cfgs = self.config.maskcut_configs()
        ensemble = maskcut.Ensemble(
            cfgs,
            [self._extractor(c.backbone, c.feature) for c in cfgs],
            self.device,
            solver=self.config.solver,
            dedup_iou=self.config.dedup_iou,
            threads=self._cpu_threads(),
            processes=self._crf_pool(),
        )
        records = self.shards[i]
        rows: list[dict] = [{} for _ in records]
        pin = self.device.type == "cuda"
        for j, size, found in discover_records(records, ensemble, self.config.batch_size, self.config.num_workers, pin):
            if size is None:
                rows[j] = _base_row(records[j]) | {"error": f"decode: {found}"}
            else:
                h, w = size
                rows[j] = _base_row(records[j]) | {"width": w, "height": h, "proposals": [p.to_dict() for p in found]}
            tick(1)
        return rows

    def _select_shard(self, i: int, tick: Callable[[int], object]) -> list[dict]:
        rows_in = self.stage("discover").read(i)
        items = [(r["image_id"], r["path"], r["label"], _masks(r)) for r in rows_in if "error" not in r]
        selected = {
            image_id: (samples, failure)
            for image_id, samples, failure in relabel_maps.iter_selections(
                items,
                self.inputs.relabel_maps,
                self.config.tau_sel,
                self.config.select_mode,
                self.config.add_full_image,
                self.config.resample,
            )
        }
        rows = []
        for r in rows_in:
            row = {"image_id": r["image_id"], "samples": []}
            if "error" not in r:  # images that failed discover are recorded there, not again here
                samples, failure = selected[r["image_id"]]
                if failure is not None:
                    row["error"] = f"relabel map: {failure.reason}"
                row["samples"] = [
                    {
                        "masks": list(s.mask_indices),
                        "class": s.class_index,
                        "prob": None if math.isnan(s.relabel_prob) else s.relabel_prob,
                    }
                    for s in samples
                ]
            rows.append(row)
        tick(len(rows_in))
        return rows

    def _label_shard(self, i: int, tick: Callable[[int], object]) -> list[dict]:
        if self._head is None:
            head, lab, _, _ = labeler.load_checkpoint(self.checkpoint())
            self._head = (head.to(self.device), lab)
        head, lab = self._head
        rows_in = self.stage("discover").read(i)
        rows: list[dict] = [{"image_id": r["image_id"]} for r in rows_in]
        ok = [j for j, r in enumerate(rows_in) if "error" not in r]
        records = [self.shards[i][j] for j in ok]
        extractor = self._extractor(lab.backbone, "patch")
        found = label_records(
            records,
            lambda k: _masks(rows_in[ok[k]]),
            extractor,
            head,
            lab,
            self.device,
            self.config.batch_size,
            self.config.num_workers,
        )
        for k, result in found:
            if isinstance(result, str):
                rows[ok[k]]["error"] = f"decode: {result}"
            else:
                rows[ok[k]] |= {
                    "mask_classes": result.mask_classes.tolist(),
                    "mask_scores": _round(result.mask_scores).tolist(),
                    "global_classes": result.global_classes.tolist(),
                    "global_scores": _round(result.global_scores).tolist(),
                }
            tick(1)
        tick(len(rows_in) - len(ok))
        return rows

    def train_labeler(self) -> Path:
        """Train the labeler's head on the selected samples, resumably: online with augmentation from a samples
        file of the work directory, or on features pooled once per shard (``labeler.training``)."""
        if self.inputs.split != "train":
            raise ValueError("train-labeler runs on the train split; a validation build reuses its checkpoint")
        lab = self.config.labeler_config()
        folder = self.inputs.work_dir / "labeler"
        folder.mkdir(parents=True, exist_ok=True)
        errors = _LabelerErrors(self.inputs.work_dir / LABELER_ERRORS)
        extractor = self._extractor(lab.backbone, "patch")
        checkpoint = self.inputs.work_dir / CHECKPOINT
        common = dict(checkpoint=checkpoint, resume=True, log=folder / "train_log.jsonl", progress=self.progress)
        if lab.training == "online":
            samples = folder / "samples.arrow"
            if not samples.is_file():  # streamed in one shard at a time; the selection never changes in a work dir
                labeler_online.write_samples(samples, map(self._online_samples, range(len(self.shards))))
            labeler_online.train_online(
                samples,
                extractor,
                lab,
                device=self.device,
                num_workers=self.config.num_workers,
                on_error=lambda row, reason: errors.add(row["image_id"], row["path"], reason),
                **common,
            )
        else:
            labeler_train.train_from_cache(
                self._feature_cache(lab, extractor, errors), lab, device=self.device, **common
            )
        return checkpoint

    def _online_samples(self, i: int) -> list[dict]:
        """The labeler samples of shard ``i`` as rows of :data:`labeler_online.SAMPLES_SCHEMA`."""
        chosen = {r["image_id"]: r.get("samples", []) for r in self.stage("select").read(i)}
        by_path = {r.path: r for r in self.shards[i]}
        return [
            {
                "image_id": r["image_id"],
                "path": str(by_path[r["path"]].full_path),
                "height": r["height"],
                "width": r["width"],
                "label": s["class"],
                "masks": [r["proposals"][j]["counts"] for j in s["masks"]],
            }
            for r in self.stage("discover").read(i)
            if "error" not in r
            for s in chosen.get(r["image_id"], [])
        ]

    def _feature_cache(
        self, lab: labeler.LabelerConfig, extractor: backbones.Extractor, errors: _LabelerErrors
    ) -> labeler_train.FeatureCache:
        """The selected samples' pooled features, computed once per shard into ``labeler/cache/``."""
        found, chosen = self.stage("discover"), self.stage("select")
        cache_dir = self.inputs.work_dir / "labeler" / "cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(len(self.shards)) if not (cache_dir / f"shard-{i:05d}.safetensors").is_file()]
        with self._bar(sum(len(self.shards[i]) for i in todo), "pool features") as bar:
            for i in todo:
                samples_by_id = {r["image_id"]: r.get("samples", []) for r in chosen.read(i)}
                rows = [r for r in found.read(i) if "error" not in r and samples_by_id.get(r["image_id"])]
                by_path = {r.path: r for r in self.shards[i]}
                items = []
                records = [by_path[r["path"]] for r in rows]
                batch, workers = self.config.batch_size, self.config.num_workers
                for j, tokens in labeler_features(records, extractor, lab, self.device, batch, workers):
                    if isinstance(tokens, str):  # decoded in discover, not now: the file changed since
                        errors.add(rows[j]["image_id"], str(records[j].full_path), tokens)
                    else:
                        samples = [(s["masks"], s["class"]) for s in samples_by_id[rows[j]["image_id"]]]
                        items.append((tokens, torch.from_numpy(_masks(rows[j])), samples))
                    bar.update(1)
                if items:
                    tmp = atomic.temporary(cache_dir / f"shard-{i:05d}.safetensors")  # unique to this process
                    labeler_train.build_feature_cache(items, replace(lab, seed=lab.seed + i)).save(tmp)
                    tmp.replace(cache_dir / f"shard-{i:05d}.safetensors")
                else:  # an empty file marks a shard without samples as done
                    (cache_dir / f"shard-{i:05d}.safetensors").write_bytes(b"")
        parts = [
            labeler_train.FeatureCache.load(p)
            for p in sorted(cache_dir.glob("shard-*.safetensors"))
            if p.stat().st_size > 0
        ]
        if not parts:
            raise ValueError("no labeler training samples were selected in any shard")
        return labeler_train.FeatureCache(torch.cat([p.features for p in parts]), torch.cat([p.labels for p in parts]))

    def checkpoint(self) -> Path:
        path = self.inputs.labeler_checkpoint or self.inputs.work_dir / CHECKPOINT
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: no labeler checkpoint; run train-labeler on the train split first or pass "
                f"--labeler-checkpoint"
            )
        return Path(path)

    def package(self) -> Path:
        """Aggregate every split built in this work directory into the dataset folder."""
        return package(self.inputs.work_dir, self.inputs.output, self.config)

    def run(self, stages: Sequence[str] = STAGES, sharded: Callable[[str], None] | None = None) -> None:
        """Run ``stages`` in order (select and train-labeler only on train, and only without a checkpoint).
        ``sharded(name)`` runs a sharded stage elsewhere (the Ray runner); by default here, shard by shard."""
        try:
            self._run(stages, sharded)
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            if self._threads is not None:
                self._threads.shutdown()
                self._threads = None

    def _run(self, stages: Sequence[str], sharded: Callable[[str], None] | None) -> None:
        for name in stages:
            if name in ("select", "train-labeler") and (
                self.inputs.split != "train" or self.inputs.labeler_checkpoint is not None
            ):
                continue
            start = time.perf_counter()
            if name == "discover" and self.inputs.proposals_from is not None:
                self.imported_proposals()  # here, before any shard worker or actor would convert it too
            if name in SHARDED_STAGES and sharded is not None:
                self.check_ready(name)
                sharded(name)
            else:
                getattr(self, name.replace("-", "_"))()
            self.stage_seconds[name] = time.perf_counter() - start

    def summary(self) -> str:
        """What this split's build produced: images, proposals, errors, label counts, seconds per stage."""
        found = self.stage("discover")
        lines = [f"{self.inputs.split}: {len(self.records)} images in {len(self.shards)} shards"]
        mine = [i for i in shards.mine(len(self.shards), self.worker, self.workers) if found.is_complete(i)]
        counts = Counter()
        for i in mine:
            counts.update(found.counts(i, ROW_COUNTERS["discover"]))
        if counts["images"]:
            decoded = counts["images"] - counts["errors"]
            lines.append(
                f"  discover: {counts['images']} images, {counts['proposals']} proposals "
                f"({counts['proposals'] / max(1, decoded):.2f} per image), {counts['errors']} could not be decoded, "
                f"{counts['without_proposals']} without proposals"
            )
        build_json = self.inputs.output / writer.BUILD_JSON
        if build_json.is_file():
            splits = json.loads(build_json.read_text(encoding="utf-8"))["configs"]["labels"]["splits"]
            if self.inputs.split in splits:
                dist = splits[self.inputs.split]["statistics"]["label_count_distribution"]
                shares = ", ".join(
                    f"k{'=' if k[0].isdigit() else ''}{k}: {100 * v:.1f}%" for k, v in dist.items() if k != "mean"
                )
                lines.append(
                    f"  labels per image (score > {schema.LABEL_THRESHOLD}): {shares}; mean {dist['mean']:.2f}"
                )
            errors = self.inputs.output / ERRORS_JSONL
            if errors.is_file():
                with open(errors, "rb") as f:
                    recorded = sum(1 for _ in f)
                lines.append(f"  errors recorded: {recorded} (in {errors})")
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_seconds.items())
        if timing:
            lines.append(f"  time per stage: {timing}")
        return "\n".join(lines)


class _LabelerErrors:
    """Images that failed while the labeler trained, each appended once to ``labeler/errors.jsonl``."""

    def __init__(self, path: Path):
        self.path = path
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        self.seen = {json.loads(line)["image_id"] for line in lines}

    def add(self, image_id: str, path: str, reason: str) -> None:
        if image_id not in self.seen:
            self.seen.add(image_id)
            entry = {"stage": "train-labeler", "image_id": image_id, "path": path, "reason": reason}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(shards.dumps(entry) + "\n")


def _discover_counts(row: dict) -> dict[str, int]:
    failed = "error" in row
    found = 0 if failed else len(row["proposals"])
    return {"images": 1, "errors": int(failed), "proposals": found, "without_proposals": int(not failed and not found)}


def _select_counts(row: dict) -> dict[str, int]:
    return {"images": 1, "errors": int("error" in row), "samples": len(row["samples"])}


def _label_counts(row: dict) -> dict[str, int]:
    return {"images": 1, "errors": int("error" in row), "masks": len(row.get("mask_classes", ()))}


ROW_COUNTERS: dict[str, shards.RowCounter] = {
    "discover": _discover_counts,
    "select": _select_counts,
    "label": _label_counts,
}
"""What each sharded stage counts per shard (``<shard>.counts.json``), for summaries."""


def _base_row(record: images.ImageRecord) -> dict:
    return {"image_id": record.image_id, "path": record.path, "label": record.label}


def _masks(row: dict) -> np.ndarray:
    """The proposals of a discover row as bool [M, H, W]."""
    h, w = row["height"], row["width"]
    decoded = [
        importers.decode_mask(p, h, w, f"{row['image_id']}: proposal {i + 1}") for i, p in enumerate(row["proposals"])
    ]
    return np.stack(decoded) if decoded else np.zeros((0, h, w), dtype=bool)


def _round(scores: np.ndarray) -> np.ndarray:
    """Scores stored with 6 significant decimals: stable bytes across runs and platforms."""
    return np.round(scores.astype(np.float64), 6)
