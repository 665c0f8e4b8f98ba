"""Files written whole or not at all: a hidden temporary name unique to the writer, renamed into place when
complete. A reader, a concurrent writer or a kill mid-write sees the old file or the new one, never a torn one
(a kill may leave a hidden ``.NAME.<pid>.<thread>.tmp`` file, which nothing reads)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def temporary(path: str | Path) -> Path:
    """A hidden name beside ``path``, unique to this process and thread (never read by a loader or a publish)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def replace(tmp: Path, path: Path) -> None:
    """fsync ``tmp`` and rename it to ``path`` (atomic on POSIX), then fsync the folder so the rename persists."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # not every platform opens a folder for fsync
        fd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (its folder is made if need be)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        tmp.write_bytes(data)
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))
