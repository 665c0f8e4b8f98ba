"""Image sources for the ImageNet layouts found on disk, and safe decoding.

A source is a list of :class:`ImageRecord` (stable ``image_id`` = file stem, ``path`` relative to the source
root, original ``label`` when known), sorted by path so every run sees the same order. Layouts:

- ``train``: ``<root>/<wnid>/<wnid>_<n>.JPEG`` (also a validation copy sorted into ``<wnid>/`` folders);
- ``val``: flat ``<root>/ILSVRC2012_val_XXXXXXXX.JPEG``, labels from a ground-truth file (:func:`read_val_labels`);
- ``imagenetv2``: ``<root>/<class_idx>/<sha1>.jpeg``; the folder name is parsed as an integer class index,
  never sorted as a string the way ``torchvision.datasets.ImageFolder`` would (``"10"`` before ``"2"``);
- ``list``: a text file of paths, optionally each followed by a label (index or wnid).

Decoding (:func:`decode_image`) returns RGB whatever the file holds (greyscale, CMYK, palette, alpha, 16-bit,
a PNG saved with a .JPEG name) and raises :class:`ImageDecodeError` naming the file and the reason for anything
that cannot be decoded completely (truncated, corrupt, empty, not an image, a decompression bomb), and
:class:`ImageReadError` where the file system failed to read it (EIO, ESTALE, EMFILE, EACCES... tried again first).
:func:`iter_decoded` turns those errors into records so that one bad file never stops a run.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageOps

from multilabel_imagenet import classes, textlines

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
LAYOUTS = ("auto", "train", "val", "imagenetv2", "list")
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")
_EXIF_ORIENTATION = 0x0112


class SourceError(ValueError):
    """A folder or file does not have the layout it was opened as."""


class ImageDecodeError(Exception):
    """An image file could not be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ImageReadError(OSError):
    """Reading an image failed for a reason of the file system (:data:`TRANSIENT_ERRNOS`), not of its bytes, on
    every try: the image is not recorded as bad; the work that needed it (a shard) fails, and a rerun tries
    again. Picklable, so DataLoader workers can hand it back as a value."""

    def __init__(self, path: str | Path, reason: str = ""):
        super().__init__(f"{path}: {reason}" if reason else str(path))
        self.path, self.reason = str(path), reason

    def __reduce__(self):
        return type(self), (self.path, self.reason)


TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.ESTALE, errno.EMFILE, errno.ENFILE, errno.EACCES, errno.EAGAIN, errno.EBUSY, errno.EINTR}
    | {errno.ETIMEDOUT, errno.ENOMEM, errno.ENOBUFS, errno.ECONNRESET, errno.EHOSTDOWN}
)
"""``errno`` values of a read that may succeed when tried again (an NFS or FUSE hiccup, a descriptor limit, a
permission being fixed); any other failure is the file's own and permanent."""
READ_TRIES = 3
RETRY_SECONDS = 0.5  # before the second try; doubled before each later one


@dataclass(frozen=True, slots=True)  # slots: a listing scan holds one per image (1.28M for train)
class ImageRecord:
    """One image of a source. ``label`` is the original ImageNet-1k class index, or None when unknown."""

    image_id: str
    path: str
    label: int | None
    root: Path

    @property
    def full_path(self) -> Path:
        return self.root / self.path


@dataclass(frozen=True)
class DecodeFailure:
    """An image that could not be decoded: where it is and why. Serialisable with :meth:`to_dict`."""

    image_id: str
    path: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SkippedFile:
    """A directory entry named like an image that no record can be made of, and why (a broken or looping symbolic
    link, a file name that is not UTF-8): a scan reports these instead of losing them."""

    path: str  # relative to the source root; undecodable bytes of a name as \x escapes
    reason: str


def _image_files(folder: Path, skipped: list[SkippedFile] | None = None, root: Path | None = None) -> list[Path]:
    """The image files of ``folder``, sorted; entries named like images that cannot be used go to ``skipped``."""
    found = []
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        reason = _unusable(p)
        if reason is None:
            found.append(p)
        elif reason and skipped is not None:
            name = str(p.relative_to(root) if root is not None else p.name)
            name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            skipped.append(SkippedFile(name, reason))
            logger.warning("%s: %s; recorded and skipped", p, reason)
    return sorted(found)


