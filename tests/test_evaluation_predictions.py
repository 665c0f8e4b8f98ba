"""Predictions files in every supported format, alignment by image name, and clear errors on bad input."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from multilabel_imagenet import classes
from multilabel_imagenet.evaluation import (
    PredictionsError,
    align,
    evaluate,
    evaluate_ranked,
    load_benchmark,
    read_predictions,
)
from multilabel_imagenet.evaluation.benchmarks import val_name

N = 40


@pytest.fixture()
def bench(tmp_path):
    """A small INv2-ML-style benchmark written in the published layout ({"<sha1>.jpeg": ["idx", ...]})."""
    rng = np.random.default_rng(0)
    names = [f"{i:040x}.jpeg" for i in rng.choice(2**60, size=N, replace=False)]
    refined = {n: [str(c) for c in rng.choice(1000, size=rng.integers(0, 4), replace=False)] for n in names}
    path = tmp_path / "imagenetv2_refined_labels.json"
    path.write_text(json.dumps(refined))
    return load_benchmark("inv2-ml", path)


@pytest.fixture()
def scores(bench):
    rng = np.random.default_rng(1)
    s = rng.random((N, 1000)).astype(np.float32)
    s[bench.targets] += 0.5 * rng.random(int(bench.targets.sum())).astype(np.float32)
    return s / s.max()


def _keyed_rows(bench, scores, order):
    return [(bench.image_ids[i], scores[i]) for i in order]


def _write_all_formats(tmp_path, bench, scores):
    order = np.random.default_rng(2).permutation(N)  # keyed files are shuffled: matched by name, not order
    rows = _keyed_rows(bench, scores, order)
    files = {}
    np.save(tmp_path / "p.npy", scores)
    np.savez(tmp_path / "p.npz", scores=scores, other=np.zeros(3))
    torch.save({"scores": torch.from_numpy(scores)}, tmp_path / "p.pt")
    save_file({"scores": scores}, str(tmp_path / "p.safetensors"))
    header = "image," + ",".join(str(i) for i in range(1000))
    lines = [header] + [f"{n.removesuffix('.jpeg')}," + ",".join(repr(float(x)) for x in s) for n, s in rows]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"image": n, "scores": s.tolist()}) + "\n" for n, s in rows))
    table = pa.table({"image": [f"v2/123/{n}" for n, _ in rows], "scores": [s.tolist() for _, s in rows]})
    pq.write_table(table, tmp_path / "p.parquet")
    for suffix in ("npy", "npz", "pt", "safetensors", "csv", "jsonl", "parquet"):
        files[suffix] = tmp_path / f"p.{suffix}"
    return files


def test_every_score_format_gives_the_same_report(tmp_path, bench, scores):
    expected = evaluate(scores, bench)
    assert "map_per_sample" in expected and set(expected["skipped"]) == {"thresh@original"}  # no original labels
    for suffix, path in _write_all_formats(tmp_path, bench, scores).items():
        rows = align(read_predictions(path), bench)
        got = evaluate(rows.scores, bench)
        assert got.keys() == expected.keys(), suffix
        for key, value in expected.items():
            if key in ("settings", "skipped"):
                assert got[key] == value, (suffix, key)
            else:
                assert got[key] == pytest.approx(value, abs=1e-6), (suffix, key)


def test_evaluate_accepts_torch_tensors(bench, scores):
    got, expected = evaluate(torch.from_numpy(scores).double(), bench), evaluate(scores, bench)
    assert got.pop("settings") == expected.pop("settings") and got.pop("skipped") == expected.pop("skipped")
    assert got == pytest.approx(expected)


def test_ranked_topk_lists_report_only_ranking_metrics(tmp_path, bench, scores):
    ranked = np.argsort(-scores, axis=1)[:, :5]
    names = bench.image_ids
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"image": n, "topk": r.tolist()}) + "\n" for n, r in zip(names, ranked, strict=True))
    )
    wnid_rows = [" ".join(classes.wnid_of(int(c)) for c in r) for r in ranked]  # wnids accepted too
    (tmp_path / "t.csv").write_text(
        "image,topk\n" + "".join(f"{n},{w}\n" for n, w in zip(names, wnid_rows, strict=True))
    )
    pq.write_table(pa.table({"image": list(names), "topk": ranked.tolist()}), tmp_path / "t.parquet")
    full = evaluate(scores, bench)
    for suffix in ("jsonl", "csv", "parquet"):
        rows = align(read_predictions(tmp_path / f"t.{suffix}"), bench)
        assert rows.scores is None
        got = evaluate_ranked(rows.ranked, bench)
        assert got["multilabel_top1"] == pytest.approx(full["multilabel_top1"])
        assert got["multilabel_top5"] == pytest.approx(full["multilabel_top5"])
        assert got["variable_topk"] == pytest.approx(full["variable_topk"])
        assert got["asma"] == pytest.approx(full["asma"])
        assert "map_per_sample" not in got and "map_macro" not in got
        assert "full score vectors" in got["skipped"]["map_per_sample"]


def test_integer_array_with_few_columns_is_read_as_ranked_lists(tmp_path, bench, scores):
    np.save(tmp_path / "top5.npy", np.argsort(-scores, axis=1)[:, :5].astype(np.int32))
    rows = align(read_predictions(tmp_path / "top5.npy"), bench)
    assert rows.scores is None
    assert evaluate_ranked(rows.ranked, bench)["asma"] == pytest.approx(evaluate(scores, bench)["asma"])


def test_csv_single_class_topk_keeps_class_zero(tmp_path):
    (tmp_path / "t.csv").write_text("image,topk\naa.jpeg,0\nbb.jpeg,5\n")
    assert read_predictions(tmp_path / "t.csv").ranked.tolist() == [[0], [5]]


def test_short_topk_lists_skip_metrics_that_need_deeper_rankings(bench, scores):
    ranked = np.argsort(-scores, axis=1)[:, :1]
    got = evaluate_ranked(ranked, bench)
    assert "multilabel_top1" in got
    assert "top-5" in got["skipped"]["multilabel_top5"]
    assert "top-3" in got["skipped"]["variable_topk"]


def test_whole_val_set_array_is_subset_for_val_benchmarks(tmp_path):
    images = {val_name(i): [i % 1000] for i in (4, 17, 49_999)}
    path = tmp_path / "in_seg.json"
    path.write_text(json.dumps({"format": "multilabel-imagenet/in-seg-labels/v1", "images": images}))
    bench = load_benchmark("in-seg", path)
    full = np.zeros((50_000, 1000), dtype=np.float32)
    full[[4, 17, 49_999], [4, 17, 999]] = 1.0  # right on the first two and the last
    np.save(tmp_path / "all.npy", full)
    rows = align(read_predictions(tmp_path / "all.npy"), bench)
    assert evaluate(rows.scores, bench)["multilabel_top1"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda s, b: s[:, :999], r"shape \[N, 1000\], got \[40, 999\]"),
        (lambda s, b: s[:-1], r"39 rows, but benchmark 'inv2-ml' has 40 images"),
        (
            lambda s, b: np.where(np.arange(1000) == 7, np.nan, s),
            r"40 of the 40000 scores are NaN or infinite \(40 NaN\), in 40 of the 40 rows.*\(0, 7\)",
        ),
    ],
)
def test_bad_arrays_raise_clear_errors(tmp_path, bench, scores, content, message):
    np.save(tmp_path / "bad.npy", content(scores, bench))
    with pytest.raises(PredictionsError, match=message):
        align(read_predictions(tmp_path / "bad.npy"), bench)


def _jsonl(tmp_path, records):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_bad_keyed_files_raise_clear_errors(tmp_path, bench, scores):
    names = list(bench.image_ids)
    ok = [{"image": n, "topk": [1, 2, 3]} for n in names]
    cases = [
        (ok + [ok[0]], r"1 images appear more than once, e.g. '" + names[0]),
        (ok[1:], r"no prediction for 1 of the 40 images of 'inv2-ml', e\.g\. '" + names[0]),
        (ok + [{"image": "cat.jpg", "topk": [1, 2, 3]}], r"1 image names are not images of 'inv2-ml'.*'cat\.jpg'"),
        (
            [{**ok[0], "topk": [1, 2, 1000]}] + ok[1:],
            r"line 1 \(image " + names[0] + r"\): class index 1000 is outside",
        ),
        ([{**ok[0], "topk": [1, 1, 2]}] + ok[1:], r"a class appears twice in a ranked list, e\.g\. rows 0"),
        ([{**ok[0], "topk": [1, 2]}] + ok[1:], r"same length; lengths \[2, 3\]"),
        ([{"image": names[0], "scores": [0.1] * 999}], r"'scores' must hold 1000 numbers"),
        ([{"name": names[0], "topk": [1]}], r"no 'image' column/field; found 'name', 'topk'"),
    ]
    for records, message in cases:
        with pytest.raises(PredictionsError, match=message):
            align(read_predictions(_jsonl(tmp_path, records)), bench)
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(PredictionsError, match="unknown predictions format '.txt'"):
        read_predictions(tmp_path / "p.txt")
    (tmp_path / "c.csv").write_text("image," + ",".join(classes.wnids()) + "\n")
    with pytest.raises(PredictionsError, match="score columns must be named 0..999"):
        read_predictions(tmp_path / "c.csv")


def test_pt_files_are_never_unpickled(tmp_path, bench, scores):
    # any non-tensor global (here fractions.Fraction) would need unpickling: refused by weights_only=True
    torch.save({"scores": torch.from_numpy(scores), "extra": Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(PredictionsError, match="evil.pt: cannot read as .pt"):
        read_predictions(tmp_path / "evil.pt")


# --- malformed files: each case builds its file from the benchmark's image names and good scores ---


def _text(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))


def _lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _topk_csv(names, cell=lambda i: "1 2 3"):
    return "image,topk\n" + "".join(f"{n},{cell(i)}\n" for i, n in enumerate(names))


def _scores_csv(names, scores, cell=None, extra=""):
    header = "image," + extra + ",".join(str(i) for i in range(np.shape(scores)[1] if len(scores) else 1000))
    rows = [
        f"{n}," + extra.replace("model", "r50") + ",".join(repr(float(x)) if cell is None else cell for x in s)
        for n, s in zip(names, scores, strict=True)
    ]
    return "\n".join([header, *rows]) + "\n"


def _npz_as(path, **arrays):
    with open(path, "wb") as f:  # np.savez to a file object keeps the name: .npz content under another suffix
        np.savez(f, **arrays)


def _with_bad_values(scores):
    bad = scores.copy()
    bad[3, 5], bad[3, 6], bad[9, 0] = np.nan, np.inf, -np.inf
    return bad


def _ranking(scores):
    return np.argsort(-scores, axis=1)


# (file name, writer(path, names, scores), message): the message follows "<path>: " in the error
MALFORMED = [
    ("empty.csv", lambda p, n, s: _text(p, ""), r"the file is empty"),
    ("empty.parquet", lambda p, n, s: _text(p, ""), r"the file is empty"),
    ("empty.pt", lambda p, n, s: _text(p, ""), r"the file is empty"),
    ("blank.csv", lambda p, n, s: _text(p, "\n \n"), r"no header line \(the file holds only blank lines\)"),
    ("blank.jsonl", lambda p, n, s: _text(p, "\n\n"), r"no predictions \(only blank lines\)"),
    ("header.csv", lambda p, n, s: _text(p, _scores_csv([], [])), r"no predictions \(only a header line\)"),
    ("header_topk.csv", lambda p, n, s: _text(p, "image,topk\n"), r"no predictions \(only a header line\)"),
    (
        "rows0.parquet",
        lambda p, n, s: pq.write_table(pa.table({"image": pa.array([], pa.string()), "topk": [[1]][:0]}), p),
        r"no predictions \(a table of 0 rows\)",
    ),
    ("magic.parquet", lambda p, n, s: _text(p, "PAR1 but no footer"), r"cannot read as \.parquet \(ArrowInvalid: .*"),
    (
        "extra_cell.csv",
        lambda p, n, s: _text(p, _topk_csv(n, lambda i: "1 2 3,x" if i == 1 else "1 2 3")),
        r"not a valid CSV table \(line 3: 3 fields, but the header has 2\)",
    ),
    (
        "short_row.csv",
        lambda p, n, s: _text(p, f"image,topk\n{n[0]}\n"),
        r"not a valid CSV table \(line 2: 1 field, but the header has 2\)",
    ),
    (
        "extra_column.csv",
        lambda p, n, s: _text(p, "image,topk,model\n" + "".join(f"{x},1 2,r50\n" for x in n)),
        r"unexpected columns/fields 'model'; predictions hold 'image' and 'topk' only",
    ),
    (
        "extra_scores_column.csv",
        lambda p, n, s: _text(p, _scores_csv(n, s, extra="model,")),
        r"unexpected columns 'model' beside 'image' and the score columns",
    ),
    (
        "extra_field.jsonl",
        lambda p, n, s: _lines(p, [{"image": x, "topk": [1], "model": "r50"} for x in n]),
        r"line 1: unexpected columns/fields 'model'",
    ),
    (
        "extra_column.parquet",
        lambda p, n, s: pq.write_table(pa.table({"image": n, "topk": [[1]] * len(n), "label": [0] * len(n)}), p),
        r"unexpected columns/fields 'label'",
    ),
    (
        "latin1.csv",
        lambda p, n, s: _text(p, _topk_csv([*n[:1], "caf\u00e9.jpg", *n[1:]]), "latin-1"),
        r"line 3: not UTF-8 text \(byte 0xe9 at column 4\)",
    ),
    (
        "latin1.jsonl",
        lambda p, n, s: _text(p, '{"image": "a", "topk": [1]}\n{"image": "caf\u00e9"}\n', "latin-1"),
        r"line 2: not UTF-8 text \(byte 0xe9 at column 15\)",
    ),
    (
        "several.npz",
        lambda p, n, s: np.savez(p, logits=s, labels=np.zeros(len(n))),
        r"holds several arrays 'labels', 'logits' and none named 'scores'",
    ),
    (
        "archive.npy",
        lambda p, n, s: _npz_as(p, logits=s, labels=np.zeros(len(n))),
        r"holds several arrays 'labels', 'logits' and none named 'scores'",
    ),
    ("nothing.npz", lambda p, n, s: np.savez(p), r"holds no arrays"),
    ("nothing.pt", lambda p, n, s: torch.save({}, p), r"holds no arrays"),
    (
        "float_topk.jsonl",
        lambda p, n, s: _lines(p, [{"image": x, "topk": [1.7, 2.0]} for x in n]),
        r"line 1 \(image [0-9a-f]+\.jpeg\): 1\.7 is a float \(class indices are integers\)",
    ),
    (
        "float_topk.parquet",
        lambda p, n, s: pq.write_table(pa.table({"image": n, "topk": [[1.7, 2.0]] * len(n)}), p),
        r"column 'topk' must hold lists of class indices \(integers\) or wnids \(strings\), found list<.*double>",
    ),
    (
        "float_topk.npy",
        lambda p, n, s: np.save(p, _ranking(s)[:, :5].astype(np.float32)),
        r"expected scores of shape \[N, 1000\], got \[40, 5\]; "
        r"ranked class lists \(fewer than 1000 columns\) must be integers, not float32",
    ),
    (
        "ranking.npy",
        lambda p, n, s: np.save(p, _ranking(s)),
        r"every row is a permutation of the class indices 0..999: a ranking, not scores",
    ),
    (
        "ranking.pt",
        lambda p, n, s: torch.save(torch.from_numpy(_ranking(s)), p),
        r"every row is a permutation .*: a ranking, not scores; give scores as floats",
    ),
    (
        "underscore.csv",
        lambda p, n, s: _text(p, _topk_csv(n, lambda i: "1_0 2")),
        r"image [0-9a-f]+\.jpeg: '1_0' is neither a class index \(digits 0-9\) nor a wnid",
    ),
    (
        "plus.csv",
        lambda p, n, s: _text(p, _topk_csv(n, lambda i: "+1 2")),
        r"image [0-9a-f]+\.jpeg: '\+1' is neither a class index",
    ),
    (
        "arabic.csv",
        lambda p, n, s: _text(p, _topk_csv(n, lambda i: "\u0661 2")),
        r"image [0-9a-f]+\.jpeg: '\u0661' is neither a class index",
    ),
    (
        "bool_scores.jsonl",
        lambda p, n, s: _lines(p, [{"image": x, "scores": [True] * 1000} for x in n]),
        r"line 1 \(image [0-9a-f]+\.jpeg\): 'scores' must be numbers, got True at class 0",
    ),
    (
        "bool_scores.parquet",
        lambda p, n, s: pq.write_table(pa.table({"image": n, "scores": [[True] * 1000] * 40}), p),
        r"column 'scores' must hold lists of 1000 numbers, found list<.*bool>",
    ),
    (
        "bool.npy",
        lambda p, n, s: np.save(p, s > 0.5),
        r"scores must be real numbers \(integer or floating\), got dtype bool",
    ),
    (
        "topk_number.jsonl",
        lambda p, n, s: _lines(p, [{"image": x, "topk": 5} for x in n]),
        r"line 1 \(image [0-9a-f]+\.jpeg\): 'topk' must be a list of class indices or wnids, got int: 5",
    ),
    (
        "topk_string.jsonl",
        lambda p, n, s: _lines(p, [{"image": x, "topk": "1 2"} for x in n]),
        r"line 1 \(image [0-9a-f]+\.jpeg\): 'topk' must be a list of class indices or wnids, got a string: '1 2'",
    ),
    (
        "topk_number.parquet",
        lambda p, n, s: pq.write_table(pa.table({"image": n, "topk": [5] * len(n)}), p),
        r"column 'topk' must hold lists .* found int64",
    ),
    (
        "scores_string.parquet",
        lambda p, n, s: pq.write_table(pa.table({"image": n, "scores": ["0.5"] * len(n)}), p),
        r"column 'scores' must hold lists of 1000 numbers, found string",
    ),
    (
        "image_number.parquet",
        lambda p, n, s: pq.write_table(pa.table({"image": range(40), "topk": [[1]] * 40}), p),
        r"column 'image' must hold image names \(strings\), found int64",
    ),
    (
        "image_null.jsonl",
        lambda p, n, s: _lines(p, [{"image": None, "topk": [1]}]),
        r"line 1: 'image' must be a non-empty image name, got None",
    ),
    (
        "image_empty.csv",
        lambda p, n, s: _text(p, _topk_csv([""] * 40)),
        r"'image' must be a non-empty image name; 40 are not \(\"data row 1: ''\"",
    ),
    ("empty_cells.csv", lambda p, n, s: _text(p, _scores_csv(n, s, cell="")), r"column '0' has 40 empty cells"),
    (
        "text_cells.csv",
        lambda p, n, s: _text(p, _scores_csv(n, s, cell="high")),
        r"column '0' must hold numbers; read as string, e.g. 'high'",
    ),
    (
        "null_score.parquet",
        lambda p, n, s: pq.write_table(pa.table({"image": n, "scores": [[0.1] * 999 + [None]] * 40}), p),
        r"40 scores are null, e\.g\. for images",
    ),
    (
        "topk_empty.jsonl",
        lambda p, n, s: _lines(p, [{"image": x, "topk": []} for x in n]),
        r"every 'topk' list is empty",
    ),
    ("999_columns.csv", lambda p, n, s: _text(p, _scores_csv(n, s[:, :999])), r"999 score columns; expected 1000"),
    (
        "scores_column.csv",
        lambda p, n, s: _text(p, "image,scores\na.jpeg,0.5\n"),
        r"in CSV, scores are 1000 columns named 0..999, not 'scores'",
    ),
    ("no_columns.parquet", lambda p, n, s: pq.write_table(pa.table({}), p), r"no 'image' column/field; found nothing"),
    ("sparse.pt", lambda p, n, s: torch.save(torch.from_numpy(s).to_sparse(), p), r"holds a sparse_coo tensor"),
    (
        "complex.pt",
        lambda p, n, s: torch.save(torch.from_numpy(s).to(torch.complex64), p),
        r"scores must be real numbers, got dtype torch.complex64",
    ),
    (
        "garbage.pt",
        lambda p, n, s: _text(p, "not a torch file"),
        r"cannot read as \.pt: torch\.load\(weights_only=True\) refuses it \(Unsupported operand \d+\)",
    ),
    (
        "nan.pt",
        lambda p, n, s: torch.save(torch.full((40, 1000), float("nan")).softmax(1), p),
        r"every one of the 40000 scores is NaN or infinite \(40000 NaN\): nothing to score",
    ),
    (
        "bad_values.npy",
        lambda p, n, s: np.save(p, _with_bad_values(s)),
        r"3 of the 40000 scores are NaN or infinite \(1 NaN, 1 \+inf, 1 -inf\), in 2 of the 40 rows, "
        r"e\.g\. at \(row, class\) \(3, 5\), \(3, 6\), \(9, 0\)",
    ),
]


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
@pytest.mark.parametrize(("name", "write", "message"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_files_raise_errors_naming_file_and_problem(tmp_path, bench, scores, name, write, message):
    path = tmp_path / name
    write(path, list(bench.image_ids), scores)
    with pytest.raises(PredictionsError, match=re.escape(str(path)) + ": " + message):
        align(read_predictions(path), bench)


def test_float64_scores_near_1e300_are_read_as_given(tmp_path, bench, scores):
    huge = scores.astype(np.float64) * 1e300  # finite in float64; inf after a float32 cast
    torch.save(torch.from_numpy(huge), tmp_path / "huge.pt")
    got = read_predictions(tmp_path / "huge.pt").scores
    assert got.dtype == np.float64 and np.isfinite(got).all()
    expected = evaluate(scores, bench)
    for result in (evaluate(got, bench), evaluate(torch.from_numpy(huge), bench)):
        for key in ("multilabel_top1", "multilabel_top5", "map_per_sample", "map_macro", "variable_topk"):
            assert result[key] == pytest.approx(expected[key]), key


def test_byte_order_marks_npz_under_npy_name_and_grad_tensors_are_read(tmp_path, bench, scores):
    names = list(bench.image_ids)
    topk = np.argsort(-scores, axis=1)[:, :3]
    (tmp_path / "bom.jsonl").write_bytes(
        b"\xef\xbb\xbf"
        + "".join(
            json.dumps({"image": n, "topk": t.tolist()}) + "\n" for n, t in zip(names, topk, strict=True)
        ).encode()
    )
    (tmp_path / "bom.csv").write_bytes(
        b"\xef\xbb\xbf" + _topk_csv(names, lambda i: " ".join(map(str, topk[i]))).encode()
    )
    for suffix in ("jsonl", "csv"):
        np.testing.assert_array_equal(align(read_predictions(tmp_path / f"bom.{suffix}"), bench).ranked, topk)
    _npz_as(tmp_path / "archive.npy", scores=scores, labels=np.zeros(N))
    np.testing.assert_array_equal(read_predictions(tmp_path / "archive.npy").scores, scores)
    torch.save(torch.nn.Parameter(torch.from_numpy(scores)), tmp_path / "param.pt")
    np.testing.assert_array_equal(read_predictions(tmp_path / "param.pt").scores, scores)
    (tmp_path / "digits.jsonl").write_text(json.dumps({"image": names[0], "topk": ["7", 8, classes.wnid_of(9)]}) + "\n")
    assert read_predictions(tmp_path / "digits.jsonl").ranked.tolist() == [[7, 8, 9]]
