"""Reading submitted predictions and aligning them to a benchmark's images.

Two kinds of file:

* an array [N, 1000] of scores in the benchmark's canonical order (``.npy``, ``.npz``, ``.pt``/``.pth``,
  ``.safetensors``; in a container, the array named ``scores`` or the only array). For benchmarks on the
  ImageNet val set, an array over all 50,000 val images (val order) is accepted too. An integer array with
  fewer than 1000 columns holds ranked class indices instead (best first);
* a table keyed by image basename (``.csv``, ``.jsonl``, ``.parquet``) with a column/field ``image`` and either
  ``scores`` (1000 numbers; in CSV: 1000 columns named ``0``..``999``) or ``topk`` (ranked class indices or
  wnids, best first; in CSV: one space-separated string), and nothing else.

Everything else is refused with a :class:`PredictionsError` naming the file, the line or image where there is
one, and what is wrong; no file is half-read or read "as best it can" (docs/evaluation.md lists the rules).
Nothing is unpickled: ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import json
import pickle
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multilabel_imagenet import classes, textlines
from multilabel_imagenet.evaluation.benchmarks import (
    NUM_VAL_IMAGES,
    VAL_UNIVERSE,
    Benchmark,
    image_key,
    val_number,
)

ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors")
KEYED_SUFFIXES = (".csv", ".jsonl", ".parquet")
_DIGITS = re.compile(r"[0-9]+")


class PredictionsError(ValueError):
    """Predictions that cannot be scored; the message names the file, the problem and a few examples."""


@dataclass(eq=False)
class Predictions:
    """Scores [N, 1000] or ranked class lists [N, K], with the image name of each row (None = array order)."""

    source: str
    scores: np.ndarray | None = None
    ranked: np.ndarray | None = None
    image_ids: tuple[str, ...] | None = None

    @property
    def rows(self) -> int:
        return len(self.scores if self.scores is not None else self.ranked)  # type: ignore[arg-type]


def _examples(items: Sequence[object], n: int = 3) -> str:
    if not items:
        return "nothing"
    return ", ".join(repr(x) for x in list(items)[:n]) + (", ..." if len(items) > n else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _not_finite(scores: np.ndarray, source: str) -> PredictionsError:
    """The error for scores holding NaN or infinities: how many of each, in how many rows, and where."""
    bad = ~np.isfinite(scores)
    kinds = [(int(np.isnan(scores).sum()), "NaN"), (int(np.isposinf(scores).sum()), "+inf")]
    kinds.append((int(np.isneginf(scores).sum()), "-inf"))
    counts = ", ".join(f"{n} {kind}" for n, kind in kinds if n)
    rows = int(bad.any(axis=1).sum())
    where = [(int(r), int(c)) for r, c in np.argwhere(bad)[:3]]
    if bad.all():
        what = f"every one of the {scores.size} scores is NaN or infinite ({counts})"
        return PredictionsError(f"{source}: {what}: nothing to score (a failed or overflowed run?)")
    return PredictionsError(
        f"{source}: {int(bad.sum())} of the {scores.size} scores are NaN or infinite ({counts}), in "
        f"{rows} of the {len(scores)} rows, e.g. at (row, class) {_examples(where)}"
    )


def check_scores(scores: np.ndarray, rows: int | None, source: str) -> np.ndarray:
    """Validate a score array: 2-D, 1000 columns, ``rows`` rows if given, real numbers and finite. Returns it as
    float64 if it is float64, else as float32."""
    if scores.ndim != 2 or scores.shape[1] != classes.NUM_CLASSES or (rows is not None and len(scores) != rows):
        want = f"[{rows if rows is not None else 'N'}, {classes.NUM_CLASSES}]"
        hint = ""
        if scores.ndim == 2 and 0 < scores.shape[1] < classes.NUM_CLASSES and scores.dtype.kind == "f":
            hint = (
                f"; ranked class lists (fewer than {classes.NUM_CLASSES} columns) must be integers, not {scores.dtype}"
            )
        raise PredictionsError(f"{source}: expected scores of shape {want}, got {list(scores.shape)}{hint}")
    if scores.dtype.kind not in "iuf":
        raise PredictionsError(f"{source}: scores must be real numbers (integer or floating), got dtype {scores.dtype}")
    scores = scores.astype(np.float64 if scores.dtype == np.float64 else np.float32, copy=False)
    if not np.isfinite(scores).all():
        raise _not_finite(scores, source)
    return scores


def check_ranked(ranked: np.ndarray, rows: int | None, source: str) -> np.ndarray:
    """Validate ranked class lists: 2-D integers in 0..999, no class twice in a row."""
    if ranked.ndim != 2 or ranked.shape[1] == 0 or (rows is not None and len(ranked) != rows):
        raise PredictionsError(f"{source}: expected ranked class lists of shape [{rows or 'N'}, K], got {ranked.shape}")
    if ranked.dtype.kind not in "iu":
        raise PredictionsError(f"{source}: ranked classes must be integers, got dtype {ranked.dtype}")
    bad = np.argwhere((ranked < 0) | (ranked >= classes.NUM_CLASSES))
    if len(bad):
        raise PredictionsError(
            f"{source}: class index out of range 0..{classes.NUM_CLASSES - 1}, e.g. "
            f"{_examples([f'row {r}: {ranked[r, c]}' for r, c in bad])}"
        )
    s = np.sort(ranked, axis=1)
    dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
    if len(dup):
        raise PredictionsError(f"{source}: a class appears twice in a ranked list, e.g. rows {_examples(dup.tolist())}")
    return ranked.astype(np.int64, copy=False)


def _is_full_ranking(array: np.ndarray) -> bool:
    """Every row a permutation of 0..999 (an argsort of scores, not scores)."""
    if not len(array) or (array.min(axis=1) != 0).any() or (array.max(axis=1) != classes.NUM_CLASSES - 1).any():
        return False
    return bool((np.sort(array, axis=1) == np.arange(classes.NUM_CLASSES)).all())


def _pick_array(arrays: dict, path: Path):
    if "scores" in arrays:
        return arrays["scores"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    if not arrays:
        raise PredictionsError(f"{path}: holds no arrays")
    names = sorted(str(k) for k in arrays)
    raise PredictionsError(f"{path}: holds several arrays {_examples(names)} and none named 'scores'; name it so")


def tensor_to_numpy(tensor, source: str) -> np.ndarray:
    """A torch tensor's values as numpy: float64 kept (finite values near 1e300 stay finite), other floating
    types as float32, integers and bools as they are; sparse, quantized, complex or meta tensors refused."""
    import torch

    if tensor.layout != torch.strided:
        raise PredictionsError(
            f"{source}: holds a {str(tensor.layout).removeprefix('torch.')} tensor; save a dense one"
        )
    if tensor.is_meta:
        raise PredictionsError(f"{source}: the tensor holds no values (saved from the meta device)")
    if tensor.is_quantized or tensor.is_complex():
        raise PredictionsError(f"{source}: scores must be real numbers, got dtype {tensor.dtype}")
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor.numpy()


def _read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):  # by content: np.load returns an archive for .npz data whatever the name
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded as archive:
            return _pick_array({k: archive[k] for k in archive.files}, path)
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return _pick_array(load_file(str(path)), path)
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message is a page long; its reason is one line of it
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        reason = found.group(1).split(". ")[0].strip() if found else _first_line(err)
        raise PredictionsError(
            f"{path}: cannot read as {path.suffix}: torch.load(weights_only=True) refuses it ({reason}); only "
            "tensors and dicts of tensors are read, nothing is unpickled"
        ) from None
    if isinstance(obj, dict):
        obj = _pick_array(obj, path)
    if not isinstance(obj, torch.Tensor):
        raise PredictionsError(f"{path}: expected a tensor or a dict holding 'scores', got {type(obj).__name__}")
    return tensor_to_numpy(obj, str(path))


def _array_predictions(path: Path) -> Predictions:
    array, source = _read_array(path), str(path)
    if array.dtype.kind in "iu" and array.ndim == 2:
        if array.shape[1] < classes.NUM_CLASSES:
            return Predictions(source, ranked=check_ranked(array, None, source))
        if array.shape[1] == classes.NUM_CLASSES and _is_full_ranking(array):
            raise PredictionsError(
                f"{source}: every row is a permutation of the class indices 0..{classes.NUM_CLASSES - 1}: a "
                f"ranking, not scores; give scores as floats, or ranked class lists with fewer than "
                f"{classes.NUM_CLASSES} columns"
            )
    return Predictions(source, scores=check_scores(array, None, source))


# --- keyed tables ---


def _class_index(value: object) -> int:
    """A class from a ranked list: an int, a string of digits 0-9, or a wnid; raises ValueError saying why not."""
    if isinstance(value, str):
        if value.startswith("n"):
            try:
                return classes.index_of(value)
            except KeyError as err:
                raise ValueError(err.args[0]) from None
        if not _DIGITS.fullmatch(value):  # int() would take "1_0", "+1" and non-ASCII digits
            raise ValueError(f"{value!r} is neither a class index (digits 0-9) nor a wnid")
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int | np.integer):
        what = "a float (class indices are integers)" if isinstance(value, float) else type(value).__name__
        raise ValueError(f"{value!r} is {what}, not a class index or wnid")
    try:
        return classes.check_index(value)
    except IndexError as err:
        raise ValueError(str(err)) from None


def _ranked_list(value: object, where: str) -> list[int]:
    if not isinstance(value, list | tuple):
        what = "a string" if isinstance(value, str) else type(value).__name__
        raise PredictionsError(f"{where}: 'topk' must be a list of class indices or wnids, got {what}: {value!r}")
    out = []
    for v in value:
        try:
            out.append(_class_index(v))
        except ValueError as err:
            raise PredictionsError(f"{where}: {err}") from None
    return out


def _score_list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise PredictionsError(f"{where}: 'scores' must be a list of {classes.NUM_CLASSES} numbers, got {value!r:.60}")
    if len(value) != classes.NUM_CLASSES:
        raise PredictionsError(f"{where}: 'scores' must hold {classes.NUM_CLASSES} numbers, got {len(value)}")
    if not set(map(type, value)) <= {int, float}:  # bool is no number here; None, str, list are none at all
        bad = next(v for v in value if type(v) not in (int, float))
        raise PredictionsError(f"{where}: 'scores' must be numbers, got {bad!r} at class {value.index(bad)}")
    return value


def _keyed(path: Path, names: list[str], kind: str, values: list | np.ndarray) -> Predictions:
    """Predictions from per-image rows whose values are checked (ranked lists: class indices)."""
    source = str(path)
    if not names:
        raise PredictionsError(f"{source}: no predictions (a header or schema but no rows)")
    if kind == "scores":
        array = np.asarray(values)
        return Predictions(source, scores=check_scores(array, None, source), image_ids=tuple(names))
    lengths = {len(v) for v in values}
    if lengths == {0}:
        raise PredictionsError(f"{source}: every 'topk' list is empty")
    if len(lengths) != 1:
        short = [n for n, v in zip(names, values, strict=True) if len(v) == min(lengths)]
        raise PredictionsError(
            f"{source}: every 'topk' list must have the same length; lengths {sorted(lengths)[:5]} occur, "
            f"e.g. {min(lengths)} for images {_examples(short)}"
        )
    ranked = np.array(values, dtype=np.int64).reshape(len(values), -1)
    return Predictions(source, ranked=check_ranked(ranked, None, source), image_ids=tuple(names))


def _fields(found: Sequence[str], where: str) -> str:
    """The kind ('scores' or 'topk') of a row/table with ``found`` columns/fields; anything else is an error."""
    found = [str(f) for f in found]
    if "image" not in found:
        raise PredictionsError(f"{where}: no 'image' column/field; found {_examples(found)}")
    kinds = [k for k in ("scores", "topk") if k in found]
    if len(kinds) != 1:
        raise PredictionsError(
            f"{where}: expected exactly one of 'scores' or 'topk' next to 'image'; found {_examples(found)}"
        )
    extra = [f for f in found if f not in ("image", kinds[0])]
    if extra:
        raise PredictionsError(
            f"{where}: unexpected columns/fields {_examples(extra)}; predictions hold 'image' and '{kinds[0]}' only"
        )
    return kinds[0]


def _image_names(values: Sequence[object], source: str, rows: str = "row") -> list[str]:
    """Image names checked to be non-empty strings; ``rows`` names the unit of position in messages."""
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v]
    if bad:
        shown = _examples([f"{rows} {i + 1}: {values[i]!r}" for i in bad])
        raise PredictionsError(f"{source}: 'image' must be a non-empty image name; {len(bad)} are not ({shown})")
    return list(values)  # type: ignore[arg-type]


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """:func:`~multilabel_imagenet.textlines.utf8_lines`, a bad line named as ``FILE: line LINE``."""
    try:
        yield from textlines.utf8_lines(path)
    except textlines.NotUTF8 as err:
        raise PredictionsError(f"{path}: {err}") from None


def _read_jsonl(path: Path) -> Predictions:
    names, values, kind = [], [], None
    for number, line in _utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise PredictionsError(f"{where}: not JSON ({err})") from None
        if not isinstance(rec, dict):
            raise PredictionsError(f"{where}: expected an object with 'image', got {type(rec).__name__}")
        this = _fields(list(rec), where)
        if kind is not None and this != kind:
            raise PredictionsError(f"{where} has '{this}' but earlier lines have '{kind}'")
        kind = this
        image = rec["image"]
        if not isinstance(image, str) or not image:
            raise PredictionsError(f"{where}: 'image' must be a non-empty image name, got {image!r}")
        where = f"{where} (image {image})"
        names.append(image)
        values.append(_score_list(rec[kind], where) if kind == "scores" else _ranked_list(rec[kind], where))
    if kind is None:
        raise PredictionsError(f"{path}: no predictions (only blank lines)")
    return _keyed(path, names, kind, values)


def _csv_fault(path: Path) -> str | None:
    """Where a CSV file breaks the table shape: the first line not UTF-8 or with another number of fields than
    the header, as 'line N: ...'; None if no such line is found."""
    lines = (text for _, text in _utf8_lines(path))  # raises for a line that is not UTF-8
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return "no header line"
    for row in reader:
        if row and len(row) != len(header):
            return f"line {reader.line_num}: {_plural(len(row), 'field')}, but the header has {len(header)}"
    return None


def _csv_kind(columns: list[str], path: Path) -> str:
    """'scores' for image + columns 0..999, 'topk' for image + topk; any other set of columns is an error."""
    numbered = [c for c in columns if _DIGITS.fullmatch(c)]
    if "image" in columns and "topk" not in columns and len(columns) == classes.NUM_CLASSES + 1:
        others = [c for c in columns if c != "image"]
        if others != [str(i) for i in range(classes.NUM_CLASSES)]:
            raise PredictionsError(f"{path}: score columns must be named 0..999 in order; found {_examples(others)}")
        return "scores"
    if "image" in columns and numbered and "topk" not in columns:
        others = [c for c in columns if c != "image" and c not in numbered]
        raise PredictionsError(
            f"{path}: unexpected columns {_examples(others)} beside 'image' and the score columns"
            if others
            else f"{path}: {len(numbered)} score columns; expected {classes.NUM_CLASSES}, named 0..999"
        )
    if _fields(columns, str(path)) == "scores":
        raise PredictionsError(f"{path}: in CSV, scores are {classes.NUM_CLASSES} columns named 0..999, not 'scores'")
    return "topk"


def _read_csv(path: Path) -> Predictions:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if not any(line.strip() for _, line in _utf8_lines(path)):
        raise PredictionsError(f"{path}: no header line (the file holds only blank lines)")
    text_columns = {"image": pa.string(), "topk": pa.string()}  # "0" must stay a class, not a falsy int
    try:
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=text_columns))
    except pa.ArrowInvalid as err:
        fault = _csv_fault(path)
        raise PredictionsError(f"{path}: not a valid CSV table ({fault or str(err).splitlines()[0]})") from None
    kind = _csv_kind(table.column_names, path)
    if table.num_rows == 0:
        raise PredictionsError(f"{path}: no predictions (only a header line)")
    names = _image_names(table.column("image").to_pylist(), str(path), "data row")
    if kind == "topk":
        values = [
            _ranked_list((v or "").split(), f"{path}: image {n}")
            for n, v in zip(names, table.column("topk").to_pylist(), strict=True)
        ]
        return _keyed(path, names, kind, values)
    score_columns = [c for c in table.column_names if c != "image"]
    for c in score_columns:
        column = table.column(c)
        if column.null_count:
            rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
            raise PredictionsError(
                f"{path}: column {c!r} has {column.null_count} empty cells, e.g. for images "
                f"{_examples([names[r] for r in rows])}"
            )
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise PredictionsError(
                f"{path}: column {c!r} must hold numbers; read as {column.type}, e.g. {_examples(column.to_pylist())}"
            )
    return _keyed(path, names, kind, np.column_stack([table.column(c).to_numpy() for c in score_columns]))


def _read_parquet(path: Path) -> Predictions:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    kind = _fields(table.column_names, str(path))
    if table.num_rows == 0:
        raise PredictionsError(f"{path}: no predictions (a table of 0 rows)")
    image = table.column("image")
    if not (pa.types.is_string(image.type) or pa.types.is_large_string(image.type)):
        raise PredictionsError(f"{path}: column 'image' must hold image names (strings), found {image.type}")
    names = _image_names(image.to_pylist(), str(path))
    values = table.column(kind).combine_chunks()
    list_type = (
        pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type)
    )
    item_type = values.type.value_type if list_type else None
    if kind == "scores":
        if not list_type or not (pa.types.is_integer(item_type) or pa.types.is_floating(item_type)):
            raise PredictionsError(
                f"{path}: column 'scores' must hold lists of {classes.NUM_CLASSES} numbers, found {values.type}"
            )
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        bad = [n for n, length, valid in zip(names, lengths, values.is_valid().to_pylist(), strict=True)
               if not valid or length != classes.NUM_CLASSES]  # fmt: skip
        if bad:
            raise PredictionsError(
                f"{path}: 'scores' must hold {classes.NUM_CLASSES} numbers; {len(bad)} images do not, "
                f"e.g. {_examples(bad)}"
            )
        flat = pc.list_flatten(values)
        if flat.null_count:
            rows = np.flatnonzero(pc.is_null(flat).to_numpy(zero_copy_only=False)) // classes.NUM_CLASSES
            raise PredictionsError(
                f"{path}: {flat.null_count} scores are null, e.g. for images {_examples([names[r] for r in rows])}"
            )
        return _keyed(path, names, kind, flat.to_numpy().reshape(len(names), classes.NUM_CLASSES))
    if not list_type or not (pa.types.is_integer(item_type) or pa.types.is_string(item_type)):
        raise PredictionsError(
            f"{path}: column 'topk' must hold lists of class indices (integers) or wnids (strings), found {values.type}"
        )
    nulls = [n for n, valid in zip(names, values.is_valid().to_pylist(), strict=True) if not valid]
    if nulls:
        raise PredictionsError(f"{path}: 'topk' is null for {len(nulls)} images, e.g. {_examples(nulls)}")
    lists = values.to_pylist()
    return _keyed(path, names, kind, [_ranked_list(v, f"{path}: image {n}") for n, v in zip(names, lists, strict=True)])


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def read_predictions(path: str | Path) -> Predictions:
    """Read a predictions file (format chosen by suffix); raises :class:`PredictionsError` on bad content."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise PredictionsError(f"{path}: {'a folder, not a file' if path.is_dir() else 'file not found'}")
    readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    readers |= dict.fromkeys(ARRAY_SUFFIXES, _array_predictions)
    if suffix not in readers:
        raise PredictionsError(
            f"{path}: unknown predictions format {suffix!r}; use one of {ARRAY_SUFFIXES + KEYED_SUFFIXES}"
        )
    if path.stat().st_size == 0:
        raise PredictionsError(f"{path}: the file is empty")
    try:
        predictions = readers[suffix](path)
    except PredictionsError:
        raise
    except Exception as err:  # a corrupt or foreign file: report it as such, naming the file
        raise PredictionsError(f"{path}: cannot read as {suffix} ({_first_line(err)})") from None
    seen: set[str] = set()
    dups = []
    for name in predictions.image_ids or ():
        key = image_key(name)
        if key in seen:
            dups.append(name)
        seen.add(key)
    if dups:
        raise PredictionsError(f"{path}: {len(dups)} images appear more than once, e.g. {_examples(dups)}")
    return predictions