def _unusable(path: Path) -> str | None:
    """Why ``path`` cannot be an image record (None: it can; "": a folder named like an image, not reported)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not UTF-8 (a dataset stores names as UTF-8 text): rename it"
    if path.is_file():
        return None
    if path.is_dir():
        return ""
    if path.is_symlink():
        try:
            path.stat()
        except OSError as err:
            kind = "symbolic link loop" if err.errno == errno.ELOOP else "broken symbolic link"
            return f"{kind} ({err.strerror}) to {os.readlink(path)}"
    return "not a regular file"


def _subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_folder(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    return root


def _unique(records: list[ImageRecord], where: Path) -> list[ImageRecord]:
    seen: set[str] = set()
    for r in records:
        if r.image_id in seen:
            first = next(f.path for f in records if f.image_id == r.image_id)
            raise SourceError(f"{where}: image id {r.image_id!r} occurs twice ({first} and {r.path})")
        seen.add(r.image_id)
    return records


def train_source(root: str | Path) -> list[ImageRecord]:
    """Images in ``<root>/<wnid>/`` folders, labelled by their folder's wnid (train, or val sorted by class)."""
    return _unique(list(_train_records(root)), Path(root))


def _train_records(root: str | Path, skipped: list[SkippedFile] | None = None) -> Iterator[ImageRecord]:
    root = _require_folder(root)
    folders = _subfolders(root)
    bad = [f.name for f in folders if f.name not in classes.wnids()]
    if bad:
        raise SourceError(f"{root}: folders must be ImageNet-1k wnids such as n01440764; found {bad[:5]}")
    if not folders:
        raise SourceError(f"{root}: no <wnid>/ class folders")
    for folder in folders:
        label = classes.index_of(folder.name)
        files = _image_files(folder, skipped, root)
        yield from (ImageRecord(f.stem, f"{folder.name}/{f.name}", label, root) for f in files)


def read_val_labels(path: str | Path) -> dict[str, int]:
    """Validation ground truth as ``{image_id: class index}`` from any of the published formats:

    - one wnid per line, line i for ``ILSVRC2012_val_{i+1:08d}`` (TFDS ``imagenet2012_validation_labels.txt``);
    - a JSON list of 50,000 class indices in sorted-wnid order, or a JSON object ``{image_id or file: index}``;
    - Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` whose first token is the wnid);
    - the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (ILSVRC2012_IDs, 1..1000, *not* sorted-wnid
      indices), which needs the devkit's ``meta.mat`` beside it to translate the IDs.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: validation label file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return {f"ILSVRC2012_val_{i + 1:08d}": classes.check_index(v) for i, v in enumerate(data)}
        if isinstance(data, dict):
            return {Path(k).stem: classes.check_index(v) for k, v in data.items()}
        raise SourceError(f"{path}: expected a JSON list of class indices or an object image -> index")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or not {"ImageId", "PredictionString"} <= rows[0].keys():
            raise SourceError(f"{path}: expected Kaggle columns ImageId,PredictionString")
        return {r["ImageId"]: _wnid_index(r["PredictionString"].split()[0], path, n) for n, r in enumerate(rows, 2)}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and all(line.isdigit() for line in lines):
        meta = path.parent / "meta.mat"
        if not meta.is_file():
            raise SourceError(
                f"{path}: integer labels are devkit ILSVRC2012_IDs (1..1000, not sorted-wnid indices); "
                f"put the devkit's meta.mat beside it to translate them, or use a file of wnids"
            )
        id_to_wnid = _devkit_ids(meta)
        return {f"ILSVRC2012_val_{i + 1:08d}": classes.index_of(id_to_wnid[int(v)]) for i, v in enumerate(lines)}
    return {f"ILSVRC2012_val_{i + 1:08d}": _wnid_index(w, path, i + 1) for i, w in enumerate(lines)}


def _wnid_index(wnid: str, path: Path, line: int) -> int:
    try:
        return classes.index_of(wnid)
    except KeyError as err:
        raise SourceError(f"{path}, line {line}: {err.args[0]}") from None


def _devkit_ids(meta: Path) -> dict[int, str]:
    from scipy.io import loadmat

    synsets = loadmat(meta, squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["ILSVRC2012_ID"]) <= 1000}


def val_source(root: str | Path, labels: str | Path | None = None) -> list[ImageRecord]:
    """Validation images: flat ``ILSVRC2012_val_*.JPEG`` files (labels from ``labels``, else unknown) or
    ``<wnid>/`` folders (labels from the folders)."""
    return _unique(list(_val_records(root, labels)), Path(root))


def _val_records(
    root: str | Path, labels: str | Path | None, skipped: list[SkippedFile] | None = None
) -> Iterator[ImageRecord]:
    root = _require_folder(root)
    if _subfolders(root) and not _image_files(root):
        yield from _train_records(root, skipped)
        return
    truth = read_val_labels(labels) if labels is not None else {}
    empty = True
    for f in _image_files(root, skipped, root):
        if not _VAL_NAME.match(f.stem):
            raise SourceError(f"{root}: {f.name} is not named ILSVRC2012_val_XXXXXXXX")
        if labels is not None and f.stem not in truth:
            raise SourceError(f"{labels}: no label for {f.name}")
        empty = False
        yield ImageRecord(f.stem, f.name, truth.get(f.stem), root)
    if empty:
        raise SourceError(f"{root}: no ILSVRC2012_val_*.JPEG files and no <wnid>/ folders")


def imagenetv2_source(root: str | Path) -> list[ImageRecord]:
    """ImageNetV2 ``<class_idx>/<sha1>.jpeg``; folders are integer class indices, ordered numerically."""
    return _unique(list(_imagenetv2_records(root)), Path(root))


def _imagenetv2_records(root: str | Path, skipped: list[SkippedFile] | None = None) -> Iterator[ImageRecord]:
    root = _require_folder(root)
    folders = _subfolders(root)
    bad = [f.name for f in folders if not f.name.isdigit() or int(f.name) >= classes.NUM_CLASSES]
    if bad or not folders:
        raise SourceError(f"{root}: ImageNetV2 folders must be class indices 0..999; found {bad[:5] or 'none'}")
    for folder in sorted(folders, key=lambda f: int(f.name)):
        label = int(folder.name)
        files = _image_files(folder, skipped, root)
        yield from (ImageRecord(f.stem, f"{folder.name}/{f.name}", label, root) for f in files)


def list_source(paths: str | Path | Iterable[str | Path], root: str | Path | None = None) -> list[ImageRecord]:
    """Images named in a text file (one path per line, optionally ``<path> <label>`` with an index or wnid)
    or given as an iterable of paths. Relative paths are resolved against ``root``: by default the list
    file's folder, or the current folder for an iterable."""
    where = Path(paths) if isinstance(paths, (str, Path)) else Path("path list")
    return _unique(list(_list_records(paths, root)), where)


