"""Write the published dataset folder: Parquet shards per config and split, ``metadata/build.json``, the card.

Layout (a folder = a Hub dataset repo)::

    README.md                                         dataset card (see :mod:`.card`)
    loading_script/multilabel_imagenet.py             classic script for datasets < 4 (never at the root)
    data/<config>/<split>-XXXXX-of-YYYYY.parquet      shards of the ``labels`` and ``proposals`` configs
    metadata/build.json                               version, fingerprints, parameters, models, statistics

Deterministic: the same records and build info give the same bytes (no timestamps; fixed Parquet settings).
Writing a config replaces that config's shards and leaves the other config as it is, so importers can fill the
two configs of one folder from different sources.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilabel_imagenet import __version__, classes
from multilabel_imagenet.dataset import schema

BUILD_JSON = "metadata/build.json"
LOADING_SCRIPT = "loading_script/multilabel_imagenet.py"
_SCRIPT_SOURCE = Path(__file__).resolve().parent / LOADING_SCRIPT  # also at <repo>/loading_script/
FORMAT_VERSION = 1
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_BATCH_ROWS = 8192


class DatasetFolderError(ValueError):
    """A dataset folder is incomplete or damaged; the message names the file."""


class DatasetWriteError(ValueError):
    """A record cannot be written; the message names the config, split, row and image."""


@dataclass(frozen=True)
class ShardPolicy:
    """How rows are split into Parquet files and row groups.

    Shard counts are 1 for small splits, otherwise powers of two up to ``alignment`` and then multiples of
    ``alignment`` (96 divides evenly by 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48 and 96 ranks), so that
    ``datasets.distributed.split_dataset_by_node`` and DataLoader workers get whole shards. Row groups stay far
    below the Hub viewer's 286 MiB read limit and every file has a page index.
    """

    target_shard_bytes: int = 256 * 2**20
    """Upper bound on the in-memory (Arrow) size of one shard."""
    min_rows_per_shard: int = 2048
    alignment: int = 96
    row_group_bytes: int = 32 * 2**20
    compression: str = "zstd"


@dataclass(frozen=True)
class BuildInfo:
    """What produced a config: recorded in build.json and fingerprinted.

    ``inputs`` maps an input's name to its fingerprint (e.g. ``sha256:...`` of a file), ``parameters`` holds every
    parameter (JSON-serialisable), ``models`` maps a role to a model id (e.g. ``backbone``: a timm name).
    """

    version: str
    source: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)
    code_version: str = f"multilabel-imagenet {__version__}"

    def to_dict(self) -> dict:
        data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items()}
        data["fingerprint"] = fingerprint(data)
        return data


def check_version(version: str) -> str:
    """``version`` if it is a semantic version X.Y.Z, else ValueError."""
    if not _SEMVER.match(version):
        raise ValueError(f"version {version!r} is not a semantic version X.Y.Z (e.g. 1.0.0)")
    return version


def fingerprint(data: Any) -> str:
    """sha256 of the canonical JSON of ``data``."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shard_count(num_rows: int, num_bytes: int, policy: ShardPolicy = ShardPolicy()) -> int:
    """Number of shards for a split of ``num_rows`` rows taking ``num_bytes`` in memory (see :class:`ShardPolicy`)."""
    by_size = max(1, math.ceil(num_bytes / policy.target_shard_bytes))
    by_rows = max(1, num_rows // policy.min_rows_per_shard)
    if by_rows < policy.alignment:
        count = 1
        while count * 2 <= by_rows:
            count *= 2
        return max(count, 2 ** math.ceil(math.log2(by_size)))
    return policy.alignment * math.ceil(by_size / policy.alignment)


def shard_name(config: str, split: str, index: int, count: int) -> str:
    """Repository path of a shard: ``data/<config>/<split>-XXXXX-of-YYYYY.parquet``."""
    return f"data/{config}/{split}-{index:05d}-of-{count:05d}.parquet"


def _where(config: str, split: str, row: int, image_id: str) -> str:
    return f"{config}/{split} row {row} ({image_id!r})"


def _check_sparse(classes_: tuple, scores: tuple, what: str, where: str) -> None:
    if len(classes_) != len(scores):
        raise DatasetWriteError(f"{where}: {what} has {len(classes_)} classes but {len(scores)} scores")
    if len(set(classes_)) != len(classes_):
        raise DatasetWriteError(f"{where}: {what} repeats a class: {list(classes_)}")
    for c in classes_:
        if not 0 <= int(c) < classes.NUM_CLASSES:
            raise DatasetWriteError(f"{where}: {what} class {c} is outside 0..{classes.NUM_CLASSES - 1}")
    for s in scores:
        if not (math.isfinite(s) and 0.0 <= s <= 1.0):
            raise DatasetWriteError(f"{where}: {what} score {s} is not a probability in [0, 1]")


def _check_size(width: int | None, height: int | None, where: str) -> None:
    for name, value in (("width", width), ("height", height)):
        if value is not None and value <= 0:
            raise DatasetWriteError(f"{where}: {name} {value} is not positive")


def _check_labels(record: schema.ImageLabels, where: str) -> None:
    if record.label is not None and not 0 <= record.label < classes.NUM_CLASSES:
        raise DatasetWriteError(f"{where}: label {record.label} is outside 0..{classes.NUM_CLASSES - 1}")
    _check_size(record.width, record.height, where)
    _check_sparse(record.soft_classes, record.soft_scores, "soft_classes/soft_scores", where)
    _check_sparse(record.global_classes, record.global_scores, "global_classes/global_scores", where)


def _check_proposals(record: schema.ImageProposals, where: str) -> None:
    _check_size(record.width, record.height, where)
    for j, mask in enumerate(record.masks):
        if tuple(mask.size) != (record.height, record.width):
            raise DatasetWriteError(
                f"{where}: mask {j} has RLE size [h, w] = {list(mask.size)} but the image is "
                f"{record.height}x{record.width} (height x width)"
            )
        if len(mask.bbox) != 4:
            raise DatasetWriteError(f"{where}: mask {j} bbox {list(mask.bbox)} is not [x, y, w, h]")
        _check_sparse(mask.classes, mask.scores, f"mask {j} classes/scores", where)


def _to_table(config: str, split: str, records: Iterable) -> pa.Table:
    """Validate ``records`` and convert them to one Arrow table with the config's schema."""
    arrow_schema = schema.features(config).arrow_schema
    check, to_row = (
        (_check_labels, schema.labels_row) if config == "labels" else (_check_proposals, schema.proposals_row)
    )
    seen: set[str] = set()
    batches, rows = [], []
    for i, record in enumerate(records):
        where = _where(config, split, i, record.image_id)
        if not record.image_id:
            raise DatasetWriteError(f"{where}: empty image_id")
        if record.image_id in seen:
            raise DatasetWriteError(f"{where}: image_id appears twice in the split")
        seen.add(record.image_id)
        check(record, where)
        rows.append(to_row(record))
        if len(rows) == _BATCH_ROWS:
            batches.append(pa.Table.from_pylist(rows, schema=arrow_schema))
            rows = []
    batches.append(pa.Table.from_pylist(rows, schema=arrow_schema))
    return pa.concat_tables(batches).combine_chunks()


def _write_shards(folder: Path, config: str, split: str, table: pa.Table, policy: ShardPolicy) -> list[dict]:
    count = shard_count(table.num_rows, table.nbytes, policy)
    bytes_per_row = max(1, table.nbytes // max(1, table.num_rows))
    row_group_rows = max(1, min(policy.row_group_bytes // bytes_per_row, 100_000))
    files = []
    for index in range(count):
        start, stop = index * table.num_rows // count, (index + 1) * table.num_rows // count
        rel = shard_name(config, split, index, count)
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            table.slice(start, stop - start),
            path,
            row_group_size=row_group_rows,
            compression=policy.compression,
            write_page_index=True,
        )
        files.append(
            {"path": rel, "num_rows": stop - start, "num_bytes": path.stat().st_size, "sha256": file_sha256(path)}
        )
    return files


def label_count_histogram(counts: np.ndarray) -> dict[str, float]:
    """Share of images with k = 0, 1, 2, 3 and >= 4 labels (the paper's Table 5), plus the mean."""
    counts = np.asarray(counts)
    total = max(1, counts.size)
    bins = {str(k): float(np.sum(counts == k)) / total for k in range(4)}
    bins[">=4"] = float(np.sum(counts >= 4)) / total
    return {**bins, "mean": float(counts.mean()) if counts.size else 0.0}


def _statistics(config: str, table: pa.Table) -> dict[str, Any]:
    if config == "labels":
        num_labels = pc.list_value_length(table["labels"]).to_numpy(zero_copy_only=False)
        num_soft = pc.list_value_length(table["soft_classes"]).to_numpy(zero_copy_only=False)
        return {
            "num_images": table.num_rows,
            "label_count_distribution": label_count_histogram(num_labels),
            "label_count_threshold": schema.LABEL_THRESHOLD,
            "mean_soft_classes": float(num_soft.mean()) if num_soft.size else 0.0,
        }
    masks = table["masks"].combine_chunks()
    per_image = pc.list_value_length(masks).to_numpy(zero_copy_only=False)
    sources = pc.value_counts(pc.list_flatten(masks).field("source")).to_pylist()
    return {
        "num_images": table.num_rows,
        "num_masks": int(per_image.sum()),
        "mean_masks_per_image": float(per_image.mean()) if per_image.size else 0.0,
        "masks_per_source": {s["values"]: s["counts"] for s in sorted(sources, key=lambda s: s["values"])},
    }


def read_build_json(folder: str | Path) -> dict:
    """The folder's build.json, or ValueError naming it when missing or not JSON."""
    path = Path(folder) / BUILD_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; not a multilabel-imagenet dataset folder") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def check_folder(folder: str | Path, config: str, split: str | None = None) -> list[Path]:
    """Check a local dataset folder for ``config`` (and ``split``): card with configs, every Parquet file complete
    and of the size build.json records. Returns the files checked; raises :class:`DatasetFolderError`."""
    from multilabel_imagenet.dataset import card

    folder = Path(folder)
    try:
        configs = card.read_configs(folder)
        manifest = read_build_json(folder)
    except ValueError as err:
        raise DatasetFolderError(str(err)) from None
    if config not in configs:
        raise DatasetFolderError(f"{folder / 'README.md'}: no config {config!r}; it has {', '.join(configs)}")
    splits = manifest["configs"].get(config, {}).get("splits", {})
    if split is not None and split not in splits:
        raise DatasetFolderError(f"{folder / BUILD_JSON}: config {config!r} has no split {split!r}")
    checked = []
    for name, info in sorted(splits.items()):
        if split is not None and name != split:
            continue
        for entry in info["files"]:
            path = folder / entry["path"]
            if not path.is_file():
                raise DatasetFolderError(f"{path}: missing (listed in {BUILD_JSON})")
            size = path.stat().st_size
            if size != entry["num_bytes"]:
                raise DatasetFolderError(
                    f"{path}: {size} bytes but {BUILD_JSON} records {entry['num_bytes']} (truncated or replaced)"
                )
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except (pa.ArrowInvalid, OSError) as err:
                raise DatasetFolderError(f"{path}: not a complete Parquet file ({err})") from None
            if rows != entry["num_rows"]:
                raise DatasetFolderError(f"{path}: {rows} rows but {BUILD_JSON} records {entry['num_rows']}")
            checked.append(path)
    return checked


def write_config(
    folder: str | Path,
    config: str,
    records_by_split: Mapping[str, Iterable],
    build: BuildInfo,
    policy: ShardPolicy = ShardPolicy(),
) -> dict:
    """Write one config's shards (replacing earlier ones) and its entry in build.json; return that entry.

    ``records_by_split`` maps a split name (``train``, ``validation``) to :class:`~.schema.ImageLabels` records for
    ``labels`` or :class:`~.schema.ImageProposals` records for ``proposals``.
    """
    schema.features(config)
    check_version(build.version)
    for split in records_by_split:
        if split not in schema.SPLITS:
            raise ValueError(f"unknown split {split!r}; the splits are {', '.join(schema.SPLITS)}")
    folder = Path(folder)
    tables = {split: _to_table(config, split, records) for split, records in sorted(records_by_split.items())}
    shutil.rmtree(folder / "data" / config, ignore_errors=True)
    entry = {"build": build.to_dict(), "splits": {}}
    for split, table in tables.items():
        entry["splits"][split] = {
            "num_rows": table.num_rows,
            "num_bytes": table.nbytes,
            "files": _write_shards(folder, config, split, table, policy),
            "statistics": _statistics(config, table),
        }
    build_json = read_build_json(folder) if (folder / BUILD_JSON).exists() else {"configs": {}}
    configs = {**build_json["configs"], config: entry}
    manifest = {
        "format": FORMAT_VERSION,
        "name": "multilabel-imagenet",
        "version": build.version,
        "code_version": build.code_version,
        "configs": dict(sorted(configs.items())),
    }
    manifest["fingerprint"] = fingerprint(manifest["configs"])
    path = folder / BUILD_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return entry


def write_dataset(
    folder: str | Path,
    build: BuildInfo,
    labels: Mapping[str, Iterable[schema.ImageLabels]] | None = None,
    proposals: Mapping[str, Iterable[schema.ImageProposals]] | None = None,
    policy: ShardPolicy = ShardPolicy(),
) -> Path:
    """Write the given configs, then build.json, the dataset card and the classic loading script; return ``folder``."""
    from multilabel_imagenet.dataset import card

    if labels is None and proposals is None:
        raise ValueError("nothing to write: pass labels and/or proposals records")
    for config, records in (("labels", labels), ("proposals", proposals)):
        if records is not None:
            write_config(folder, config, records, build, policy)
    card.write_card(folder)
    if not _SCRIPT_SOURCE.is_file():
        raise FileNotFoundError(f"{_SCRIPT_SOURCE}: the classic loading script is missing from the installed package")
    script = Path(folder) / LOADING_SCRIPT
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_SCRIPT_SOURCE, script)
    return Path(folder)
