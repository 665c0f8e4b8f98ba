"""The package stage: the work directory's discover, select and label shards -> the dataset folder.

It streams: shard by shard of the work directory into the writer's spool (:mod:`multilabel_imagenet.dataset.spool`),
one pass for the ``labels`` config and one for ``proposals``, so memory is bounded by a shard of each, never by
a split. Every image left out, without proposals or with a failed ReLabel map is written to
``metadata/errors.jsonl`` with its stage and reason as it streams past.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from multilabel_imagenet import atomic, classes, targets
from multilabel_imagenet.builder import aggregate, labeler, listing, shards, stamp
from multilabel_imagenet.builder.settings import (
    AMBIGUITY_JSON,
    CHECKPOINT,
    RUNTIME_SETTINGS,
    SPLITS,
    BuildConfig,
)
from multilabel_imagenet.dataset import schema, writer

ERRORS_JSONL = "metadata/errors.jsonl"


def split_stage(work_dir: Path, stage: str, split: str, config: BuildConfig) -> shards.StageDir:
    """The result files of ``stage`` for a split built in ``work_dir`` (its shard count from the split's stamp)."""
    images = stamp.read_stamp(work_dir, split)["images"]
    return shards.StageDir(work_dir, stage, split, math.ceil(images / config.shard_size))


def _split_parameters(work_dir: Path, split: str, parameters: dict) -> dict:
    """What built ``split``: its image count, device type, and each setting of its stamp that differs from
    ``parameters`` (the package's configuration), so a release says how each split was made."""
    saved = stamp.read_stamp(work_dir, split)
    differ = {k: v for k, v in saved["config"].items() if parameters.get(k) != v}
    return {"images": saved["images"], "device": saved.get("device")} | ({"config": differ} if differ else {})


def _shard_rows(work_dir: Path, split: str, config: BuildConfig) -> Iterator[tuple[dict, dict | None, str | None]]:
    """``(discover row, label row, select error)`` per image of a split, reading one shard of each at a time."""
    found = split_stage(work_dir, "discover", split, config)
    labelled = split_stage(work_dir, "label", split, config)
    chosen = split_stage(work_dir, "select", split, config) if (work_dir / "select" / split).is_dir() else None
    for stage in (found, labelled, *([chosen] if chosen else [])):
        stage.require_complete()
    for i in range(found.num_shards):
        labels = {r["image_id"]: r for r in labelled.read(i)}
        select_errors = {r["image_id"]: r["error"] for r in chosen.read(i) if "error" in r} if chosen else {}
        for row in found.read(i):
            yield row, labels.get(row["image_id"]), select_errors.get(row["image_id"])


class _Split:
    """One split's records for the writer, and what streaming them finds: errors, the paths' fingerprint."""

    def __init__(self, work_dir: Path, split: str, config: BuildConfig, errors):
        self.work_dir, self.split, self.config, self.errors = work_dir, split, config, errors
        self.paths = writer.FingerprintStream()
        self.num_errors = 0

    def _kept(self, record_errors: bool) -> Iterator[tuple[dict, dict]]:
        """The rows that make a record; with ``record_errors``, every problem is written to errors.jsonl (first the
        entries the listing could not take, stage ``list``)."""
        if record_errors:
            for entry in listing.read_skipped(self.work_dir, self.split):
                image_id = Path(entry["path"]).stem
                line = {"split": self.split, "stage": "list", "image_id": image_id, **entry}
                self.errors.write(shards.dumps(line) + "\n")
                self.num_errors += 1
        for row, lab, select_error in _shard_rows(self.work_dir, self.split, self.config):
            problems = []
            if "error" in row:
                problems.append(("discover", row["error"]))
            else:
                if not row["proposals"]:
                    problems.append(("discover", "no proposal"))
                if select_error is not None:
                    problems.append(("select", select_error))
                if lab is None or "error" in lab:
                    problems.append(("label", "no label row" if lab is None else lab["error"]))
            if record_errors:
                for stage, reason in problems:
                    entry = {"split": self.split, "stage": stage, "image_id": row["image_id"], "path": row["path"]}
                    self.errors.write(shards.dumps(entry | {"reason": reason}) + "\n")
                    self.num_errors += 1
            if "error" in row or lab is None or "error" in lab:
                continue  # nothing to publish: the image failed to decode or to be labelled
            yield row, lab

    def labels(self) -> Iterator[schema.ImageLabels]:
        for row, lab in self._kept(record_errors=True):
            self.paths.update(row["path"])
            soft_classes, soft_scores = aggregate.max_over_masks(lab["mask_classes"], lab["mask_scores"])
            yield schema.ImageLabels(
                image_id=row["image_id"],
                path=row["path"],
                label=row["label"],
                width=row["width"],
                height=row["height"],
                soft_classes=tuple(soft_classes.tolist()),
                soft_scores=tuple(soft_scores.tolist()),
                global_classes=tuple(lab["global_classes"]),
                global_scores=tuple(lab["global_scores"]),
                num_proposals=len(row["proposals"]),
            )

    def proposals(self) -> Iterator[schema.ImageProposals]:
        for row, lab in self._kept(record_errors=False):
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
                for p, c, s in zip(row["proposals"], lab["mask_classes"], lab["mask_scores"], strict=True)
            )
            yield schema.ImageProposals(row["image_id"], row["width"], row["height"], masks)


