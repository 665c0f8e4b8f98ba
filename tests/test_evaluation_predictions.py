"""Predictions files in every supported format, alignment by image name, and clear errors on bad input."""

from __future__ import annotations

import json
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
        (lambda s, b: np.where(np.arange(1000) == 7, np.nan, s), r"40 scores are NaN or infinite.*\(0, 7\)"),
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
        ([{**ok[0], "topk": [1, 2, 1000]}] + ok[1:], r"image " + names[0] + r": class index 1000 is outside"),
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
