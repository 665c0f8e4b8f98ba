"""Write the published dataset folder: Parquet shards per config and split, ``metadata/build.json``, the card.

Layout (a folder = a Hub dataset repo)::

    README.md                                         dataset card (see :mod:`.card`)
    loading_script/multilabel_imagenet.py             classic script for datasets < 4 (never at the root)
    data/<config>/<split>-XXXXX-of-YYYYY.parquet      shards of the ``labels`` and ``proposals`` configs
    metadata/build.json                               version, fingerprints, parameters, models, statistics

Deterministic: the same records and build info give the same bytes (no timestamps; fixed Parquet settings).
Every file is written under a hidden temporary name and renamed into place when complete
(:mod:`multilabel_imagenet.atomic`), so a kill mid-write or a second writer never leaves a torn shard, build.json
or card.
Writing a config replaces that config's shards and leaves the other config as it is, so importers can fill the
two configs of one folder from different sources.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from multilabel_imagenet import __version__, atomic
from multilabel_imagenet.dataset import schema, spool
from multilabel_imagenet.dataset.spool import DatasetWriteError as DatasetWriteError  # raised by write_config

BUILD_JSON = "metadata/build.json"
LOADING_SCRIPT = "loading_script/multilabel_imagenet.py"
_SCRIPT_SOURCE = Path(__file__).resolve().parent / LOADING_SCRIPT  # also at <repo>/loading_script/
FORMAT_VERSION = 1
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


class DatasetFolderError(ValueError):
    """A dataset folder is incomplete or damaged; the message names the file."""


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
    min_rows_per_shard: int | None = 2048
    """Shards hold at least this many rows and otherwise as few as make ``rows / min_rows_per_shard`` shards (many
    shards, for streaming over many ranks and workers); None: shards are cut by size alone."""
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


class FingerprintStream:
    """:func:`fingerprint` of a list fed one item at a time: ``update`` each item, then ``hexdigest``."""

    def __init__(self):
        self._digest = hashlib.sha256(b"[")
        self._first = True

    def update(self, item: Any) -> None:
        text = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        self._digest.update((text if self._first else "," + text).encode("utf-8"))
        self._first = False

    def hexdigest(self) -> str:
        digest = self._digest.copy()
        digest.update(b"]")
        return "sha256:" + digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``folder`` (created if needed; no lock file is left behind) where the
    platform has ``fcntl``; elsewhere no lock."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename still rules out a torn file
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def shard_count(num_rows: int, num_bytes: int, policy: ShardPolicy = ShardPolicy()) -> int:
    """Number of shards for a split of ``num_rows`` rows taking ``num_bytes`` in memory (see :class:`ShardPolicy`)."""
    by_size = max(1, math.ceil(num_bytes / policy.target_shard_bytes))
    by_rows = 1 if policy.min_rows_per_shard is None else max(1, num_rows // policy.min_rows_per_shard)
    if by_rows < policy.alignment:
        count = 1
        while count * 2 <= by_rows:
            count *= 2
        return max(count, 2 ** math.ceil(math.log2(by_size)))
    return policy.alignment * math.ceil(by_size / policy.alignment)


DEFAULT_POLICIES = {
    "labels": ShardPolicy(),
    "proposals": ShardPolicy(target_shard_bytes=512 * 2**20, min_rows_per_shard=None),
}
"""``labels`` (small rows, read streamed for training): many shards, 96 for ImageNet train, so every rank and
DataLoader worker of a streamed run gets whole shards. ``proposals`` (several GB of RLE, read map-style for
crop-aware targets): cut by size, ~512 MiB in memory a shard, which zstd makes Parquet files of 100-500 MB (the
Hub's recommended range; ``benchmarks/scale.py`` records them)."""


def shard_name(config: str, split: str, index: int, count: int) -> str:
    """Repository path of a shard: ``data/<config>/<split>-XXXXX-of-YYYYY.parquet``."""
    return f"data/{config}/{split}-{index:05d}-of-{count:05d}.parquet"


def _write_shards(folder: Path, config: str, split: str, spooled: spool.Spool, policy: ShardPolicy) -> list[dict]:
    """Cut a spooled split into ``shard_count`` files of consecutive rows, row groups of ~``row_group_bytes``."""
    rows = spooled.num_rows
    count = shard_count(rows, spooled.num_bytes, policy)
    bytes_per_row = max(1, spooled.num_bytes // max(1, rows))
    group_rows = max(1, min(policy.row_group_bytes // bytes_per_row, 100_000))
    bounds = [index * rows // count for index in range(count + 1)]
    batches = spooled.batches()
    pending: list[pa.Table] = []  # rows read from the spool and not written yet, in order
    files = []
    for index in range(count):
        rel = shard_name(config, split, index, count)
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        left = bounds[index + 1] - bounds[index]
        tmp = atomic.temporary(path)  # renamed into place when complete: a kill never leaves a torn shard
        try:
            with pq.ParquetWriter(
                tmp, spooled.arrow_schema, compression=policy.compression, write_page_index=True
            ) as out:
                if left == 0:
                    out.write_table(spooled.arrow_schema.empty_table())
                while left:
                    table = _take(pending, batches, min(left, group_rows))
                    out.write_table(table, row_group_size=table.num_rows)
                    left -= table.num_rows
            atomic.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        size = path.stat().st_size
        files.append(
            {"path": rel, "num_rows": bounds[index + 1] - bounds[index], "num_bytes": size, "sha256": file_sha256(path)}
        )
    return files


def _take(pending: list[pa.Table], batches: Iterator[pa.Table], n: int) -> pa.Table:
    """The next ``n`` rows: from ``pending`` first, then from ``batches``; what is left over stays in ``pending``."""
    have = sum(t.num_rows for t in pending)
    while have < n:
        table = next(batches)
        pending.append(table)
        have += table.num_rows
    table = pa.concat_tables(pending)
    pending[:] = [table.slice(n)] if table.num_rows > n else []
    return table.slice(0, n)


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
    build: BuildInfo | Callable[[], BuildInfo],
    policy: ShardPolicy | None = None,
) -> dict:
    """Write one config's shards (replacing earlier ones) and its entry in build.json; return that entry.

    ``records_by_split`` maps a split name (``train``, ``validation``) to :class:`~.schema.ImageLabels` records for
    ``labels`` or :class:`~.schema.ImageProposals` records for ``proposals``: any iterables, consumed once, in
    memory bounded by a batch (:mod:`.spool`). ``build`` may be a function called once the records are consumed,
    for build info that is counted while they stream (e.g. a fingerprint of the image paths). ``policy`` defaults to
    the config's :data:`DEFAULT_POLICIES` entry.
    """
    schema.features(config)
    if not callable(build):
        check_version(build.version)
    for split in records_by_split:
        if split not in schema.SPLITS:
            raise ValueError(f"unknown split {split!r}; the splits are {', '.join(schema.SPLITS)}")
    folder = Path(folder)
    spool_dir = folder / f".spool-{config}"
    shutil.rmtree(spool_dir, ignore_errors=True)
    spool_dir.mkdir(parents=True)
    try:
        spooled = {
            split: spool.spool(config, split, records, spool_dir / f"{split}.arrow")
            for split, records in sorted(records_by_split.items())
        }
        if callable(build):
            build = build()
            check_version(build.version)
        shutil.rmtree(folder / "data" / config, ignore_errors=True)
        entry = {"build": build.to_dict(), "splits": {}}
        for split, rows in spooled.items():
            entry["splits"][split] = {
                "num_rows": rows.num_rows,
                "num_bytes": rows.num_bytes,
                "files": _write_shards(folder, config, split, rows, policy or DEFAULT_POLICIES[config]),
                "statistics": rows.statistics,
            }
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    path = folder / BUILD_JSON
    # Read, merge and replace under a lock, so two writers of different configs both land; the atomic rename means
    # a kill mid-write leaves the previous build.json, never a torn one.
    with _locked(path.parent):
        build_json = read_build_json(folder) if path.exists() else {"configs": {}}
        configs = {**build_json["configs"], config: entry}
        manifest = {
            "format": FORMAT_VERSION,
            "name": "multilabel-imagenet",
            "version": build.version,
            "code_version": build.code_version,
            "configs": dict(sorted(configs.items())),
        }
        manifest["fingerprint"] = fingerprint(manifest["configs"])
        atomic.write_bytes(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return entry


def write_dataset(
    folder: str | Path,
    build: BuildInfo | Callable[[], BuildInfo],
    labels: Mapping[str, Iterable[schema.ImageLabels]] | None = None,
    proposals: Mapping[str, Iterable[schema.ImageProposals]] | None = None,
    policy: ShardPolicy | None = None,
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
    atomic.write_bytes(Path(folder) / LOADING_SCRIPT, _SCRIPT_SOURCE.read_bytes())
    return Path(folder)