def _selection_fingerprint(work_dir: Path, config: BuildConfig) -> str:
    stream = writer.FingerprintStream()
    for row in split_stage(work_dir, "select", "train", config).read_all():
        stream.update(row)
    return stream.hexdigest()


def package(work_dir: str | Path, output: str | Path, config: BuildConfig) -> Path:
    """Write every split built in ``work_dir`` (discover + label complete) as the dataset folder ``output``,
    with ``metadata/errors.jsonl`` listing every image left out or without proposals, and why."""
    work_dir, output = Path(work_dir), Path(output)
    split_names = [s for s in SPLITS if stamp.stamp_path(work_dir, s).is_file()]
    if not split_names:
        raise FileNotFoundError(f"{work_dir}: no build found (run discover and label first)")
    errors_path = output / ERRORS_JSONL
    errors_path.parent.mkdir(parents=True, exist_ok=True)
    errors_tmp = atomic.temporary(errors_path)
    errors = open(errors_tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed below, also on failure)
    try:
        splits = {s: _Split(work_dir, s, config, errors) for s in split_names}

        @cache
        def info() -> writer.BuildInfo:  # called once the labels have streamed past
            inputs = {f"images:{s}": split.paths.hexdigest() for s, split in splits.items()}
            checkpoint = work_dir / CHECKPOINT
            if checkpoint.is_file():
                inputs["labeler_checkpoint"] = labeler.checkpoint_fingerprint(checkpoint)
            if (work_dir / "select").is_dir():
                inputs["relabel_selection"] = _selection_fingerprint(work_dir, config)
            parameters = {k: v for k, v in asdict(config).items() if k not in RUNTIME_SETTINGS}
            parameters["splits"] = {s: _split_parameters(work_dir, s, parameters) for s in splits}
            models = {c.name: c.backbone for c in config.maskcut_configs()}
            return writer.BuildInfo(
                version=config.version,
                source="multilabel-imagenet build",
                inputs=inputs,
                parameters=parameters | {"errors": sum(split.num_errors for split in splits.values())},
                models=models | {"labeler": config.labeler_config().backbone},
            )

        writer.write_dataset(
            output,
            info,
            labels={s: split.labels() for s, split in splits.items()},
            proposals={s: split.proposals() for s, split in splits.items()},
        )
        errors.close()
    except BaseException:
        errors.close()
        errors_tmp.unlink(missing_ok=True)
        raise
    errors_tmp.replace(errors_path)
    if config.ambiguity_calibration == "real" and "validation" in splits:
        ambiguity = _calibrate_on_validation(output)
        atomic.write_text(output / AMBIGUITY_JSON, json.dumps(ambiguity.to_dict(), indent=1) + "\n")
    return output


def _calibrate_on_validation(output: Path) -> targets.Ambiguity:
    """Supp. E's calibration on ReaL, from the validation labels just written (50k x 1000 scores at most)."""
    files = writer.read_build_json(output)["configs"]["labels"]["splits"]["validation"]["files"]
    table = pq.ParquetDataset([output / f["path"] for f in files]).read(
        columns=["image_id", "soft_classes", "soft_scores"]
    )
    rows = table.num_rows
    lengths = np.diff(table.column("soft_classes").combine_chunks().offsets.to_numpy())
    flat_classes = table.column("soft_classes").combine_chunks().flatten().to_numpy()
    flat_scores = table.column("soft_scores").combine_chunks().flatten().to_numpy()
    scores = np.zeros((rows, classes.NUM_CLASSES), dtype=np.float32)
    scores[np.repeat(np.arange(rows), lengths), flat_classes] = flat_scores
    ids = table.column("image_id").to_pylist()
    return aggregate.calibrate_on_real(ids, scores, tau=schema.LABEL_THRESHOLD)