def _list_records(paths: str | Path | Iterable[str | Path], root: str | Path | None) -> Iterator[ImageRecord]:
    if isinstance(paths, (str, Path)):
        list_file = Path(paths)
        if not list_file.is_file():
            raise SourceError(f"{list_file}: list file not found")
        lines: Iterable[tuple[int, str]] = textlines.utf8_lines(list_file)  # streamed: ImageNet's list is 1.28M lines
        base = Path(root) if root is not None else list_file.parent
        where = str(list_file)
    else:
        lines = enumerate((str(p) for p in paths), 1)
        base = Path(root) if root is not None else Path.cwd()
        where = "path list"
    try:
        for number, line in lines:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) > 2:
                raise SourceError(f"{where}, line {number}: expected '<path> [<label>]', got {line.rstrip()!r}")
            label = _parse_label(fields[1], where, number) if len(fields) == 2 else None
            rel = Path(fields[0])
            if rel.is_absolute():
                rel = rel.relative_to(base) if rel.is_relative_to(base) else rel
            yield ImageRecord(rel.stem, rel.as_posix(), label, base)
    except textlines.NotUTF8 as err:
        raise SourceError(f"{where}, line {err.line}: {err.reason}") from None


def _parse_label(value: str, where: str, line: int) -> int:
    try:
        return classes.check_index(int(value)) if value.isdigit() else classes.index_of(value)
    except (KeyError, IndexError) as err:
        raise SourceError(f"{where}, line {line}: {err.args[0]}") from None


def detect_layout(root: str | Path) -> str:
    """The layout of ``root``: ``list`` for a file, else judged from its folder and file names."""
    root = Path(root)
    if root.is_file():
        return "list"
    root = _require_folder(root)
    folders = [f.name for f in _subfolders(root)]
    if folders and all(f in classes.wnids() for f in folders):
        return "train"
    if folders and all(f.isdigit() for f in folders):
        return "imagenetv2"
    if any(_VAL_NAME.match(f.stem) for f in _image_files(root)):
        return "val"
    raise SourceError(
        f"{root}: not a known ImageNet layout (<wnid>/ folders, <class_idx>/ folders, or ILSVRC2012_val_*.JPEG)"
    )


