"""The build: discover -> select -> train-labeler -> label -> package (DESIGN.md "Build stages").

Every stage reads and writes the work directory (:mod:`shards`), one file per shard of images, so each can run
on its own, be resumed after a kill, or be split over independent processes (``--shard I/N``) or a Ray
cluster. Images that cannot be decoded, missing ReLabel maps and images without proposals are recorded in the
shard files with their reason, collected into ``errors.jsonl``, and counted; a run never stops for them.

Configuration is one :class:`BuildConfig` (YAML or JSON file); ``BuildConfig.preset("paper")`` holds the
paper's defaults and ``"synthetic"`` the weight-free demo on the bundled synthetic scenes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from multilabel_imagenet import classes, images
from multilabel_imagenet.builder import aggregate, backbones, configs, labeler, maskcut, relabel_maps, shards
from multilabel_imagenet.builder.labeler import LabelerConfig
from multilabel_imagenet.dataset import importers, schema, writer

SPLITS = ("train", "validation")
STAGES = ("discover", "select", "train-labeler", "label", "package")
SHARDED_STAGES = ("discover", "select", "label")
RUNTIME_SETTINGS = ("num_workers", "crf_workers", "cpu_threads")
"""Settings that change how fast a build runs, never its results: a work directory may resume with others."""
CHECKPOINT = "labeler/head.safetensors"
AMBIGUITY_JSON = "metadata/ambiguity.json"


@dataclass
class BuildConfig:
    """Every parameter of a build. Defaults are the paper's (``preset="paper"``)."""

    version: str = "1.0.0"
    maskcut_preset: str = "paper"  # the four configurations of Supp. A.2
    maskcut: list[dict] = field(default_factory=list)  # explicit configurations; replace the preset when given
    solver: str = "fast"  # normalised cut: "exact" (published, float64) or "fast" (batched torch)
    dedup_iou: float = configs.DEFAULT_DEDUP_IOU  # our choice, see configs.DEFAULT_DEDUP_IOU
    tau_sel: float = relabel_maps.TAU_SELECT  # Supp. B.1
    select_mode: str = "paper"  # or "authors" (REFERENCE.md section 2)
    add_full_image: bool = False  # authors' variant only
    resample: str = "bilinear"  # how ReLabel maps meet masks (relabel_maps)
    labeler: dict = field(default_factory=lambda: asdict(LabelerConfig()))
    ambiguity_calibration: str = "real"  # Supp. E: calibrate on ReaL when the validation split is built; "none"
    shard_size: int = 1000  # images per shard file
    batch_size: int = 32  # images per backbone forward
    num_workers: int = 4  # decoding processes
    crf_workers: int = 4  # processes for pydensecrf-backend CRFs while the backbone runs the next batch; 0 = inline
    cpu_threads: int = 4  # threads for hole filling, self-check, resizing and RLE encoding of masks; 0 = inline
    seed: int = 0
    weights: dict = field(default_factory=dict)  # backbone name -> local weights (safetensors file or folder)

    def __post_init__(self) -> None:
        choices = {
            "solver": ("exact", "fast"),
            "select_mode": relabel_maps.SELECT_MODES,
            "resample": relabel_maps.RESAMPLE_MODES,
            "ambiguity_calibration": ("real", "none"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, name: str) -> BuildConfig:
        if name == "paper":
            return cls()
        if name == "synthetic":
            # Few samples: more epochs than the paper's schedule would give them; otherwise the paper's settings.
            demo_labeler = LabelerConfig(backbone="colour-texture", input_size=256, epochs=200, batch_size=32)
            return cls(
                maskcut_preset="synthetic",
                ambiguity_calibration="none",
                crf_workers=0,
                cpu_threads=0,
                labeler=asdict(demo_labeler),
                shard_size=32,
                batch_size=16,
                num_workers=0,
            )
        raise ValueError(f"unknown build preset {name!r}; known: paper, synthetic")

    @classmethod
    def from_dict(cls, data: dict) -> BuildConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown build settings {sorted(unknown)}; known: {sorted(known)}")
        config = cls(**data)
        config.labeler_config()  # validate the nested settings now
        config.maskcut_configs()
        return config

    @classmethod
    def load(cls, path: str | Path) -> BuildConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the build configuration: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a build configuration is a mapping of settings")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    def dumps(self, fmt: str = "yaml") -> str:
        data = asdict(self)
        return json.dumps(data, indent=2) + "\n" if fmt == "json" else yaml.safe_dump(data, sort_keys=False)

    def maskcut_configs(self) -> tuple[configs.MaskCutConfig, ...]:
        if self.maskcut:
            return tuple(configs.MaskCutConfig(**c) for c in self.maskcut)
        return configs.preset(self.maskcut_preset)

    def labeler_config(self) -> LabelerConfig:
        return LabelerConfig.from_dict(self.labeler)


@dataclass
class BuildInputs:
    """Where things are: the images of one split, ReLabel maps (train), the work directory and the output."""

    images: Path
    split: str
    output: Path
    work_dir: Path
    relabel_maps: Path | None = None
    layout: str = "auto"
    labels: Path | None = None  # ground truth of a flat val folder
    labeler_checkpoint: Path | None = None  # reuse a trained labeler (a validation build reuses train's)
    proposals_from: Path | None = None  # CutLER's COCO JSON of MaskCut proposals, used instead of running MaskCut
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available here")
    return torch.device(device)


@dataclass
class ResizedBatch:
    """Decoded images resized to every input size of a MaskCut ensemble (one decode serves all of them)."""

    indices: list[int]  # positions in the records of the images that decoded
    sizes: list[tuple[int, int]]  # their original (height, width)
    resized: dict[int, torch.Tensor]  # input size S -> (len(indices), S, S, 3) uint8
    errors: list[tuple[int, str]]  # (position, reason) of those that did not

    def pin_memory(self) -> ResizedBatch:
        """Page-locked copies, so the host-to-GPU copies run asynchronously (DataLoader's pin_memory)."""
        return replace(self, resized={k: v.pin_memory() for k, v in self.resized.items()})


class _Resized(torch.utils.data.Dataset):
    """Decodes records in DataLoader workers and resizes each image to every input size; a failure becomes an
    error string, never an exception."""

    def __init__(self, records: Sequence[images.ImageRecord], input_sizes: Sequence[int]):
        self.records, self.input_sizes = records, input_sizes

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            image = images.decode_image(self.records[i].full_path)
        except images.ImageDecodeError as err:
            return i, None, None, err.reason
        return i, (image.height, image.width), {s: backbones.resize([image], s)[0] for s in self.input_sizes}, None


def _collate_resized(items: list) -> ResizedBatch:
    ok = [(i, size, resized) for i, size, resized, err in items if err is None]
    stacked = {s: torch.from_numpy(np.stack([r[s] for _, _, r in ok])) for s in ok[0][2]} if ok else {}
    errors = [(i, err) for i, _, _, err in items if err is not None]
    return ResizedBatch([i for i, _, _ in ok], [tuple(size) for _, size, _ in ok], stacked, errors)


def resized_batches(
    records: Sequence[images.ImageRecord],
    input_sizes: Sequence[int],
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> Iterator[ResizedBatch]:
    """Batches of images decoded and resized (LANCZOS) to each of ``input_sizes`` in ``num_workers`` processes."""
    loader = torch.utils.data.DataLoader(
        _Resized(records, input_sizes),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate_resized,
        shuffle=False,
        pin_memory=pin_memory,
    )
    yield from loader


def discover_records(
    records: Sequence[images.ImageRecord],
    ensemble: maskcut.Ensemble,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> Iterator[tuple[int, tuple[int, int] | None, list | str]]:
    """The discover stage over ``records``: ``(position, (height, width), merged proposals)`` per decoded image
    and ``(position, None, reason)`` per image that failed to decode, in batch order.

    Decoding and resizing run in ``num_workers`` DataLoader processes; one batch is kept in flight, so its CPU
    steps (hole filling, encoding, pydensecrf) overlap the next batch's device steps.
    """
    pending: tuple | None = None
    for batch in resized_batches(records, ensemble.input_sizes, batch_size, num_workers, pin_memory):
        submitted = (batch, ensemble.submit(batch.resized, batch.sizes) if batch.indices else list)
        if pending is not None:
            yield from _finished(*pending)
        pending = submitted
    if pending is not None:
        yield from _finished(*pending)


def _finished(batch: ResizedBatch, result: Callable[[], list]) -> Iterator[tuple]:
    yield from ((j, None, reason) for j, reason in batch.errors)
    yield from zip(batch.indices, batch.sizes, result(), strict=True)


def labeler_features(
    records: Sequence[images.ImageRecord],
    extractor: backbones.Extractor,
    config: LabelerConfig,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> Iterator[tuple[int, torch.Tensor | str]]:
    """The labeler backbone's patch tokens [h, w, d] (float32, on the CPU) per image as ``(position, tokens)``;
    ``(position, reason)`` where an image no longer decodes. Decoding and resizing run in DataLoader workers,
    the backbone on ``device``."""
    size = config.input_size
    for batch in resized_batches(records, [size], batch_size, num_workers, device.type == "cuda"):
        yield from batch.errors
        if batch.indices:
            yield from zip(batch.indices, backbones.tokens(extractor, batch.resized[size], device), strict=True)


def label_records(
    records: Sequence[images.ImageRecord],
    masks_of: Callable[[int], np.ndarray],
    extractor: backbones.Extractor,
    head: labeler.LabelerHead,
    config: LabelerConfig,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> Iterator[tuple[int, labeler.ImageLabels | str]]:
    """The label stage over ``records``: ``(position, labels)`` per image, ``masks_of(position)`` giving its
    proposal masks [M, H, W]; ``(position, reason)`` where an image no longer decodes (:func:`labeler_features`)."""
    for k, tokens in labeler_features(records, extractor, config, device, batch_size, num_workers):
        yield k, tokens if isinstance(tokens, str) else labeler.label_image(head, tokens, masks_of(k), config)


class Build:
    """One split's build in one work directory. Stages are methods; each skips complete shards."""

    def __init__(self, inputs: BuildInputs, config: BuildConfig, shard: str | None = None, progress: bool = True):
        self.inputs, self.config, self.progress = inputs, config, progress
        self.worker, self.workers = shards.parse_shard_spec(shard)
        self.records = images.open_source(inputs.images, inputs.layout, inputs.labels)
        if not self.records:
            raise ValueError(f"{inputs.images}: no images")
        self.shards = shards.split_into_shards(self.records, config.shard_size)
        self.device = resolve_device(inputs.device)
        self._extractors: dict = {}
        self._head: tuple | None = None
        self._imported: dict | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._threads: ThreadPoolExecutor | None = None
        self.stage_seconds: dict[str, float] = {}
        self._check_work_dir()

    # ------------------------------------------------------------ bookkeeping

    def _check_work_dir(self) -> None:
        """Refuse to mix shards of different configurations or image lists in one work directory."""
        stamp = {
            "config": {k: v for k, v in asdict(self.config).items() if k not in RUNTIME_SETTINGS},
            "images": len(self.records),
            "first": self.records[0].path,
            "last": self.records[-1].path,
            "proposals_from": None if self.inputs.proposals_from is None else str(self.inputs.proposals_from),
        }
        path = self.inputs.work_dir / f"build-{self.inputs.split}.json"
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved != stamp:
                raise ValueError(
                    f"{path}: the work directory holds a build with other settings or images; use a new "
                    f"--work-dir, or delete it to start over"
                )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stamp, indent=1, sort_keys=True), encoding="utf-8")

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
        return backbones.cached_extractor(self._extractors, backbone, feature, self.config.weights, self.device)

    def run_sharded(self, name: str) -> None:
        """Run a sharded stage (discover, select, label) over this worker's incomplete shards."""
        out = self.stage(name)
        todo = self.todo(out)
        self.check_ready(name)
        with self._bar(sum(len(self.shards[i]) for i in todo), name) as bar:
            for i in todo:
                out.write(i, self.shard_rows(name, i, bar.update))

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

    def _imported_shard(self, i: int, tick: Callable[[int], object]) -> list[dict]:
        """Discover rows from an imported proposals file (CutLER's COCO JSON) instead of MaskCut."""
        if self._imported is None:
            imported = importers.read_cutler(self.inputs.proposals_from)
            self._imported = {r.image_id: r for r in imported.records}
        rows = []
        for record in self.shards[i]:
            found = self._imported.get(record.image_id)
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
        """Pool the selected samples' features (cached per shard), then train the head (resumable)."""
        if self.inputs.split != "train":
            raise ValueError("train-labeler runs on the train split; a validation build reuses its checkpoint")
        lab = self.config.labeler_config()
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
                extractor = self._extractor(lab.backbone, "patch")
                batch, workers = self.config.batch_size, self.config.num_workers
                for j, tokens in labeler_features(records, extractor, lab, self.device, batch, workers):
                    if isinstance(tokens, str):  # decoded in discover, not now: the file changed since
                        warnings.warn(
                            f"{records[j].full_path}: {tokens}; its labeler samples are left out", stacklevel=2
                        )
                    else:
                        samples = [(s["masks"], s["class"]) for s in samples_by_id[rows[j]["image_id"]]]
                        items.append((tokens, torch.from_numpy(_masks(rows[j])), samples))
                    bar.update(1)
                if items:
                    labeler.build_feature_cache(items, replace(lab, seed=lab.seed + i)).save(
                        cache_dir / f"shard-{i:05d}.safetensors.tmp"
                    )
                    (cache_dir / f"shard-{i:05d}.safetensors.tmp").replace(cache_dir / f"shard-{i:05d}.safetensors")
                else:  # an empty file marks a shard without samples as done
                    (cache_dir / f"shard-{i:05d}.safetensors").write_bytes(b"")
        parts = [
            labeler.FeatureCache.load(p) for p in sorted(cache_dir.glob("shard-*.safetensors")) if p.stat().st_size > 0
        ]
        if not parts:
            raise ValueError("no labeler training samples were selected in any shard")
        cache = labeler.FeatureCache(torch.cat([p.features for p in parts]), torch.cat([p.labels for p in parts]))
        checkpoint = self.inputs.work_dir / CHECKPOINT
        labeler.train_from_cache(
            cache,
            lab,
            checkpoint=checkpoint,
            resume=True,
            log=self.inputs.work_dir / "labeler" / "train_log.jsonl",
            device=self.device,
            progress=self.progress,
        )
        return checkpoint

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
        rows = [r for i in mine for r in found.read(i)]
        if rows:
            failed = sum("error" in r for r in rows)
            n_props = [len(r["proposals"]) for r in rows if "error" not in r]
            lines.append(
                f"  discover: {len(rows)} images, {sum(n_props)} proposals ({np.mean(n_props or [0]):.2f} per "
                f"image), {failed} could not be decoded, {n_props.count(0)} without proposals"
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
            errors = self.inputs.output / "metadata" / "errors.jsonl"
            if errors.is_file():
                lines.append(f"  errors recorded: {len(errors.read_text().splitlines())} (in {errors})")
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_seconds.items())
        if timing:
            lines.append(f"  time per stage: {timing}")
        return "\n".join(lines)


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


def _split_stage(work_dir: Path, stage: str, split: str, config: BuildConfig) -> shards.StageDir:
    stamp = json.loads((work_dir / f"build-{split}.json").read_text(encoding="utf-8"))
    return shards.StageDir(work_dir, stage, split, math.ceil(stamp["images"] / config.shard_size))


def _split_records(work_dir: Path, split: str, config: BuildConfig):
    """The labels and proposals records of one built split, and its errors (decode failures, images without
    proposals, missing or malformed ReLabel maps)."""
    label_rows = {r["image_id"]: r for r in _split_stage(work_dir, "label", split, config).read_all()}
    select_errors = {}
    if (work_dir / "select" / split).is_dir():
        select_errors = {
            r["image_id"]: r["error"]
            for r in _split_stage(work_dir, "select", split, config).read_all()
            if "error" in r
        }
    labels_out, proposals_out, errors = [], [], []
    for r in _split_stage(work_dir, "discover", split, config).read_all():

        def error(stage: str, reason: str, r=r) -> None:
            errors.append(
                {"split": split, "stage": stage, "image_id": r["image_id"], "path": r["path"], "reason": reason}
            )

        if "error" in r:
            error("discover", r["error"])
            continue
        if not r["proposals"]:
            error("discover", "no proposal")
        if r["image_id"] in select_errors:
            error("select", select_errors[r["image_id"]])
        lab = label_rows[r["image_id"]]
        soft_classes, soft_scores = aggregate.max_over_masks(lab["mask_classes"], lab["mask_scores"])
        labels_out.append(
            schema.ImageLabels(
                image_id=r["image_id"],
                path=r["path"],
                label=r["label"],
                width=r["width"],
                height=r["height"],
                soft_classes=tuple(int(c) for c in soft_classes),
                soft_scores=tuple(float(s) for s in soft_scores),
                global_classes=tuple(lab["global_classes"]),
                global_scores=tuple(lab["global_scores"]),
                num_proposals=len(r["proposals"]),
            )
        )
        masks = tuple(
            schema.Proposal(
                size=tuple(p["size"]),
                counts=p["counts"],
                bbox=tuple(p["bbox"]),
                area=p["area"],
                source=p["source"],
                classes=tuple(c),
                scores=tuple(s),
            )
            for p, c, s in zip(r["proposals"], lab["mask_classes"], lab["mask_scores"], strict=True)
        )
        proposals_out.append(schema.ImageProposals(r["image_id"], r["width"], r["height"], masks))
    return labels_out, proposals_out, errors


def package(work_dir: str | Path, output: str | Path, config: BuildConfig) -> Path:
    """Write every split built in ``work_dir`` (discover + label complete) as the dataset folder ``output``,
    with ``metadata/errors.jsonl`` listing every image left out or without proposals, and why."""
    work_dir, output = Path(work_dir), Path(output)
    splits = [s for s in SPLITS if (work_dir / f"build-{s}.json").is_file()]
    if not splits:
        raise FileNotFoundError(f"{work_dir}: no build found (run discover and label first)")
    labels_by_split, proposals_by_split, errors = {}, {}, []
    for split in splits:
        labels_by_split[split], proposals_by_split[split], split_errors = _split_records(work_dir, split, config)
        errors += split_errors
    inputs = {f"images:{split}": writer.fingerprint([r.path for r in labels_by_split[split]]) for split in splits}
    checkpoint = work_dir / CHECKPOINT
    if checkpoint.is_file():
        inputs["labeler_checkpoint"] = labeler.checkpoint_fingerprint(checkpoint)
    if (work_dir / "select").is_dir():
        inputs["relabel_selection"] = writer.fingerprint(
            list(_split_stage(work_dir, "select", "train", config).read_all())
        )
    models = {c.name: c.backbone for c in config.maskcut_configs()} | {"labeler": config.labeler_config().backbone}
    info = writer.BuildInfo(
        version=config.version,
        source="multilabel-imagenet build",
        inputs=inputs,
        parameters=asdict(config) | {"errors": len(errors)},
        models=models,
    )
    writer.write_dataset(output, info, labels=labels_by_split, proposals=proposals_by_split)
    if config.ambiguity_calibration == "real" and "validation" in labels_by_split:
        rows = labels_by_split["validation"]
        scores = np.zeros((len(rows), classes.NUM_CLASSES), dtype=np.float32)
        for k, r in enumerate(rows):
            scores[k, list(r.soft_classes)] = r.soft_scores
        ambiguity = aggregate.calibrate_on_real([r.image_id for r in rows], scores, tau=schema.LABEL_THRESHOLD)
        (output / AMBIGUITY_JSON).write_text(json.dumps(ambiguity.to_dict(), indent=1) + "\n", encoding="utf-8")
    errors_path = output / "metadata" / "errors.jsonl"
    errors_path.write_text("".join(shards.dumps(e) + "\n" for e in errors), encoding="utf-8")
    return output


DEMO_SCENES = "scenes"
"""Folder of :func:`build_synthetic_demo`'s root holding its scenes, beside the dataset folder."""
DEMO_SCENES_DONE = "classes.json"
"""The file :func:`synthetic.write_mini_imagenet` writes last: its presence means the scenes are complete."""


def build_synthetic_demo(
    root: str | Path,
    num_train: int = 64,
    num_val: int = 32,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """The README's first command: synthetic scenes -> the whole build on CPU -> ``<root>/multilabel-imagenet``.

    Writes the scenes to ``<root>/scenes`` (reused when complete), works in ``<root>/work`` (resumable), builds the
    train split (select on the synthetic ReLabel maps, train the labeler) and the validation split (reusing the
    labeler), and packages both."""
    from multilabel_imagenet.builder import synthetic

    root = Path(root)
    scenes = root / DEMO_SCENES
    if not (scenes / DEMO_SCENES_DONE).is_file():
        with tqdm(total=num_train + num_val, desc="synthetic scenes", unit="img", disable=not progress) as bar:
            synthetic.write_mini_imagenet(scenes, num_train, num_val, seed, progress=bar.update)
    config = BuildConfig.preset("synthetic")
    output, work = root / "multilabel-imagenet", root / "work"
    train = BuildInputs(scenes / "train", "train", output, work, relabel_maps=scenes / "relabel_maps", device=device)
    train_build = Build(train, config, progress=progress)
    train_build.run(STAGES[:-1])
    val = BuildInputs(
        scenes / "val",
        "validation",
        output,
        work,
        labels=scenes / "val_labels.txt",
        labeler_checkpoint=work / CHECKPOINT,
        device=device,
    )
    val_build = Build(val, config, progress=progress)
    val_build.run(("discover", "label"))
    package(work, output, config)
    if progress:
        tqdm.write(train_build.summary() + "\n" + val_build.summary())
    return output
