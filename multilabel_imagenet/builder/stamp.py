"""The work directory's stamp ``build-<split>.json``: what its shards were made with, so nothing mixes.

It holds every setting that changes results: the configuration less the speed-only settings, the MaskCut
configurations resolved from their preset, the SHA-256 of local weights, the image list and the device type.
A build that opens the work directory with other values stops, naming each difference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from multilabel_imagenet import atomic
from multilabel_imagenet.dataset import writer


def stamp_path(work_dir: Path, split: str) -> Path:
    return Path(work_dir) / f"build-{split}.json"


def read_stamp(work_dir: Path, split: str) -> dict:
    """The work directory's stamp of ``split``: what built it (configuration, images, device type)."""
    path = stamp_path(work_dir, split)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path}: torn or corrupt work-directory stamp ({err}); delete the work directory to start over, "
            f"or restore the file"
        ) from None


def check_or_write(work_dir: Path, split: str, stamp: dict) -> str | None:
    """Compare ``stamp`` with the saved one (all but the device type, checked when a model runs) and raise
    naming what differs; write it when there is none. Returns the saved device type."""
    path = stamp_path(work_dir, split)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(stamp, indent=1, sort_keys=True))  # a kill leaves no torn stamp
        return stamp.get("device")
    saved = read_stamp(work_dir, split)
    differ = differences(
        {k: v for k, v in saved.items() if k != "device"}, {k: v for k, v in stamp.items() if k != "device"}
    )
    if differ:
        raise ValueError(
            f"{path}: the work directory holds a build with other settings or images ({differ}); use a new "
            f"--work-dir, or delete it to start over"
        )
    return saved.get("device")


def weights_digest(path: Path) -> str:
    """SHA-256 of local model weights: a safetensors file, or a folder's files (names and contents, sorted)."""
    if path.is_file():
        return writer.file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: model weights named in the configuration's 'weights' not found")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{writer.file_sha256(file)}\n".encode())
    return digest.hexdigest()


def differences(saved: dict, now: dict, prefix: str = "") -> str:
    """What differs between a saved work-directory stamp and this build's, one clause per setting
    (``config.precision: 'bf16' there, 'fp32' now``; nested settings by dotted name); "" when they agree."""

    def shown(value: object) -> str:
        text = "absent" if value is _ABSENT else repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = differences(a, b, f"{prefix}{key}.")
            out += [inner] if inner else []
        elif a != b:
            out.append(f"{prefix}{key}: {shown(a)} there, {shown(b)} now")
    return "; ".join(out)


_ABSENT = object()
