"""Benchmark loaders and the published check numbers, against ../shared/benchmarks and timm's ReaL evaluator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data.real_labels import RealLabelsImagenet

from multilabel_imagenet.evaluation import BenchmarkFileError, evaluate, load_benchmark, load_benchmarks
from multilabel_imagenet.evaluation import benchmarks as bm

SHARED = Path(os.environ.get("MLIN_SHARED_BENCHMARKS", Path(__file__).parents[1].parent / "shared" / "benchmarks"))
needs_shared = pytest.mark.skipif(
    not (SHARED / "real" / "real.json").is_file(),
    reason=f"shared benchmark files not found at {SHARED} (set MLIN_SHARED_BENCHMARKS)",
)
VAL_LABELS = SHARED / "imagenet" / "imagenet_val_labels.json"
INV2_B33 = SHARED / "inv2_ml" / "imagenetv2-b-33.json"
INV2_REFINED = SHARED / "inv2_ml" / "imagenetv2_refined_labels.json"


def one_hot(labels: np.ndarray) -> np.ndarray:
    out = np.zeros((len(labels), 1000), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


@pytest.fixture(scope="module")
def real():
    return load_benchmark("real")  # timm's bundled copy, no file argument


def test_real_from_timm_matches_published_statistics(real):
    counts = real.targets.sum(axis=1)
    assert len(real) == 50_000
    assert real.image_ids[0] == "ILSVRC2012_val_00000001.JPEG"
    assert dict(zip(*np.unique(counts, return_counts=True), strict=True)) == {
        0: 3163, 1: 39394, 2: 5408, 3: 1319, 4: 411, 5: 161, 6: 88, 7: 41, 8: 13, 9: 2,
    }  # fmt: skip
    assert counts.sum() == 57_553


@needs_shared
def test_real_check_number_original_val_labels_score_90_02():
    bench = load_benchmark("real", SHARED / "real" / "real.json", VAL_LABELS)
    result = evaluate(one_hot(bench.original), bench)
    assert result["n_images"] == 46_837
    assert round(result["multilabel_top1"], 2) == 90.02
    assert result["multilabel_top1"] == pytest.approx(100 * 42_164 / 46_837)
    assert result["top1"] == 100.0 and result["n_images_original"] == 50_000


@needs_shared
def test_inv2_ml_check_number_original_v2_labels_score_89_12():
    bench = load_benchmarks(["inv2-ml"], {"inv2-ml": INV2_REFINED, "inv2": INV2_B33})["inv2-ml"]
    assert len(bench) == 10_000 and list(bench.image_ids) == sorted(bench.image_ids)
    assert dict(zip(*np.unique(bench.targets.sum(axis=1), return_counts=True), strict=True))[0] == 129
    result = evaluate(one_hot(bench.original), bench)
    assert result["n_images"] == 9_871
    assert round(result["multilabel_top1"], 2) == 89.12
    assert result["multilabel_top1"] == pytest.approx(100 * 8_797 / 9_871)


@needs_shared
def test_inv2_original_labels_agree_between_published_and_derived_files():
    from_b33 = load_benchmark("inv2", INV2_B33)
    derived = load_benchmark("inv2", SHARED / "inv2_ml" / "matched_frequency_hash_to_class.json")
    assert from_b33.image_ids == derived.image_ids and len(from_b33) == 10_000
    np.testing.assert_array_equal(from_b33.original, derived.original)


def test_real_top1_top5_equal_timm_real_labels_evaluator(real):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50_000, 1000)).astype(np.float32)
    # make the task non-trivial: push each image's first ReaL label up half of the time
    first = np.array([np.flatnonzero(t)[0] if t.any() else 0 for t in real.targets])
    boost = rng.random(50_000) < 0.5
    scores[np.arange(50_000)[boost], first[boost]] += 3.0
    timm_eval = RealLabelsImagenet(list(real.image_ids), topk=(1, 5))
    for start in range(0, 50_000, 10_000):
        timm_eval.add_result(torch.from_numpy(scores[start : start + 10_000]))
    result = evaluate(scores, real)
    assert result["multilabel_top1"] == pytest.approx(timm_eval.get_accuracy(1), abs=1e-9)
    assert result["multilabel_top5"] == pytest.approx(timm_eval.get_accuracy(5), abs=1e-9)


@needs_shared
def test_imagenet_val_reads_json_and_tfds_wnid_text_identically():
    a = load_benchmark("imagenet-val", VAL_LABELS)
    b = load_benchmark("imagenet-val", SHARED / "imagenet" / "imagenet_val_wnids.txt")
    np.testing.assert_array_equal(a.original, b.original)
    assert a.original[:10].tolist() == [65, 970, 230, 809, 516, 57, 334, 415, 674, 332]
    result = evaluate(one_hot(a.original), a)
    assert result == {"n_images": 50_000, "top1": 100.0, "top5": 100.0}


@needs_shared
def test_madry_label_sets_from_objects():
    bench = load_benchmark("madry", SHARED / "madry_imagenet_multilabel" / "annotations_classify_task.json")
    assert len(bench) == 6_761
    data = json.loads((SHARED / "madry_imagenet_multilabel" / "annotations_classify_task.json").read_text())
    for j, name in enumerate(bench.image_ids):  # independent loop: the most-selected label(s) of each object
        expected = set()
        for obj in data[name]["objects"]:
            best = max(v[0] for v in obj.values())
            expected |= {int(c) for c, v in obj.items() if v[0] == best}
        assert set(np.flatnonzero(bench.targets[j]).tolist()) == expected, name
    i = bench.image_ids.index("ILSVRC2012_val_00047683.JPEG")
    # one object whose most-selected label is 322 (6 of 11 selections); main label 322; ImageNet label 325
    assert np.flatnonzero(bench.targets[i]).tolist() == [322]
    assert bench.main[i] == 322 and bench.original[i] == 325
    assert bench.targets.sum(axis=1).max() >= 2
    val = load_benchmark("imagenet-val", VAL_LABELS)
    np.testing.assert_array_equal(bench.original, val.original[bench.val_indices()])  # same class order
    result = evaluate(one_hot(bench.main), bench)
    assert result["main_top1"] == 100.0
    assert 0 < result["multilabel_top1"] <= 100.0


@needs_shared
def test_imagenet_s_class_table_matches_published_mapping():
    mapping = json.loads((SHARED / "imagenet_s" / "imagenet_s919_to_in1k.json").read_text())
    assert bm.imagenet_s_to_in1k()[1:].tolist() == mapping["in1k_index"]
    assert {int(v["from_in1k"]): int(v["into_in1k"]) for v in mapping["merged_into"].values()} == (
        bm.MERGED_INTO_IMAGENET_S
    )


def test_label_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "refined.json"
    bad.write_text(json.dumps({"abc.jpeg": ["1001"]}))
    with pytest.raises(BenchmarkFileError, match=r"refined\.json.*abc\.jpeg.*1001"):
        load_benchmark("inv2-ml", bad)
    wrong = tmp_path / "real.json"
    wrong.write_text("[[1], [2]]")
    with pytest.raises(BenchmarkFileError, match="50000 lists"):
        load_benchmark("real", wrong)
    ilsvrc_ids = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    ilsvrc_ids.write_text("490\n361\n")
    with pytest.raises(BenchmarkFileError, match=r"ILSVRC2012_validation_ground_truth\.txt.*meta\.mat"):
        load_benchmark("imagenet-val", ilsvrc_ids)
    short = tmp_path / "val.json"
    short.write_text("[1, 2, 3]")
    with pytest.raises(BenchmarkFileError, match=r"val\.json: no label for 49997 of the 50000 val images"):
        load_benchmark("imagenet-val", short)
    with pytest.raises(BenchmarkFileError, match="needs its label file"):
        load_benchmark("inv2-ml")
    with pytest.raises(KeyError, match="unknown benchmark 'coco'"):
        load_benchmark("coco")
