"""Reading submitted predictions and aligning them to a benchmark's images.

Two kinds of file:

* an array [N, 1000] of scores in the benchmark's canonical order (``.npy``, ``.npz``, ``.pt``/``.pth``,
  ``.safetensors``; in a container, the array named ``scores`` or the only array). For benchmarks on the
  ImageNet val set, an array over all 50,000 val images (val order) is accepted too;
* a table keyed by image basename (``.csv``, ``.jsonl``, ``.parquet``) with a column/field ``image`` and either
  ``scores`` (1000 numbers; in CSV: 1000 columns named ``0``..``999``) or ``topk`` (ranked class indices or
  wnids, best first; in CSV: one space-separated string).

Nothing is unpickled: ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multilabel_imagenet import classes
from multilabel_imagenet.evaluation.benchmarks import (
    NUM_VAL_IMAGES,
    VAL_UNIVERSE,
    Benchmark,
    image_key,
    val_number,
)

ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors")
KEYED_SUFFIXES = (".csv", ".jsonl", ".parquet")


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
    return ", ".join(repr(x) for x in list(items)[:n]) + (", ..." if len(items) > n else "")


def check_scores(scores: np.ndarray, rows: int | None, source: str) -> np.ndarray:
    """Validate a score array: 2-D, 1000 columns, ``rows`` rows if given, numeric and finite."""
    if scores.ndim != 2 or scores.shape[1] != classes.NUM_CLASSES or (rows is not None and len(scores) != rows):
        want = f"[{rows if rows is not None else 'N'}, {classes.NUM_CLASSES}]"
        raise PredictionsError(f"{source}: expected scores of shape {want}, got {list(scores.shape)}")
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise PredictionsError(f"{source}: scores must be numbers, got dtype {scores.dtype}")
    scores = scores.astype(np.float64 if scores.dtype == np.float64 else np.float32, copy=False)
    bad = ~np.isfinite(scores)
    if bad.any():
        where = [(int(r), int(c)) for r, c in np.argwhere(bad)[:3]]
        raise PredictionsError(
            f"{source}: {int(bad.sum())} scores are NaN or infinite, e.g. at (row, class) {_examples(where)}"
        )
    return scores


def check_ranked(ranked: np.ndarray, rows: int | None, source: str) -> np.ndarray:
    """Validate ranked class lists: 2-D integers in 0..999, no class twice in a row."""
    if ranked.ndim != 2 or ranked.shape[1] == 0 or (rows is not None and len(ranked) != rows):
        raise PredictionsError(f"{source}: expected ranked class lists of shape [{rows or 'N'}, K], got {ranked.shape}")
    if not np.issubdtype(ranked.dtype, np.integer):
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


def _pick_array(arrays: dict[str, np.ndarray], path: Path) -> np.ndarray:
    if "scores" in arrays:
        return arrays["scores"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise PredictionsError(f"{path}: holds several arrays {_examples(sorted(arrays))}; name the scores 'scores'")


def _read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return _pick_array({k: z[k] for k in z.files}, path)
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return _pick_array(load_file(str(path)), path)
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        obj = _pick_array(obj, path)
    if not isinstance(obj, torch.Tensor):
        raise PredictionsError(f"{path}: expected a tensor or a dict holding 'scores', got {type(obj).__name__}")
    return obj.detach().float().numpy() if obj.is_floating_point() else obj.numpy()


def _class_list(values: Sequence[object], source: str, row: str) -> list[int]:
    out = []
    for v in values:
        try:
            if isinstance(v, str) and v.startswith("n"):
                out.append(classes.index_of(v))
            elif isinstance(v, bool):
                raise IndexError(f"{v!r} is not a class index")
            else:
                out.append(classes.check_index(int(v)))  # type: ignore[call-overload]
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise PredictionsError(f"{source}: image {row}: {err}") from None
    return out


def _from_rows(path: Path, names: list[str], kind: str, values: list | np.ndarray) -> Predictions:
    source = str(path)
    if kind == "scores":
        bad = [n for n, v in zip(names, values, strict=True) if v is None or len(v) != classes.NUM_CLASSES]
        if bad:
            raise PredictionsError(
                f"{source}: 'scores' must hold {classes.NUM_CLASSES} numbers; images {_examples(bad)}"
            )
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise PredictionsError(f"{source}: 'scores' must be numbers ({err})") from None
        return Predictions(source, scores=check_scores(array, None, source), image_ids=tuple(names))
    lists = [_class_list(v or [], source, n) for n, v in zip(names, values, strict=True)]
    lengths = {len(v) for v in lists}
    if len(lengths) != 1:
        short = [n for n, v in zip(names, lists, strict=True) if len(v) == min(lengths)]
        raise PredictionsError(
            f"{source}: every 'topk' list must have the same length; lengths {sorted(lengths)[:5]} occur, "
            f"e.g. {min(lengths)} for images {_examples(short)}"
        )
    ranked = np.array(lists, dtype=np.int64).reshape(len(lists), -1)
    return Predictions(source, ranked=check_ranked(ranked, None, source), image_ids=tuple(names))


def _kind(fields: Sequence[str], path: Path) -> str:
    if "image" not in fields:
        raise PredictionsError(f"{path}: no 'image' column/field; found {_examples(list(fields))}")
    kinds = [k for k in ("scores", "topk") if k in fields]
    if len(kinds) != 1:
        raise PredictionsError(
            f"{path}: expected exactly one of 'scores' or 'topk' next to 'image'; found {_examples(list(fields))}"
        )
    return kinds[0]


def _read_jsonl(path: Path) -> Predictions:
    names, values, kind = [], [], None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictionsError(f"{path}: line {number}: not JSON ({err})") from None
            if not isinstance(rec, dict):
                raise PredictionsError(f"{path}: line {number}: expected an object with 'image'")
            this = _kind(list(rec), Path(f"{path}: line {number}"))
            if kind is not None and this != kind:
                raise PredictionsError(f"{path}: line {number} has '{this}' but earlier lines have '{kind}'")
            kind = this
            names.append(str(rec["image"]))
            values.append(rec[kind])
    if kind is None:
        raise PredictionsError(f"{path}: no predictions")
    return _from_rows(path, names, kind, values)


def _read_table(path: Path) -> Predictions:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        text_columns = {"image": pa.string(), "topk": pa.string()}  # "0" must stay a class, not a falsy int
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=text_columns))
        columns = [c for c in table.column_names if c != "image"]
        if "image" in table.column_names and "topk" not in columns and len(columns) == classes.NUM_CLASSES:
            if columns != [str(i) for i in range(classes.NUM_CLASSES)]:
                raise PredictionsError(
                    f"{path}: score columns must be named 0..999 in order; found {_examples(columns)}"
                )
            names = [str(x) for x in table.column("image").to_pylist()]
            array = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in columns])
            return _from_rows(path, names, "scores", array)
        if "topk" in columns:
            names = [str(x) for x in table.column("image").to_pylist()]
            values = [(v or "").split() for v in table.column("topk").to_pylist()]
            return _from_rows(path, names, "topk", values)
    kind = _kind(table.column_names, path)
    names = [str(x) for x in table.column("image").to_pylist()]
    values = table.column(kind).combine_chunks()
    if kind == "scores":
        import pyarrow.compute as pc

        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        if values.null_count == 0 and (lengths == classes.NUM_CLASSES).all():  # fast path: no Python floats
            flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
            return _from_rows(path, names, kind, flat.reshape(len(names), classes.NUM_CLASSES))
    return _from_rows(path, names, kind, values.to_pylist())


def read_predictions(path: str | Path) -> Predictions:
    """Read a predictions file (format chosen by suffix); raises :class:`PredictionsError` on bad content."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise PredictionsError(f"{path}: file not found")
    if suffix in ARRAY_SUFFIXES:
        try:
            array = _read_array(path)
        except PredictionsError:
            raise
        except Exception as err:  # a corrupt or foreign file: report it as such, naming the file
            raise PredictionsError(f"{path}: cannot read as {suffix} ({type(err).__name__}: {err})") from None
        if np.issubdtype(array.dtype, np.integer) and array.ndim == 2 and array.shape[1] < classes.NUM_CLASSES:
            return Predictions(str(path), ranked=check_ranked(array, None, str(path)))
        return Predictions(str(path), scores=check_scores(array, None, str(path)))
    if suffix == ".jsonl":
        predictions = _read_jsonl(path)
    elif suffix in (".csv", ".parquet"):
        predictions = _read_table(path)
    else:
        raise PredictionsError(
            f"{path}: unknown predictions format {suffix!r}; use one of {ARRAY_SUFFIXES + KEYED_SUFFIXES}"
        )
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
