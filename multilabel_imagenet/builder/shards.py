"""The build's work directory: images cut into shards, one result file per stage and shard, written atomically.

``<work>/<stage>/<split>/shard-00042-of-00100.jsonl`` holds one JSON object per image of shard 42, in the
shard's image order. It is written to a temporary name and renamed when complete, so a file that exists is
complete: a rerun skips it, and killing the process at any moment loses at most the shards in progress (a
SIGKILL may leave a hidden ``.shard-*.tmp`` file, which is never read). Lines
are serialised with sorted keys and fixed float formatting, so the same results give the same bytes.
An image that failed a stage has ``"error": "<reason>"`` in its line instead of results; it is never dropped.
Beside each shard, ``shard-00042-of-00100.counts.json`` holds small counters of its rows (images, errors,
proposals...), written before the shard itself, so summaries never re-read the shards' payloads. While a process
computes a shard it holds ``shard-00042-of-00100.lock`` (its pid and host): a second process on that shard stops
with an error naming the holder instead of racing it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from multilabel_imagenet import atomic

logger = logging.getLogger(__name__)

T = TypeVar("T")
RowCounter = Callable[[dict], Mapping[str, int]]
"""What one row adds to its shard's counters (e.g. ``{"images": 1, "errors": 0}``)."""


def parse_shard_spec(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` (0-based i, as SLURM_ARRAY_TASK_ID gives it) -> (i, n); None -> (0, 1), all shards."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N with integers, e.g. 3/16; got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec}: need 0 <= I < N")
    return i, n


class Shards(Sequence):
    """Consecutive chunks of ``shard_size`` items (the last may be shorter), each sliced from ``items`` when asked
    for: 40,000 shards of ImageNet train held as views cost ~190 MB, this costs nothing."""

    def __init__(self, items: Sequence[T], shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard size must be >= 1, got {shard_size}")
        self.items, self.shard_size = items, shard_size

    def __len__(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"shard {index} of {len(self)}")
        return self.items[index * self.shard_size : (index + 1) * self.shard_size]


def split_into_shards(items: Sequence[T], shard_size: int) -> Shards:
    """Consecutive chunks of ``shard_size`` (the last may be shorter), sliced lazily (:class:`Shards`)."""
    return Shards(items, shard_size)


def mine(num_shards: int, worker: int, workers: int) -> list[int]:
    """The shard indices one of ``workers`` independent processes handles: every workers-th, from ``worker``."""
    return list(range(worker, num_shards, workers))


def dumps(obj) -> str:
    """One deterministic JSON line (sorted keys, floats as Python's shortest round-trip repr)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class StageDir:
    """The result files of one stage and split."""

    root: Path
    stage: str
    split: str
    num_shards: int

    @property
    def folder(self) -> Path:
        return self.root / self.stage / self.split

    def path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}-of-{self.num_shards:05d}.jsonl"

    def is_complete(self, index: int) -> bool:
        return self.path(index).is_file()

    def missing(self) -> list[int]:
        return [i for i in range(self.num_shards) if not self.is_complete(i)]

    def counts_path(self, index: int) -> Path:
        return self.path(index).with_suffix(".counts.json")

    def write(self, index: int, rows: Iterable[dict], count: RowCounter | None = None) -> Path:
        """Write a shard's rows under a temporary name, fsync, then rename into place (atomic on POSIX); with
        ``count``, its counters first (a complete shard always has them)."""
        final = self.path(index)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temporary(final)
        totals: Counter = Counter()
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(dumps(row) + "\n")
                    if count is not None:
                        totals.update(count(row))
                f.flush()
                os.fsync(f.fileno())
            if count is not None:
                atomic.write_text(self.counts_path(index), dumps(dict(totals)))
            tmp.replace(final)
            logger.info("%s: shard %d written (%s)", self.stage, index, final)
        except BaseException:  # interrupted or bad row: leave no partial file (a SIGKILL may leave a .tmp)
            tmp.unlink(missing_ok=True)
            raise
        return final

    def lock_path(self, index: int) -> Path:
        return self.path(index).with_suffix(".lock")

    @contextlib.contextmanager
    def lock(self, index: int) -> Iterator[None]:
        """Hold shard ``index`` while it is computed: a lock file with this process's pid and host. A second
        process gets :class:`ShardLockedError` naming the holder; a lock left by a dead process of this host
        (a SIGKILL) is taken over."""
        path, me = self.lock_path(index), {"pid": os.getpid(), "host": socket.gethostname()}
        path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                holder = _lock_holder(path)
                if attempt == 1 and holder is not None and holder["host"] == me["host"] and not _alive(holder["pid"]):
                    logger.info("%s: left by pid %d, which is gone; taken over", path, holder["pid"])
                    path.unlink(missing_ok=True)
                    continue
                who = "another process" if holder is None else f"pid {holder['pid']} on {holder['host']}"
                raise ShardLockedError(
                    f"{path}: shard {index} of {self.stage} is being computed by {who}; two processes on one shard "
                    f"would do the work twice. Give each worker its own --shard I/N, or delete the lock file if that "
                    f"process is gone"
                ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(me))
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def counts(self, index: int, count: RowCounter) -> dict[str, int]:
        """The counters of a complete shard; computed from its rows (and stored) where a shard has none."""
        path = self.counts_path(index)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            totals: Counter = Counter()
            for row in self.read(index):
                totals.update(count(row))
            atomic.write_text(path, dumps(dict(totals)))
            return dict(totals)

    def read(self, index: int) -> list[dict]:
        path = self.path(index)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard not built yet (run the '{self.stage}' stage first)")
        rows = []
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                    row = err
                if not isinstance(row, dict):
                    reason = row if isinstance(row, ValueError) else f"a JSON {type(row).__name__}, not an object"
                    raise ValueError(
                        f"{path}: line {number} is not a complete row ({reason}); the shard is damaged: delete it and "
                        f"rerun the '{self.stage}' stage to rebuild it"
                    )
                rows.append(row)
        return rows

    def require_complete(self) -> None:
        """Raise, naming the first missing shard, unless every shard is complete."""
        missing = self.missing()
        if missing:
            raise FileNotFoundError(
                f"{self.folder}: {len(missing)} of {self.num_shards} shards of stage '{self.stage}' are not "
                f"complete (e.g. shard {missing[0]}); run that stage (all --shard workers) first"
            )

    def read_all(self) -> Iterator[dict]:
        """Every row of every shard in order; raises naming the first missing shard."""
        self.require_complete()
        for i in range(self.num_shards):
            yield from self.read(i)


class ShardLockedError(ValueError):
    """A shard is being computed by another process (its lock file names which)."""


def _lock_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return {"pid": int(holder["pid"]), "host": str(holder["host"])}
    except (OSError, ValueError, KeyError, TypeError):  # gone, or being written at this moment
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