def open_source(root: str | Path, layout: str = "auto", labels: str | Path | None = None) -> list[ImageRecord]:
    """The records of ``root`` in ``layout`` (one of :data:`LAYOUTS`; ``auto`` detects it); unusable entries
    named like images are logged as warnings."""
    return _unique(list(iter_source(root, layout, labels, [])), Path(root))


def iter_source(
    root: str | Path, layout: str = "auto", labels: str | Path | None = None, skipped: list[SkippedFile] | None = None
) -> Iterator[ImageRecord]:
    """:func:`open_source`'s records one at a time, for a listing that stores them as it scans; the caller checks
    that image ids are unique. Entries named like images that cannot be used (:class:`SkippedFile`) are appended
    to ``skipped``. The layout is checked now, the files as the iterator reaches them."""
    if layout not in LAYOUTS:
        raise SourceError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    if labels is not None and layout != "val":
        raise SourceError(f"a labels file applies to the flat val layout only, not to {layout!r} ({root})")
    if layout == "train":
        return _train_records(root, skipped)
    if layout == "val":
        return _val_records(root, labels, skipped)
    if layout == "imagenetv2":
        return _imagenetv2_records(root, skipped)
    return _list_records(root, None)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float greyscale: scale the actual range to 8 bits instead of clipping.
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.convert("F").point(lambda v: (v - lo) * scale).convert("L")
    # Alpha is dropped, not composited: this is what torchvision's and timm's loaders do, so the pixels our masks
    # are computed on are the pixels users train on.
    return image.convert("RGB")


def decode_image(path: str | Path, exif_transpose: bool = False) -> Image.Image:
    """Decode ``path`` completely into an RGB image, or raise :class:`ImageDecodeError`.

    The format is read from the file's content, not its name (ImageNet has a PNG named .JPEG). EXIF
    orientation is NOT applied by default, because standard training loaders (``PIL.Image.open(...)
    .convert("RGB")`` in torchvision and timm) do not apply it either, and masks must line up with the pixels
    users train on; ``exif_transpose=True`` applies it. Truncated files are errors, never silently padded.

    A failure of the file system rather than of the file's bytes (:data:`TRANSIENT_ERRNOS`) is tried
    :data:`READ_TRIES` times in all, then raised as :class:`ImageReadError`, never as a bad image.
    """
    for attempt in range(READ_TRIES):
        try:
            return _decode_once(path, exif_transpose)
        except OSError as err:  # only a transient one leaves _decode_once
            failure = f"{errno.errorcode.get(err.errno, err.errno)}: {err.strerror or err}"
            logger.info("%s: %s (try %d of %d)", path, failure, attempt + 1, READ_TRIES)
            if attempt + 1 < READ_TRIES:
                time.sleep(RETRY_SECONDS * 2**attempt)
    raise ImageReadError(path, f"read failed {READ_TRIES} times ({failure}); not a bad image, so try again later")


def _decode_once(path: str | Path, exif_transpose: bool) -> Image.Image:
    """One try of :func:`decode_image`: :class:`ImageDecodeError` for the file's content; an ``OSError`` of the
    file system passes through."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                if exif_transpose:
                    image = ImageOps.exif_transpose(image)
                return _to_rgb(image).copy()
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(path, "not a recognised image format (empty or corrupt file?)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(path, f"decompression bomb refused: {err}") from None
    except OSError as err:
        if err.errno in TRANSIENT_ERRNOS:
            raise
        raise ImageDecodeError(path, f"cannot decode: {err}") from None
    except (SyntaxError, ValueError) as err:
        raise ImageDecodeError(path, f"cannot decode: {err}") from None


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of ``path`` (1 = upright, also when absent or unreadable)."""
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError):
        return 1


def iter_decoded(
    records: Iterable[ImageRecord], exif_transpose: bool = False
) -> Iterator[tuple[ImageRecord, Image.Image | None, DecodeFailure | None]]:
    """Decode each record; yields ``(record, image, None)`` or ``(record, None, failure)``, never raises for
    a bad file, so a run records the failure and goes on."""
    for record in records:
        try:
            yield record, decode_image(record.full_path, exif_transpose), None
        except ImageDecodeError as err:
            logger.info("%s: %s; recorded and skipped", record.path, err.reason)
            yield record, None, DecodeFailure(record.image_id, record.path, err.reason)