def align(predictions: Predictions, benchmark: Benchmark) -> Predictions:
    """Rows of ``predictions`` in ``benchmark``'s canonical order; errors name missing or unknown images."""
    source, n = predictions.source, len(benchmark)
    if predictions.image_ids is None:
        rows: np.ndarray | slice
        if predictions.rows == n:
            rows = slice(None)
        elif predictions.rows == NUM_VAL_IMAGES and benchmark.universe == VAL_UNIVERSE:
            rows = benchmark.val_indices()  # type: ignore[assignment]
        else:
            extra = f" or {NUM_VAL_IMAGES} (the whole val set)" if benchmark.universe == VAL_UNIVERSE else ""
            raise PredictionsError(
                f"{source}: {predictions.rows} rows, but benchmark {benchmark.name!r} has {n} images{extra}; "
                f"rows must follow its canonical order (`multilabel-imagenet benchmarks images {benchmark.name}`)"
            )
    else:
        index = {image_key(name): i for i, name in enumerate(predictions.image_ids)}
        if benchmark.universe == VAL_UNIVERSE:
            unknown = [name for name in predictions.image_ids if not _is_val_name(name)]
        else:
            known = {image_key(name) for name in benchmark.image_ids}
            unknown = [name for name in predictions.image_ids if image_key(name) not in known]
        if unknown:
            raise PredictionsError(
                f"{source}: {len(unknown)} image names are not images of {benchmark.name!r}, e.g. {_examples(unknown)}"
            )
        missing = [name for name in benchmark.image_ids if image_key(name) not in index]
        if missing:
            raise PredictionsError(
                f"{source}: no prediction for {len(missing)} of the {n} images of {benchmark.name!r}, "
                f"e.g. {_examples(missing)}"
            )
        rows = np.array([index[image_key(name)] for name in benchmark.image_ids], dtype=np.int64)
    return Predictions(
        source,
        scores=None if predictions.scores is None else predictions.scores[rows],
        ranked=None if predictions.ranked is None else predictions.ranked[rows],
    )


def _is_val_name(name: str) -> bool:
    try:
        val_number(name)
    except ValueError:
        return False
    return True
